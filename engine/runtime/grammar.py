"""Constrained decoding: a grammar that masks the logits before every draw, on both backends.

The grammar engine is xgrammar (tools/grammar_mask_cost.py measured it beside llguidance on the
default model's 49,152-token vocabulary and a three-tool call schema: about 2 us per token
against 12 us, median). Its vocabulary is built from our own tokenizer (token id -> bytes);
special tokens get no bytes, so a grammar never spells them, and the end tokens are its stop
tokens.

A `Constraint` is one request's state. Per step the sampler asks `bitmask()` (None: no
constraint at this step; else an int32 (ceil(vocab / 32),) CPU tensor, bit i set when token i
is allowed), applies it with `apply_bitmask` on the logits' device, draws, and reports the
token with `advance(id)`. The phases, in order:

- forced ids: tokens that must come next (a tool call's opening marker under "required", its
  closing marker after the JSON, the end token);
- the grammar: xgrammar's matcher over a JSON schema;
- free text (tool_choice "auto" before a call starts): no mask, while the reply is watched for
  the template's call marker, which starts the grammar.

`chat_constraint` turns the OpenAI request fields (`tools`, `tool_choice`, `response_format`)
into the tools a template shows and the constraint.
"""

from __future__ import annotations

import json
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import RequestError

if TYPE_CHECKING:  # torch and xgrammar are imported lazily: `import engine` must not pay for them
    import torch

    from ..text.template import ChatTemplate
    from ..text.tokenizer import Tokenizer

TOOL_CHOICES = ("none", "auto", "required")


@dataclass(frozen=True)
class ToolCallFormat:
    """How a template's model writes one call: `open` + JSON + `close`, the JSON's arguments key,
    and whether a reply that starts with "{" is a call (Llama 3 writes bare JSON calls)."""

    open: str
    close: str
    arguments_key: str
    bare_json: bool = False


HERMES = ToolCallFormat("<tool_call>\n", "\n</tool_call>", "arguments")
LLAMA3 = ToolCallFormat("<|python_tag|>", "", "parameters", bare_json=True)


def tool_call_format(template: ChatTemplate) -> ToolCallFormat:
    """The call format the template asks for (engine/text/toolcalls.py parses both): Llama 3's
    JSON when the template is a Llama 3 one, else Hermes/ChatML `<tool_call>` tags (also the
    built-in fallback template's)."""
    source = template.source
    if "<tool_call>" not in source and ("<|python_tag|>" in source or "<|eom_id|>" in source
                                        or "<|start_header_id|>" in source):
        return LLAMA3
    return HERMES


# -- the grammar engine's view of a tokenizer, built once per tokenizer ---------------------------

_compilers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_compilers_by_id: dict[int, Any] = {}  # tokenizers that take no weak reference


def grammar_compiler(tokenizer: Tokenizer):
    """xgrammar's compiler for `tokenizer`'s vocabulary (cached: building it reads every token)."""
    try:
        cached = _compilers.get(tokenizer)
    except TypeError:
        cached = _compilers_by_id.get(id(tokenizer))
    if cached is not None:
        return cached
    import xgrammar as xgr

    n = tokenizer.vocab_size
    vocab = [b"" if tokenizer.is_special(i) else tokenizer.token_bytes(i) for i in range(n)]
    info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=n, stop_token_ids=sorted(tokenizer.eos_ids))
    compiler = xgr.GrammarCompiler(info, max_threads=1)
    try:
        _compilers[tokenizer] = compiler
    except TypeError:
        _compilers_by_id[id(tokenizer)] = compiler
    return compiler


def compile_schema(tokenizer: Tokenizer, schema: Mapping[str, Any] | None):
    """A compiled grammar for one JSON value matching `schema` (any JSON object when None),
    written as `json.dumps` writes it (", " and ": "), which small models follow best."""
    compiler = grammar_compiler(tokenizer)
    try:
        if schema is None:
            return compiler.compile_builtin_json_grammar()
        return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
    except Exception as e:  # xgrammar raises RuntimeError/InvalidJSONError with its reason
        raise RequestError(f"the JSON schema cannot be used as a grammar ({e}); simplify it") from None


# -- the per-request state -----------------------------------------------------------------------


