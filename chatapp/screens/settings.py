"""Per-conversation settings: system prompt, sampling, thinking (on/off and a budget) and the
tool choice (auto, none, required, or one named tool).

Only what the user types is stored: an empty field means "the model's default" (its
models.toml / generation_config.json recommendation, else the engine's), so a conversation
follows the model it talks to instead of freezing a copy of today's defaults. The placeholder
of an empty field shows the value that applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from textual import on
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, TextArea

from engine import SamplingParams

# (SamplingParams field, label, type); the label is what an error message names
FIELDS = (
    ("temperature", "temperature", float),
    ("top_p", "top p", float),
    ("top_k", "top k", int),
    ("min_p", "min p", float),
    ("repetition_penalty", "repetition penalty", float),
    ("max_tokens", "max tokens", int),
)
_LABELS = {name: label for name, label, _kind in FIELDS}
# The thinking choice: Select value -> the stored `thinking` (None: the template's default).
THINKING = {"default": None, "on": True, "off": False}
NOT_AVAILABLE = "not available for this model (its chat template has no thinking switch)"
# The tool choice's Select: "auto", "none", "required", or TOOL_PREFIX + a tool's name.
TOOL_CHOICE_OPTIONS = (("auto (the model decides)", "auto"), ("none (no tools offered)", "none"),
                       ("required (a tool call first)", "required"))
TOOL_PREFIX = "tool:"


class SettingsScreen(ModalScreen[tuple[str | None, dict, dict, str | dict] | None]):
    """Answers (system_prompt or None, the sampling values the user set, the thinking choices
    as conversation.conversation_reasoning gives them, the tool choice as
    conversation.conversation_tool_choice gives it), or None when cancelled."""

    BINDINGS = [("escape", "dismiss(None)", "Cancel"), ("ctrl+s", "save", "Save")]

    def __init__(self, system_prompt: str | None, sampling: Mapping, model_defaults: Mapping | None = None, *,
                 reasoning: Mapping | None = None, support: tuple[bool, bool] = (False, False),
                 tool_choice: str | dict = "auto", tool_names: Sequence[str] = (), no_tools: str | None = None) -> None:
        super().__init__(classes="dialog-screen")
        self.system_prompt = system_prompt
        self.sampling = {k: v for k, v in sampling.items() if v is not None}
        self.model_defaults = dict(model_defaults or {})
        self.reasoning = dict(reasoning or {})
        self.support = support  # (on/off switch, budget) on this model: conversation.thinking_support
        self.tool_choice = tool_choice
        self.tool_names = list(tool_names)
        self.no_tools = no_tools  # why the tool choice does not apply: conversation.tool_choice_support

    def _tool_options(self) -> tuple[list[tuple[str, str]], str]:
        """The tool choice's options (one per offered tool, and the stored one even if it is not
        offered now, so saving keeps it) and the chosen option's value."""
        options = list(TOOL_CHOICE_OPTIONS)
        names = list(self.tool_names)
        if isinstance(self.tool_choice, dict) and self.tool_choice["function"] not in names:
            names.append(self.tool_choice["function"])
        options += [(f"call {name}" + ("" if name in self.tool_names else " (not offered now)"), TOOL_PREFIX + name)
                    for name in names]
        chosen = TOOL_PREFIX + self.tool_choice["function"] if isinstance(self.tool_choice, dict) else self.tool_choice
        return options, chosen

    def compose(self) -> ComposeResult:
        effective = SamplingParams.merged(self.model_defaults)
        with Vertical(classes="dialog wide", id="settings"):
            yield Label("System prompt and sampling; an empty field means the model's default (shown greyed)")
            yield TextArea(self.system_prompt or "", id="system")
            with Grid(id="sampling-fields"):
                for name, label, _kind in FIELDS:
                    with Horizontal(classes="field"):
                        yield Label(label, classes="field-label")
                        value = self.sampling.get(name)
                        yield Input("" if value is None else str(value), id=name,
                                    placeholder=f"{getattr(effective, name)} (default)")
            with Horizontal(id="thinking-fields"):
                switch, budget = self.support
                chosen = {v: k for k, v in THINKING.items()}[self.reasoning.get("thinking")]
                with Horizontal(classes="field"):
                    yield Label("thinking", classes="field-label")
                    yield Select([("model's default", "default"), ("on", "on"), ("off", "off")], value=chosen,
                                 allow_blank=False, id="thinking", disabled=not switch)
                with Horizontal(classes="field"):
                    yield Label("thinking budget", classes="field-label")
                    value = self.reasoning.get("budget")
                    yield Input("" if value is None else str(value), id="reasoning_budget",
                                placeholder="no limit (tokens)", disabled=not budget)
            if not switch:
                yield Label(f"Thinking on/off: {NOT_AVAILABLE}", id="thinking-note", classes="note")
            with Horizontal(id="tool-choice-fields", classes="field"):
                yield Label("tool choice", classes="field-label")
                options, chosen = self._tool_options()
                yield Select(options, value=chosen, allow_blank=False, id="tool_choice", disabled=self.no_tools is not None)
            if self.no_tools is not None:
                yield Label(f"Tool choice: {self.no_tools}", id="tool-choice-note", classes="note", markup=False)
            yield Label("", id="error", classes="error", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def action_save(self) -> None:
        error = self.query_one("#error", Label)
        chosen = {k: v for k, v in self.sampling.items() if k not in _LABELS}  # keys this dialog does not show
        for name, label, kind in FIELDS:
            text = self.query_one(f"#{name}", Input).value.strip()
            if not text:
                continue
            try:
                chosen[name] = kind(text)
            except ValueError:
                what = "a whole number" if kind is int else "a number"
                error.update(f"Not saved: {label} must be {what} (empty: the model's default), got {text!r}")
                return
        try:
            SamplingParams.merged(self.model_defaults, chosen)  # validates the whole set
        except ValueError as e:
            message = str(e)
            for name, label in _LABELS.items():  # "top_p must be ..." -> "top p must be ..."
                if message.startswith(name + " "):
                    message = label + message[len(name):]
            error.update(f"Not saved: {message}")
            return
        reasoning = dict(self.reasoning)  # kept as stored where this model offers no control
        if self.support[0]:
            reasoning.pop("thinking", None)
            thinking = THINKING[self.query_one("#thinking", Select).value]
            if thinking is not None:
                reasoning["thinking"] = thinking
        if self.support[1]:
            reasoning.pop("budget", None)
            text = self.query_one("#reasoning_budget", Input).value.strip()
            if text:
                if not text.isdigit():
                    error.update(f"Not saved: thinking budget must be a whole number of tokens >= 0 "
                                 f"(empty: no limit), got {text!r}")
                    return
                reasoning["budget"] = int(text)
        system = self.query_one("#system", TextArea).text.strip() or None
        value = str(self.query_one("#tool_choice", Select).value)
        tool_choice = {"function": value.removeprefix(TOOL_PREFIX)} if value.startswith(TOOL_PREFIX) else value
        self.dismiss((system, chosen, reasoning, tool_choice))

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)
