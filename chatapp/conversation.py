"""What the chat screen does to a conversation, without widgets: each operation works on the Store
and returns plain data, so it is tested on a real SQLite file without a Pilot.

The screen (chatapp/screens/chat.py) decides when to call these and shows what they return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .records import Alternatives, Message
from .store import Store

if TYPE_CHECKING:
    from engine import SamplingParams

DEFAULT_LABEL = "the default model"

# Conversations used to store this copy of the defaults; it means "nothing chosen", so that the
# model's recommended sampling applies to them too.
LEGACY_DEFAULT_COPY = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 512}


def model_label(name: str | None) -> str:
    """What a requested model is called: the name or path asked for, else the registry's default."""
    if name:
        return name
    from engine import RegistryError, load_registry

    try:
        return load_registry().default or DEFAULT_LABEL
    except RegistryError:
        return DEFAULT_LABEL


# ---- opening ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """A conversation as the screen shows it."""

    messages: list[Message]
    alternatives: Alternatives  # of the last reply: which one is shown, of how many
    last_reply_id: int | None  # the message that carries the "2/3" label (None: no reply yet)


def open_conversation(store: Store, conversation_id: int) -> Opened:
    messages = store.messages(conversation_id)
    last_user = max((m.seq for m in messages if m.role == "user"), default=None)
    reply = next((m for m in messages if last_user is not None and m.seq == last_user + 1), None)
    return Opened(messages, store.reply_alternatives(conversation_id), reply.id if reply is not None else None)


def model_note(store: Store, conversation_id: int, using: str) -> str | None:
    """What to say when a conversation last answered by another model is opened (None: nothing)."""
    used = store.get_conversation(conversation_id).model
    if used and used != using:
        return f"This conversation used {used}; replies now come from {using} (ctrl+o changes the model)."
    return None


def record_model(store: Store, conversation_id: int, label: str) -> None:
    """The conversation reopens with the model that answered it last (or was switched to in it)."""
    store.update_conversation(conversation_id, model=label)


# ---- settings and sampling ------------------------------------------------------------------------


def conversation_settings(store: Store, conversation_id: int | None) -> tuple[str | None, dict]:
    """The system prompt and the sampling values the user chose for this conversation; the
    model's defaults (and SamplingParams') fill in the rest when it generates."""
    if conversation_id is None:
        return None, {}
    conv = store.get_conversation(conversation_id)
    chosen = dict(conv.settings or {})
    chosen.pop(REASONING_KEY, None)  # not sampling: conversation_reasoning reads it
    chosen.pop(TOOL_CHOICE_KEY, None)  # not sampling: conversation_tool_choice reads it
    return conv.system_prompt, {} if chosen == LEGACY_DEFAULT_COPY else chosen


# The settings JSON's key for thinking on/off and the budget: {"thinking": bool, "budget": int};
# an absent field (or key) means the model's default: its template decides, no budget.
REASONING_KEY = "reasoning"


def conversation_reasoning(store: Store, conversation_id: int | None) -> dict:
    """What the user chose about thinking here: {"thinking": True/False, "budget": n}, only the
    keys chosen (stored values of the wrong type are dropped, as unchosen)."""
    if conversation_id is None:
        return {}
    stored = (store.get_conversation(conversation_id).settings or {}).get(REASONING_KEY)
    if not isinstance(stored, dict):
        return {}
    out = {}
    if isinstance(stored.get("thinking"), bool):
        out["thinking"] = stored["thinking"]
    if isinstance(stored.get("budget"), int) and not isinstance(stored["budget"], bool) and stored["budget"] >= 0:
        out["budget"] = stored["budget"]
    return out


def reasoning_request(chosen: dict):
    """The engine's Reasoning for what was chosen (None: nothing chosen)."""
    if not chosen:
        return None
    from engine import Reasoning

    return Reasoning(thinking=chosen.get("thinking"), budget=chosen.get("budget"))


def thinking_support(model) -> tuple[bool, bool]:
    """(thinking can be turned on/off, a budget can close the block) on this model: a local one
    by its template's switch and its think markers; a remote one is asked, its server decides."""
    if model is None:
        return False, False
    if getattr(model, "is_remote", False):
        return True, True
    try:
        return model.thinking_switch is not None, model.think_markers is not None
    except AttributeError:  # a model without a template
        return False, False


def toggle_thinking(store: Store, conversation_id: int | None, *, model: str) -> tuple[int, bool]:
    """Flip thinking for this conversation (unchosen counts as on, the templates' default).
    Returns (the conversation's id, thinking now)."""
    if conversation_id is None:
        conversation_id = store.create_conversation(model=model).id
    chosen = conversation_reasoning(store, conversation_id)
    chosen["thinking"] = not chosen.get("thinking", True)
    _store_reasoning(store, conversation_id, chosen)
    return conversation_id, chosen["thinking"]


def _store_reasoning(store: Store, conversation_id: int, chosen: dict) -> None:
    settings = dict(store.get_conversation(conversation_id).settings or {})
    settings.pop(REASONING_KEY, None)
    if chosen:
        settings[REASONING_KEY] = chosen
    store.update_conversation(conversation_id, settings=settings)


# The settings JSON's key for the tool choice: "none", "required", or a tool's name as
# {"function": NAME}; absent means "auto" (the model decides whether to call a tool).
TOOL_CHOICE_KEY = "tool_choice"
TOOL_CHOICES = ("auto", "none", "required")