class Constraint:
    """One request's constrained decoding (see the module docstring for the phases)."""

    def __init__(self, tokenizer: Tokenizer, grammar, *, forced: Sequence[int] = (), close: Sequence[int] = (),
                 end: str = "grammar", trigger: str | None = None, bare_json: bool = False) -> None:
        """`grammar`: a compiled xgrammar grammar. `forced`: ids before it. `close`: ids after it
        completes. `end`: "grammar" (the grammar's own end: its stop tokens), "eos" (force an end
        token after `close`) or "free" (back to free text). `trigger`: free text until this marker
        (tool_choice "auto"); `bare_json`: a reply starting with "{" starts the grammar too."""
        import xgrammar as xgr

        self.tokenizer, self.grammar = tokenizer, grammar
        self.close, self.end = list(close), end
        self.trigger = trigger.encode() if trigger else None
        self.bare_json = bare_json
        self.forced: deque[int] = deque()
        self.matcher = None
        self.tail = b""  # the free text since the last call (auto mode), to find the marker
        self.calls = 0  # calls (grammars) completed
        self._buffer = xgr.allocate_token_bitmask(1, tokenizer.vocab_size)  # (1, words) int32, CPU
        if trigger or bare_json:
            self.phase = "free"
        else:
            self._open(forced)

    # -- what the sampler asks -----------------------------------------------------------------

    def bitmask(self) -> torch.Tensor | None:
        """The allowed tokens for the next step: (words,) int32 on the CPU, or None for any."""
        if self.phase in ("open", "close"):
            return self._only([self.forced[0]])
        if self.phase == "grammar":
            self.matcher.fill_next_token_bitmask(self._buffer)
            return self._buffer[0]
        if self.phase == "eos":
            return self._only(sorted(self.tokenizer.eos_ids))
        return None

    def advance(self, token: int) -> None:
        """Record the token drawn (under this step's mask)."""
        if self.phase in ("open", "close"):
            self.forced.popleft()
            if not self.forced:
                self._grammar(b"") if self.phase == "open" else self._after_close()
        elif self.phase == "grammar":
            if not self.matcher.accept_token(token):
                raise RuntimeError(f"token {token} broke the grammar it was masked by")
            if self.end != "grammar" and self.matcher.is_completed():
                self.calls += 1
                self.matcher = None
                self.phase, self.forced = "close", deque(self.close)
                if not self.forced:
                    self._after_close()
        elif self.phase == "free":
            self._watch(token)

    # -- phases ----------------------------------------------------------------------------------

    def _open(self, forced: Sequence[int]) -> None:
        self.forced = deque(forced)
        if self.forced:
            self.phase = "open"
        else:
            self._grammar(b"")

    def _grammar(self, rest: bytes) -> None:
        import xgrammar as xgr

        self.phase, self.matcher = "grammar", xgr.GrammarMatcher(self.grammar)
        rest = rest.lstrip()
        if rest and not self.matcher.accept_string(rest.decode("utf-8", "replace")):
            # A token that ran past the marker into text the grammar refuses: leave it unconstrained.
            self.phase, self.matcher, self.tail = "free", None, b""

    def _after_close(self) -> None:
        self.phase, self.tail = ("eos" if self.end == "eos" else "free"), b""

    def _watch(self, token: int) -> None:
        self.tail += self.tokenizer.token_bytes(token)
        if self.bare_json and not self.calls and self.tail.lstrip()[:1] == b"{":
            self._grammar(self.tail)
            return
        marker = self.trigger.strip() if self.trigger else None
        if marker and marker in self.tail:
            rest = self.tail[self.tail.index(marker) + len(marker):]
            self.tail = b""
            # Hermes writes a newline after <tool_call>: force it unless the marker's token had it.
            after = self.trigger[len(marker):]
            if after and not rest.startswith(after):
                self._open(self.tokenizer.encode(after.decode(), add_special=False))
            else:
                self._grammar(rest)
            return
        self.tail = self.tail[-64:]

    def _only(self, ids: Sequence[int]) -> torch.Tensor:
        buffer = self._buffer[0]
        buffer.zero_()
        for i in ids:
            buffer[i // 32] |= (1 << (i % 32)) if i % 32 != 31 else -(1 << 31)
        return buffer


_SHIFTS: dict[Any, Any] = {}


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """`logits` (vocab,) with every token whose bit is clear in `bitmask` ((words,) int32, on the
    CPU) set to -inf, on the logits' device: one small copy of the mask per token."""
    import torch

    device = logits.device
    shifts = _SHIFTS.get(device)
    if shifts is None:
        shifts = _SHIFTS[device] = torch.arange(32, dtype=torch.int32, device=device)
    bits = bitmask.to(device, non_blocking=True)
    allowed = ((bits.unsqueeze(-1) >> shifts) & 1).reshape(-1).bool()  # (words * 32,)
    vocab = logits.shape[-1]
    if allowed.numel() < vocab:  # ids past the tokenizer (padded embeddings) are never allowed
        allowed = torch.cat((allowed, allowed.new_zeros(vocab - allowed.numel())))
    return logits.masked_fill(~allowed[:vocab], float("-inf"))


# -- from an OpenAI request to a constraint --------------------------------------------------------


def _function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    return tool.get("function", tool) if isinstance(tool, Mapping) else {}


def tool_names(tools: Sequence[Mapping[str, Any]] | None) -> list[str]:
    return [str(_function(t).get("name")) for t in tools or ()]


def _chosen_name(tool_choice: Any) -> str | None:
    """The function a named tool_choice picks, or None for "none"/"auto"/"required"."""
    if tool_choice is None or tool_choice in TOOL_CHOICES:
        return None
    if isinstance(tool_choice, Mapping):
        fn = tool_choice.get("function")
        if tool_choice.get("type") == "function" and isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
            return fn["name"]
    raise RequestError(f'tool_choice must be "none", "auto", "required" or '
                       f'{{"type": "function", "function": {{"name": ...}}}}, got {tool_choice!r}')


def call_schema(tools: Sequence[Mapping[str, Any]], arguments_key: str = "arguments") -> dict:
    """The JSON schema of one call of any of `tools`: {"name": <a tool's name>, <arguments_key>:
    <that tool's parameters>}."""
    options = []
    for tool in tools:
        fn = _function(tool)
        params = fn.get("parameters") or {"type": "object"}
        options.append({"type": "object", "properties": {"name": {"const": fn.get("name")}, arguments_key: params},
                        "required": ["name", arguments_key]})
    return options[0] if len(options) == 1 else {"anyOf": options}


def response_schema(response_format: Any) -> tuple[bool, dict | None]:
    """(constrain?, schema) of an OpenAI `response_format`: {"type": "text"} constrains nothing,
    {"type": "json_object"} any JSON object, {"type": "json_schema", "json_schema": {"schema":
    ...}} that schema."""
    if response_format is None:
        return False, None
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "text":
        return False, None
    if kind == "json_object":
        return True, {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if isinstance(schema, Mapping):
            return True, dict(schema)
        raise RequestError('response_format "json_schema" needs {"json_schema": {"schema": {...}}}')
    raise RequestError(f'response_format type must be "text", "json_object" or "json_schema", got {response_format!r}')


def chat_constraint(tokenizer: Tokenizer, template: ChatTemplate, tools: list[dict] | None, tool_choice: Any = None,
                    response_format: Any = None) -> tuple[list[dict] | None, Constraint | None]:
    """(the tools the template shows, the request's constraint or None).

    tool_choice: "none" shows no tools; "auto" (the default with tools) lets the model answer
    freely and puts a call under the grammar once the template's call marker appears; "required"
    starts a call at once (the marker forced, then the JSON, then the closing marker and the end
    token); a named function does the same for that one tool. `response_format` constrains the
    whole reply (not together with a tool call)."""
    name = _chosen_name(tool_choice)
    constrain, schema = response_schema(response_format)
    if tool_choice == "none" or not tools:
        if name is not None or tool_choice == "required":
            raise RequestError(f"tool_choice {tool_choice!r} needs tools")
        tools = None
    elif name is not None:
        picked = [t for t in tools if _function(t).get("name") == name]
        if not picked:
            raise RequestError(f"tool_choice names {name!r}, which is not among the tools: {', '.join(tool_names(tools))}")
        tools = picked
    if constrain:
        if tools and (tool_choice == "required" or name is not None):
            raise RequestError("response_format and a required tool call cannot both constrain one reply")
        return tools, Constraint(tokenizer, compile_schema(tokenizer, schema))
    if not tools:
        return None, None
    fmt = tool_call_format(template)
    grammar = compile_schema(tokenizer, call_schema(tools, fmt.arguments_key))
    close = tokenizer.encode(fmt.close, add_special=False, parse_special=True) if fmt.close else []
    if tool_choice == "required" or name is not None:
        forced = tokenizer.encode(fmt.open, add_special=False, parse_special=True) if fmt is HERMES else []
        return tools, Constraint(tokenizer, grammar, forced=forced, close=close, end="eos")
    return tools, Constraint(tokenizer, grammar, close=close, end="free", trigger=fmt.open, bare_json=fmt.bare_json)
