"""Tool calls parsed out of a model's reply, in the formats of the families we target.

Hermes / Qwen2.5 / SmolLM-style (ChatML) models wrap each call in tags, one or several per reply:

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "2+2"}}
    </tool_call>

Llama 3.1/3.2 answer a call with the whole reply being a JSON object, sometimes after the
`<|python_tag|>` token, several separated by `;`:

    <|python_tag|>{"name": "calculator", "parameters": {"expression": "2+2"}}

A bare JSON reply is ambiguous (a user may ask for JSON), so it counts as a call only when its
name is one of `tool_names`, or when `<|python_tag|>` announces it.

Model output is hostile: `parse_tool_calls` never raises. A span that looks like a call but does
not parse stays in `content` and is described in `errors`, so the app can show it and tell the
model what went wrong.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection
from dataclasses import dataclass, field

__all__ = ["ToolCall", "ParsedReply", "parse_tool_calls"]

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
# End-of-message tokens a Llama reply may still carry when special tokens are not stripped.
_LLAMA_END_TOKENS = ("<|eom_id|>", "<|eot_id|>")

_decoder = json.JSONDecoder()


def _new_call_id() -> str:
    return "call_" + secrets.token_hex(6)


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool by the model. `raw` is the exact span of the reply it was parsed from."""

    id: str
    name: str
    arguments: dict
    raw: str

    def to_openai(self) -> dict:
        """The OpenAI `tool_calls` entry of an assistant message (arguments as a JSON string)."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }


@dataclass(frozen=True)
class ParsedReply:
    content: str  # the reply without the parsed calls, stripped
    tool_calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one per call-looking span that failed to parse


class _CallError(ValueError):
    """A span that looks like a tool call but is not a valid one."""


def parse_tool_calls(text: str, tool_names: Collection[str] | None = None) -> ParsedReply:
    """Split a model reply into plain text and tool calls. Never raises."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    try:
        if OPEN_TAG in text:
            return _parse_tagged(text)
        return _parse_bare_json(text, tool_names)
    except Exception as exc:  # a parser bug must not take the chat down; keep the text as it is
        return ParsedReply(text.strip(), [], [f"could not parse tool calls: {type(exc).__name__}: {exc}"])


def _parse_tagged(text: str) -> ParsedReply:
    """Hermes/Qwen `<tool_call>{json}</tool_call>` blocks; an unclosed block runs to the next
    `<tool_call>` or to the end of the reply (generation often stops before the closing tag)."""
    kept: list[str] = []
    calls: list[ToolCall] = []
    errors: list[str] = []
    pos = 0
    while True:
        start = text.find(OPEN_TAG, pos)
        if start < 0:
            kept.append(text[pos:])
            break
        kept.append(text[pos:start])
        body_start = start + len(OPEN_TAG)
        close = text.find(CLOSE_TAG, body_start)
        reopen = text.find(OPEN_TAG, body_start)
        if close >= 0 and (reopen < 0 or close < reopen):
            body, end = text[body_start:close], close + len(CLOSE_TAG)
        else:
            body_end = reopen if reopen >= 0 else len(text)
            body, end = text[body_start:body_end], body_end
        raw = text[start:end]
        try:
            calls.append(_call_from_object(_one_json_object(body), raw))
        except _CallError as exc:
            errors.append(f"tool call #{len(calls) + len(errors) + 1}: {exc}")
            kept.append(raw)
        pos = end
    return ParsedReply("".join(kept).strip(), calls, errors)


