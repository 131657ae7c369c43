"""What the app offers beyond its key bindings, as data: the command palette's entries (title,
help, the `action_` method and its arguments) and the rows the help screen adds to the bindings."""

PALETTE = (
    ("New conversation", "Start a new conversation (ctrl+n)", "new_conversation", ()),
    ("Stop generation", "Stop the reply being generated (Esc)", "stop", ()),
    ("Regenerate reply", "Generate the last reply again (ctrl+r)", "regenerate", ()),
    ("Edit message and resend", "Edit a user message and resend from there (F3)", "edit_message", ()),
    ("Inspect reply", "Token probabilities and attention of the focused reply (F4)", "inspect", ()),
    ("Choose model", "Pick a model from models.toml (ctrl+o)", "pick_model", ()),
    ("Conversation settings", "System prompt, sampling, thinking and tool choice (ctrl+s)", "settings", ()),
    ("Tool choice: auto", "The model decides whether to call a tool (this conversation)", "set_tool_choice", ("auto",)),
    ("Tool choice: none", "Offer no tools to the model (this conversation)", "set_tool_choice", ("none",)),
    ("Tool choice: required", "Each turn starts with a tool call (this conversation; one named tool: ctrl+s)",
     "set_tool_choice", ("required",)),
    ("Toggle thinking", "Turn the model's thinking on or off for this conversation", "toggle_thinking", ()),
    ("Rename conversation", "Rename the current conversation (F2)", "rename", ()),
    ("Delete conversation", "Delete the current conversation (F8)", "delete_conversation", ()),
    ("Search conversations", "Search titles and messages (F6)", "search", ()),
    ("Toggle sidebar", "Show or hide the conversation list (ctrl+b)", "toggle_sidebar", ()),
    ("Export as Markdown", "Write the conversation to a .md file (asks where)", "export", ("markdown",)),
    ("Export as JSON", "Write the conversation to a .json file (asks where)", "export", ("json",)),
    ("Keys", "Show every key binding (F1)", "help", ()),
)

HELP_ROWS = (
    ("ctrl+p", "Command palette (every action, themes)"),
    ("enter", "Send the message"),
    ("ctrl+j", "New line in the message (shift+enter too, if the terminal sends it)"),
    ("enter / down", "In the search field: move into the results"),
)
