"""The terminal chat app (the Textual TUI arrives with issue 3; `chatapp ask` streams one answer)."""