def _parse_bare_json(text: str, tool_names: Collection[str] | None) -> ParsedReply:
    """Llama 3.x: the whole reply is one JSON call or several separated by `;`."""
    body = text.strip()
    tagged = body.startswith(PYTHON_TAG)
    if tagged:
        body = body[len(PYTHON_TAG):]
    for token in _LLAMA_END_TOKENS:
        if body.endswith(token):
            body = body[: -len(token)]
    body = _strip_code_fence(body.strip())
    if not tagged and not body.startswith("{"):
        return ParsedReply(text.strip(), [], [])

    try:
        objects, spans = _json_objects_separated_by_semicolons(body)
    except _CallError as exc:
        # Without the tag a reply that merely starts with "{" is ordinary text.
        errors = [f"tool call after {PYTHON_TAG}: {exc}"] if tagged else []
        return ParsedReply(text.strip(), [], errors)

    if not tagged:
        known = set(tool_names or ())
        if not all(isinstance(obj, dict) and isinstance(obj.get("name"), str) and obj["name"] in known
                   for obj in objects):
            return ParsedReply(text.strip(), [], [])

    calls: list[ToolCall] = []
    for i, (obj, raw) in enumerate(zip(objects, spans)):
        try:
            calls.append(_call_from_object(obj, text.strip() if len(objects) == 1 else raw))
        except _CallError as exc:
            return ParsedReply(text.strip(), [], [f"tool call #{i + 1}: {exc}"])
    return ParsedReply("", calls, [])


def _strip_code_fence(body: str) -> str:
    """Small models like to wrap the JSON in ```json ... ``` even when told not to."""
    if body.startswith("```") and body.endswith("```") and len(body) >= 6:
        inner = body[3:-3]
        first_line, sep, rest = inner.partition("\n")
        if sep and first_line.strip().isalpha():  # a language tag such as "json"
            inner = rest
        return inner.strip()
    return body


def _one_json_object(body: str) -> object:
    body = _strip_code_fence(body.strip())
    if not body:
        raise _CallError("empty tool call")
    value, end = _decode(body, 0)
    if body[end:].strip():
        raise _CallError(f"unexpected text after the JSON object: {_excerpt(body[end:].strip())}")
    return value


def _json_objects_separated_by_semicolons(body: str) -> tuple[list[object], list[str]]:
    """The JSON values of `body` and the exact text of each."""
    objects: list[object] = []
    spans: list[str] = []
    pos = 0
    while True:
        pos = _skip_space(body, pos)
        if pos >= len(body):
            break
        value, end = _decode(body, pos)
        objects.append(value)
        spans.append(body[pos:end])
        pos = end
        pos = _skip_space(body, pos)
        if pos >= len(body):
            break
        if body[pos] != ";":
            raise _CallError(f"expected ';' between calls, found {_excerpt(body[pos:])}")
        pos += 1
    if not objects:
        raise _CallError("empty tool call")
    return objects, spans


def _decode(s: str, pos: int) -> tuple[object, int]:
    try:
        return _decoder.raw_decode(s, pos)
    except json.JSONDecodeError as exc:
        raise _CallError(f"invalid JSON ({exc.msg} at character {exc.pos - pos + 1})") from None
    except RecursionError:
        raise _CallError("invalid JSON (nested too deeply)") from None


def _skip_space(s: str, pos: int) -> int:
    while pos < len(s) and s[pos].isspace():
        pos += 1
    return pos


def _call_from_object(obj: object, raw: str) -> ToolCall:
    if not isinstance(obj, dict):
        raise _CallError(f"expected a JSON object with \"name\" and \"arguments\", got {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _CallError('missing "name" (a non-empty string)')
    key = "arguments" if "arguments" in obj else "parameters"
    arguments = obj.get(key, {})
    if isinstance(arguments, str):  # some models double-encode the arguments
        if not arguments.strip():
            arguments = {}
        else:
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                raise _CallError(f'"{key}" of {name!r} is a string that is not valid JSON') from None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise _CallError(f'"{key}" of {name!r} must be a JSON object, not {type(arguments).__name__}')
    call_id = obj.get("id")
    if not isinstance(call_id, str) or not call_id:
        call_id = _new_call_id()
    return ToolCall(id=call_id, name=name.strip(), arguments=arguments, raw=raw)


def _excerpt(s: str, limit: int = 40) -> str:
    return repr(s if len(s) <= limit else s[:limit] + "...")
