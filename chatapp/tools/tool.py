"""A tool is a typed, docstringed Python function; its JSON schema is derived, never hand-written.

    def weather(city: str, units: Literal["C", "F"] = "C") -> str:
        '''Current weather in a city.

        Args:
            city: the city's name, e.g. "Paris"
        '''

`Tool.from_function(weather)` gives the OpenAI-style schema the chat template shows the model,
and `Tool.invoke(arguments)` checks the model's arguments against that schema before calling.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import threading
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union

__all__ = ["Tool", "ToolError", "ToolArgumentError", "ToolExecutionError", "ToolDefinitionError"]


class ToolError(Exception):
    """Base class of the errors a tool call can end in."""


class ToolArgumentError(ToolError):
    """The arguments do not fit the tool: missing, unknown or of the wrong type, or a value the
    tool refuses. The model can fix these, so the message is written for it."""


class ToolExecutionError(ToolError):
    """The tool ran and failed."""


class ToolDefinitionError(ToolError, TypeError):
    """A function that cannot be a tool (unsupported parameter kind or type, bad name)."""


_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
_SECTION_RE = re.compile(
    r"^(Args|Arguments|Parameters|Returns?|Yields?|Raises|Examples?|Notes?|Attributes):\s*$"
)
_ARGS_HEADERS = {"Args", "Arguments", "Parameters"}
_ARG_LINE_RE = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


@dataclass(frozen=True)
class Tool:
    """A function the model may call, with the JSON schema of its arguments.

    Stopping a call: the runner answers a call at once when the user presses Esc or the timeout
    passes, and then sets the call's cancel event. Python cannot stop a thread, so the tool
    itself is told only if it opts in:

    - a parameter named `cancel` receives that `threading.Event` (it is left out of the schema,
      so the model never sees or sets it); a loop that checks `cancel.is_set()` can stop early;
    - an `async def` tool runs on an event loop of its own thread and its task is cancelled: it
      gets `asyncio.CancelledError` at its next await (and may clean up in `finally`).

    A plain function without `cancel` is not told: it runs on, unseen, until it returns, and its
    result is dropped. (MCP tools opt in: the server gets `notifications/cancelled`.)
    """

    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    function: Callable[..., Any]
    safe: bool = False  # safe tools run without asking the user
    source: str = ""  # where the tool comes from when not this app, e.g. "MCP server 'files'" (the dialog says)
    # False for tools that only read (the file tools): approving one "for the session" may then
    # cover any arguments. A tool with side effects is approved per exact arguments instead.
    side_effects: bool = True
    # The function's parameter that receives the call's cancel event (a threading.Event), or
    # None when it takes none. Not part of `parameters`: the model never sets it.
    cancel_parameter: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ToolDefinitionError(f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'")
        if not isinstance(self.parameters, dict) or self.parameters.get("type") != "object":
            raise ToolDefinitionError(
                f"tool {self.name!r}: parameters must be a JSON schema of type 'object'"
            )
        if not callable(self.function):
            raise ToolDefinitionError(f"tool {self.name!r}: function is not callable")

    @classmethod
    def from_function(cls, fn: Callable[..., Any], *, name: str | None = None, safe: bool = False,
                      side_effects: bool = True) -> Tool:
        """Derive a tool from a function's signature, type hints and docstring."""
        name = name or getattr(fn, "__name__", None)
        if not name:
            raise ToolDefinitionError(f"{fn!r} has no __name__; pass name=")
        try:
            signature = inspect.signature(fn)
            hints = typing.get_type_hints(fn)
        except (TypeError, ValueError, NameError) as exc:
            raise ToolDefinitionError(f"tool {name!r}: cannot read the signature: {exc}") from exc
        description, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")

        properties: dict[str, dict] = {}
        required: list[str] = []
        cancel_parameter = None
        for param in signature.parameters.values():
            if param.name == CANCEL_PARAMETER and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                cancel_parameter = CANCEL_PARAMETER  # the runner's event, not an argument of the model's
                continue
            if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                raise ToolDefinitionError(
                    f"tool {name!r}: parameter {param.name!r} is {param.kind.description}; "
                    "tools take named parameters only"
                )
            where = f"tool {name!r}, parameter {param.name!r}"
            prop = _schema_for(hints.get(param.name, inspect.Parameter.empty), where)
            if param.name in arg_docs:
                prop["description"] = arg_docs[param.name]
            if param.default is param.empty:
                required.append(param.name)
            elif param.default is not None and _is_json(param.default):
                prop["default"] = json.loads(json.dumps(param.default))  # a copy, not the live default
            properties[param.name] = prop
        parameters = {"type": "object", "properties": properties, "required": required}
        return cls(name=name, description=description, parameters=parameters, function=fn, safe=safe,
                   side_effects=side_effects, cancel_parameter=cancel_parameter)

    def schema(self) -> dict:
        """The OpenAI `tools` entry: {"type": "function", "function": {name, description, parameters}}."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def invoke(self, arguments: dict, cancel: threading.Event | None = None) -> str:
        """Check `arguments`, call the function, and return its result as text (dict/list as JSON).
        `cancel`, once set, stops a tool that opted in (see the class docstring).

        Raises ToolArgumentError for arguments that do not fit, ToolExecutionError when the
        function fails or is cancelled (ToolErrors the function raises itself pass through)."""
        checked = validate_arguments(self.parameters, arguments)
        cancel = cancel or threading.Event()
        if self.cancel_parameter is not None:
            checked[self.cancel_parameter] = cancel
        try:
            inspect.signature(self.function).bind(**checked)
        except TypeError as exc:  # a hand-written schema that disagrees with the function
            raise ToolArgumentError(str(exc)) from None
        except ValueError:  # some builtins have no signature; let the call itself decide
            pass
        try:
            result = self.function(**checked)
            if inspect.iscoroutine(result):
                result = _run_until_cancelled(result, cancel)
        except ToolError:
            raise
        except asyncio.CancelledError:
            raise ToolExecutionError("cancelled") from None
        except Exception as exc:
            raise ToolExecutionError(f"{type(exc).__name__}: {exc}") from exc
        if isinstance(result, str):
            return result
        if isinstance(result, (dict, list)):
            return json.dumps(result, ensure_ascii=False, default=str)
        return str(result)


CANCEL_PARAMETER = "cancel"
_CANCEL_POLL_S = 0.05  # how often an async tool's loop looks at the cancel event


def _run_until_cancelled(coroutine: Any, cancel: threading.Event) -> Any:
    """Run an async tool's coroutine on a loop of this (the tool's) thread; cancel its task once
    `cancel` is set. A threading.Event cannot be awaited, so the loop looks at it every 50 ms."""

    async def supervise() -> Any:
        task = asyncio.ensure_future(coroutine)
        while not task.done():
            await asyncio.wait({task}, timeout=_CANCEL_POLL_S)
            if cancel.is_set() and not task.done():
                task.cancel()
                await asyncio.wait({task})  # let it run its cleanup (finally, except CancelledError)
        return task.result()

    return asyncio.run(supervise())


# --- schema derivation ---------------------------------------------------------------------------


def _schema_for(annotation: Any, where: str) -> dict:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}  # any JSON value
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:  # Optional[X]: the schema of X; None is accepted by validation
            return _schema_for(members[0], where)
        raise ToolDefinitionError(f"{where}: unions of several types are not supported ({annotation})")
    if origin is Literal:
        values = list(typing.get_args(annotation))
        if not all(isinstance(v, (str, int, float, bool)) for v in values):
            raise ToolDefinitionError(f"{where}: Literal values must be strings or numbers")
        kinds = {_JSON_TYPES[type(v)] for v in values}
        return {"type": kinds.pop(), "enum": values} if len(kinds) == 1 else {"enum": values}
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    if annotation is list or origin is list:
        args = typing.get_args(annotation)
        return {"type": "array", "items": _schema_for(args[0], where)} if args else {"type": "array"}
    if annotation is dict or origin is dict:
        return {"type": "object"}
    raise ToolDefinitionError(
        f"{where}: unsupported type {annotation!r}; use str, int, float, bool, list[...], dict, "
        "Literal[...] or Optional[...]"
    )


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(first paragraph, {parameter: description}) of a Google-style docstring."""
    lines = doc.expandtabs().splitlines()
    first: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION_RE.match(line.strip()):
            break
        first.append(line.strip())
    description = " ".join(first)

    # getdoc() has dedented the docstring: section headers sit at column 0, entries below them.
    arg_docs: dict[str, str] = {}
    in_args = False
    entry_indent: int | None = None
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped and indent == 0:  # a header, or text that ends the section
            header = _SECTION_RE.match(stripped)
            in_args = bool(header) and header.group(1) in _ARGS_HEADERS
            entry_indent, current = None, None
            continue
        if not in_args or not stripped:
            continue
        if entry_indent is None:
            entry_indent = indent
        match = _ARG_LINE_RE.match(stripped) if indent <= entry_indent else None
        if match:
            current = match.group(1)
            arg_docs[current] = match.group(2).strip()
        elif current is not None:  # a continuation line
            arg_docs[current] = (arg_docs[current] + " " + stripped).strip()
    return description, arg_docs