def conversation_tool_choice(store: Store, conversation_id: int | None) -> str | dict:
    """What the user chose about tool calls here: "auto" (also for anything stored that is not a
    valid choice), "none", "required", or {"function": NAME} for one named tool."""
    if conversation_id is None:
        return "auto"
    stored = (store.get_conversation(conversation_id).settings or {}).get(TOOL_CHOICE_KEY)
    if stored in TOOL_CHOICES:
        return stored
    if isinstance(stored, dict) and isinstance(stored.get("function"), str) and stored["function"]:
        return {"function": stored["function"]}
    return "auto"


def describe_tool_choice(choice: str | dict) -> str:
    return f"call {choice['function']}" if isinstance(choice, dict) else choice


def set_tool_choice(store: Store, conversation_id: int | None, choice: str | dict, *, model: str) -> int:
    """Store the tool choice (settings chosen before the first message start the conversation).
    Returns the conversation's id."""
    if conversation_id is None:
        conversation_id = store.create_conversation(model=model).id
    settings = dict(store.get_conversation(conversation_id).settings or {})
    settings.pop(TOOL_CHOICE_KEY, None)
    if choice != "auto":
        settings[TOOL_CHOICE_KEY] = dict(choice) if isinstance(choice, dict) else choice
    store.update_conversation(conversation_id, settings=settings)
    return conversation_id


def tool_choice_support(model, tool_names) -> str | None:
    """Why the tool choice does not apply with this model and these tools (None: it does)."""
    if model is None:
        return "no model is loaded yet"
    if not model.supports_tools:
        return "not available for this model (its chat template has no tool format, so no tools are offered)"
    if not tool_names:
        return "no tools are offered (no tool is registered)"
    return None


def tool_choice_request(choice: str | dict, schemas: list[dict] | None) -> tuple[str | dict | None, str | None]:
    """(the engine's tool_choice for this reply, a notice or None): None when no tools are
    offered; a named tool that is no longer offered falls back to "auto", and the notice says so."""
    if not schemas:
        return None, None
    if isinstance(choice, dict):
        name = choice["function"]
        if not any(s.get("function", {}).get("name") == name for s in schemas):
            return "auto", (f"The tool choice names {name}, which is not offered now: the model decides "
                            "(auto). ctrl+s changes it.")
        return {"type": "function", "function": {"name": name}}, None
    return choice, None


def sampling_params(model, chosen: dict) -> SamplingParams:
    """SamplingParams() < the model's recommended defaults < what the user chose (ValueError on a
    stored value SamplingParams refuses)."""
    from engine import SamplingParams

    return SamplingParams.merged(getattr(model, "sampling_defaults", None), chosen)


def save_settings(store: Store, conversation_id: int | None, system_prompt: str | None, sampling: dict,
                  *, model: str, reasoning: dict | None = None, tool_choice: str | dict | None = None) -> int:
    """Store the settings; settings saved before the first message start the conversation. Returns
    the conversation's id. `reasoning`: as conversation_reasoning gives it, `tool_choice` as
    conversation_tool_choice (None: left as stored)."""
    if conversation_id is None:
        conversation_id = store.create_conversation(model=model).id
    if reasoning is None:
        reasoning = conversation_reasoning(store, conversation_id)
    if tool_choice is None:
        tool_choice = conversation_tool_choice(store, conversation_id)
    settings = {k: v for k, v in sampling.items() if k not in (REASONING_KEY, TOOL_CHOICE_KEY)}
    if reasoning:
        settings[REASONING_KEY] = dict(reasoning)
    store.update_conversation(conversation_id, system_prompt=system_prompt, settings=settings)
    return set_tool_choice(store, conversation_id, tool_choice, model=model)


# ---- turns ------------------------------------------------------------------------------------------


def add_user_message(store: Store, conversation_id: int | None, text: str, *, model: str) -> Message:
    """Store the user's message (before generation starts: a crash from then on never loses it),
    starting a conversation when none is open."""
    if conversation_id is None:
        conversation_id = store.create_conversation(model=model).id
    return store.add_message(conversation_id, "user", text)


def regenerate(store: Store, conversation_id: int) -> bool:
    """Set the last reply aside (kept: alt+left shows it again) for a new one; False when the
    conversation has no user message to answer."""
    if not any(m.role == "user" for m in store.messages(conversation_id)):
        return False
    store.set_reply_aside(conversation_id)
    return True


def edit_target(store: Store, conversation_id: int, focused: Message | None) -> Message | None:
    """The user message an edit starts from: the focused one, else the last (None: there is none)."""
    if focused is not None and focused.role == "user":
        return focused
    users = [m for m in store.messages(conversation_id) if m.role == "user"]
    return users[-1] if users else None


def edit_and_resend(store: Store, conversation_id: int, target: Message, text: str) -> Message | None:
    """Replace `target` and everything after it with the edited text; None (nothing changed) when
    the edit is blank."""
    if not text.strip():
        return None
    return store.add_message(conversation_id, "user", text.strip(), replace_from=target.seq)


Browse = Literal["no alternatives", "moved", "at the end"]


def browse_reply(store: Store, conversation_id: int, step: int) -> Browse:
    """Show the reply `step` alternatives away; the shown one is what the model sees next."""
    before = store.reply_alternatives(conversation_id)
    if before.count == 1:
        return "no alternatives"
    return "moved" if store.show_alternative(conversation_id, step) != before else "at the end"


# ---- deleting ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deleted:
    was_open: bool  # the deleted conversation was the one shown
    open_next: int | None  # when it was: the conversation to show instead (None: a new one)


def delete_conversation(store: Store, target: int, open_id: int | None) -> Deleted:
    store.delete_conversation(target)
    if target != open_id:
        return Deleted(False, open_id)
    recent = store.most_recent()
    return Deleted(True, recent.id if recent else None)