# --- argument validation -------------------------------------------------------------------------

_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean (true or false)",
    "array": "an array",
    "object": "an object",
    "null": "null",
}


def validate_arguments(parameters: dict, arguments: Any) -> dict:
    """Check a call's arguments against the tool's JSON schema; return them with whole floats
    turned into ints where an integer is expected (models write 3.0 for 3)."""
    if not isinstance(arguments, dict):
        raise ToolArgumentError(f"arguments must be a JSON object, not {_json_type_name(arguments)}")
    properties: dict = parameters.get("properties") or {}
    required: list = parameters.get("required") or []
    unknown = [key for key in arguments if key not in properties]
    if unknown and not parameters.get("additionalProperties"):
        expected = ", ".join(properties) or "none"
        raise ToolArgumentError(
            f"unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)} "
            f"(expected: {expected})"
        )
    missing = [key for key in required if key not in arguments]
    if missing:
        raise ToolArgumentError(
            f"missing required argument{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(k) for k in missing)}"
        )
    # Models send null for an optional argument they mean to leave out: the default applies.
    return {
        key: _check_value(properties.get(key, {}), value, repr(key))
        for key, value in arguments.items()
        if not (value is None and key not in required)
    }


def _check_value(schema: dict, value: Any, where: str) -> Any:
    expected = schema.get("type")
    if expected is not None:
        value = _check_type(expected, value, where, schema)
    enum = schema.get("enum")
    if enum is not None and not any(type(value) is type(e) and value == e for e in enum):
        raise ToolArgumentError(
            f"argument {where} must be one of {', '.join(json.dumps(e) for e in enum)}, not {_show(value)}"
        )
    return value


def _check_type(expected: str | list, value: Any, where: str, schema: dict) -> Any:
    kinds = expected if isinstance(expected, list) else [expected]
    for kind in kinds:
        if kind == "null" and value is None:
            return None
        if kind == "string" and isinstance(value, str):
            return value
        if kind == "boolean" and isinstance(value, bool):
            return value
        if kind == "integer" and not isinstance(value, bool):
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
        if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if kind == "array" and isinstance(value, list):
            items = schema.get("items") or {}
            return [_check_value(items, v, f"{where}[{i}]") for i, v in enumerate(value)]
        if kind == "object" and isinstance(value, dict):
            return value
    wanted = " or ".join(_TYPE_NAMES.get(k, str(k)) for k in kinds)
    raise ToolArgumentError(f"argument {where} must be {wanted}, not {_json_type_name(value)} {_show(value)}")


def _json_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    for kind, name in ((str, "a string"), (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def _show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, float) else repr(value)
    return f"({text})" if len(text) <= limit else f"({text[:limit]}...)"
