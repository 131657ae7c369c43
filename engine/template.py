"""Chat templates: Hugging Face-compatible Jinja rendering in a sandbox that distrusts the template.

A chat template comes from the model file, so it is hostile until proven otherwise. It renders in
`jinja2.sandbox.ImmutableSandboxedEnvironment` configured as Hugging Face `transformers` does
(trim_blocks, lstrip_blocks, loopcontrols, `raise_exception`, `strftime_now`, a `tojson` filter
that does not escape HTML and takes `indent`/`separators`/`sort_keys`), with limits on top:

- output: rendering streams and stops at MAX_OUTPUT_CHARS;
- work: every loop iteration and every call spends one step of MAX_STEPS, and a render may take
  at most MAX_SECONDS, so nested loops and runaway macros end quickly even when they print nothing;
- memory: the operators, filters and string methods that can build a big value in one step
  (`*`, `**`, `+`, `%`, `~`, `center`, `indent`, `replace`, `join`, `format`, `ljust`, ...) are
  checked before they run, and values are measured (shared references counted each time they
  would be printed) before they are printed or serialised.

Every failure, from a syntax error to a sandbox violation, surfaces as `TemplateError`.
"""

from __future__ import annotations

import inspect
import json
import re
import time
import types
from collections import deque
from collections.abc import ItemsView, KeysView, Mapping, ValuesView
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Callable

import jinja2
from jinja2 import nodes
from jinja2.nodes import EvalContext
from jinja2.compiler import CodeGenerator
from jinja2.ext import Extension, loopcontrols
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace

from .errors import TemplateError

MAX_OUTPUT_CHARS = 4_000_000  # rendered prompt, and any single value built while rendering
MAX_STEPS = 500_000  # loop iterations + calls per render; a real chat template needs thousands
MAX_SECONDS = 5.0
MAX_SOURCE_CHARS = 1_000_000
_MAX_INT_BITS = 1 << 16
_ROLES = frozenset({"system", "user", "assistant", "tool"})

# ChatML, the format of SmolLM2, Qwen and Hermes models; with `tools`, their schemas go into the
# system turn inside <tools></tools> and the model answers with <tool_call>{json}</tool_call>;
# results come back as <tool_response> blocks in a user turn.
CHATML_TEMPLATE = r"""
{%- set has_system = messages and messages[0].role == 'system' %}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if has_system %}
        {{- messages[0].content ~ '\n\n' }}
    {%- endif %}
    {{- '# Tools\n\nYou may call one or more of the functions described inside <tools></tools> to help with the request:\n<tools>' }}
    {%- for tool in tools %}
        {{- '\n' ~ (tool | tojson) }}
    {%- endfor %}
    {{- '\n</tools>\n\nTo call a function, reply with a JSON object holding its name and arguments inside <tool_call></tool_call> tags, one per call:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif has_system %}
    {{- '<|im_start|>system\n' ~ messages[0].content ~ '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if loop.first and has_system %}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or loop.previtem.role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' ~ message.content ~ '\n</tool_response>' }}
        {%- if loop.last or loop.nextitem.role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- else %}
        {{- '<|im_start|>' ~ message.role ~ '\n' }}
        {%- if message.content %}
            {{- message.content }}
        {%- endif %}
        {%- if message.role == 'assistant' and message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- set fn = tool_call.function if tool_call.function is defined else tool_call %}
                {%- if message.content or not loop.first %}
                    {{- '\n' }}
                {%- endif %}
                {{- '<tool_call>\n{"name": ' ~ (fn.name | tojson) ~ ', "arguments": ' }}
                {%- if fn.arguments is string %}
                    {{- fn.arguments }}
                {%- else %}
                    {{- fn.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
""".strip()


# ---------------------------------------------------------------------------------------------
# Limits


class _LimitExceeded(SecurityError):
    """A template used more output, work, time or memory than a chat prompt can need."""


class _Budget:
    __slots__ = ("steps_left", "deadline", "trusted")

    def __init__(self, context: dict) -> None:
        self.steps_left = MAX_STEPS
        self.deadline = time.monotonic() + MAX_SECONDS
        # The caller's own containers (messages, tools, ...) need no measuring, which keeps
        # `messages | length` in a loop cheap; the context holds them, so their ids stay valid.
        self.trusted = _container_ids(context.values())

    def spend(self) -> None:
        self.steps_left -= 1
        if self.steps_left < 0:
            raise _LimitExceeded(f"more than {MAX_STEPS:,} loop iterations and calls")
        if time.monotonic() > self.deadline:
            raise _LimitExceeded(f"rendering took longer than {MAX_SECONDS:g} s")


_budget: ContextVar[_Budget] = ContextVar("chat_template_budget")


def _container_ids(values: Any) -> set[int]:
    ids: set[int] = set()
    stack = list(values)
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple, dict)) and id(item) not in ids:
            ids.add(id(item))
            stack.extend(item.values() if isinstance(item, dict) else item)
    return ids


def _spend() -> None:
    _budget.get().spend()


def _too_big(what: str) -> _LimitExceeded:
    return _LimitExceeded(f"{what} would exceed {MAX_OUTPUT_CHARS:,} characters")


def _check_size(value: Any) -> None:
    """Raise if printing or serialising `value` could exceed MAX_OUTPUT_CHARS.

    Walks containers counting every visit, so `[x, x]` nested n deep costs 2**n, as its repr
    would: the walk stops as soon as the count passes the limit.
    """
    if isinstance(value, str):
        if len(value) > MAX_OUTPUT_CHARS:
            raise _too_big("a value")
        return
    if not isinstance(value, (list, tuple, Mapping, set, frozenset, deque, KeysView, ValuesView,
                              ItemsView)):
        return
    budget = _budget.get(None)
    trusted = budget.trusted if budget is not None else ()
    left = MAX_OUTPUT_CHARS
    stack = [value]
    while stack:
        item = stack.pop()
        if id(item) in trusted:
            left -= 8
        elif isinstance(item, str):
            left -= len(item) + 2
        elif isinstance(item, Mapping):
            left -= 2 * len(item) + 2
            if left >= 0:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset, deque, KeysView, ValuesView, ItemsView)):
            left -= len(item) + 2
            if left >= 0:
                stack.extend(item)
        else:
            left -= 8
        if left < 0:
            raise _too_big("a value")


def _check_width(name: str, width: Any) -> None:
    if isinstance(width, int) and width > MAX_OUTPUT_CHARS:
        raise _too_big(f"{name}({width})")


_WIDE_FIELD = re.compile(r"\d{7,}")
_NESTED_FIELD = re.compile(r"\{[^{}]*\{")


def _check_format(fmt: Any, args: Any) -> None:
    """Reject printf/str.format specs that would pad to millions of characters."""
    if not isinstance(fmt, str):
        return
    if _WIDE_FIELD.search(fmt):
        raise _too_big("a format field")
    if "*" in fmt or _NESTED_FIELD.search(fmt):  # widths taken from the arguments
        values = args.values() if isinstance(args, Mapping) else args
        values = values if isinstance(values, (tuple, list, ValuesView)) else (values,)
        for value in values:
            _check_width("a format field", value)
    _check_size(args)


def _check_replace(s: Any, old: Any, new: Any, count: Any = -1) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        hits = s.count(old)
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        if len(s) + hits * (len(new) - len(old)) > MAX_OUTPUT_CHARS:
            raise _too_big("replace()")


def _check_join(separator: Any, items: Any) -> None:
    _check_size(items)
    if isinstance(separator, str) and hasattr(items, "__len__"):
        if len(separator) * len(items) > MAX_OUTPUT_CHARS:
            raise _too_big("join()")


def _guard_str_method(method: Any, args: tuple, kwargs: dict) -> None:
    """Pre-checks for the `str` methods that can build a big string in one call."""
    s, name = method.__self__, method.__name__
    bound = dict(zip(("a", "b", "c"), args), **kwargs)
    if name in ("ljust", "rjust", "center", "zfill"):
        _check_width(name, bound.get("a", bound.get("width")))
    elif name == "expandtabs":
        tabsize = bound.get("a", bound.get("tabsize", 8))
        if isinstance(tabsize, int) and s.count("\t") * tabsize > MAX_OUTPUT_CHARS:
            raise _too_big("expandtabs()")
    elif name == "replace":
        _check_replace(s, bound.get("a"), bound.get("b"), bound.get("c", bound.get("count", -1)))
    elif name == "join":
        _check_join(s, bound.get("a"))


def _filter_guards() -> dict[str, Callable[[dict], None]]:
    """Per-filter pre-checks on the bound arguments of Jinja's built-in filters."""

    def indent(a: dict) -> None:
        s, width = a.get("s", ""), a.get("width", 4)
        pad = len(width) if isinstance(width, str) else width
        if isinstance(s, str) and isinstance(pad, int) and (s.count("\n") + 1) * pad > MAX_OUTPUT_CHARS:
            raise _too_big("indent()")

    def wordwrap(a: dict) -> None:
        s, width, wrap = a.get("s", ""), a.get("width", 79), a.get("wrapstring") or "\n"
        if isinstance(s, str) and isinstance(width, int) and isinstance(wrap, str):
            if len(s) + len(wrap) * (len(s) // max(width, 1) + 1) > MAX_OUTPUT_CHARS:
                raise _too_big("wordwrap()")

    return {
        "center": lambda a: _check_width("center", a.get("width")),
        "batch": lambda a: _check_width("batch", a.get("linecount")),
        "slice": lambda a: _check_width("slice", a.get("slices")),
        "indent": indent,
        "wordwrap": wordwrap,
        "replace": lambda a: _check_replace(a.get("s"), a.get("old"), a.get("new"),
                                            a.get("count") if a.get("count") is not None else -1),
        "join": lambda a: _check_join(a.get("d", ""), a.get("value")),
        "format": lambda a: _check_format(a.get("value"), a.get("kwargs") or a.get("args", ())),
    }


def _guarded_filter(name: str, func: Callable, guard: Callable[[dict], None] | None) -> Callable:
    signature = inspect.signature(func) if guard is not None else None

    def filter_(*args: Any, **kwargs: Any) -> Any:
        _spend()
        for value in (*args, *kwargs.values()):
            if not isinstance(value, (Context, EvalContext, jinja2.Environment)):
                _check_size(value)
        if signature is not None:
            try:
                bound = signature.bind(*args, **kwargs).arguments
            except TypeError:
                bound = None  # let the filter itself report the bad call
            if bound is not None:
                guard(bound)
        result = func(*args, **kwargs)
        if isinstance(result, (str, list, tuple)) and len(result) > MAX_OUTPUT_CHARS:
            raise _too_big(f"the {name} filter's result")
        return result

    filter_.__dict__.update(getattr(func, "__dict__", {}))  # keeps Jinja's pass_context mark
    filter_.__name__ = filter_.__qualname__ = getattr(func, "__name__", name)
    return filter_


# ---------------------------------------------------------------------------------------------
# The environment


class _BudgetedCodeGenerator(CodeGenerator):
    """Compiles `a ~ b` through `environment.checked_concat` so string growth is bounded."""

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask marker): kept as
    plain content, so templates that use it compile."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _TemplateNamespace(Namespace):
    """`namespace()` without underscore names (as transformers) and with a repr that cannot
    expand shared references."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Namespace's signature trick
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        Namespace.__setitem__(self, name, value)

    def __repr__(self) -> str:
        return "<Namespace>"

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"a namespace attribute may not start with '_': {name!r}")


def _make_dict(*args: Any, **kwargs: Any) -> dict:
    """`dict(...)` for templates: a function, so there is no type to poke at."""
    return dict(*args, **kwargs)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """transformers' `tojson`: plain `json.dumps`, no HTML escaping, Unicode kept."""
    _check_size(value)
    _check_width("tojson indent", indent)
    text = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)
    if len(text) > MAX_OUTPUT_CHARS:
        raise _too_big("tojson")
    return text


def _strftime_now(format: str) -> str:
    if not isinstance(format, str) or len(format) > 256 or _WIDE_FIELD.search(format):
        raise SecurityError("strftime_now() takes a short format string")
    return datetime.now().strftime(format)


def _checked_value(value: Any) -> Any:
    """`finalize`: every `{{ value }}` is measured before it is turned into text."""
    _check_size(value)
    return value


def _budgeted(iterable: Any) -> Any:
    for item in iterable:
        _spend()
        yield item


class _ChatSandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _BudgetedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})  # also keeps them out of constant folding

    def __init__(self, raise_exception: Callable[[str], None]) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, finalize=_checked_value,
                         extensions=[loopcontrols, _GenerationTag], autoescape=False)
        guards = _filter_guards()
        for name, func in list(self.filters.items()):
            self.filters[name] = _guarded_filter(name, func, guards.get(name))
        self.filters["tojson"] = _guarded_filter("tojson", _tojson, None)
        self.globals.update(
            raise_exception=raise_exception,
            strftime_now=_strftime_now,
            namespace=_TemplateNamespace,
            dict=_make_dict,
        )

    def compile_chat_template(self, source: str) -> jinja2.Template:
        """Parse, route every `for` loop's iterable through the step budget, and compile."""
        ast = self.parse(source)
        for loop in ast.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.EnvironmentAttribute("budgeted_iter"), [loop.iter], [],
                                   None, None, lineno=loop.lineno)
        return self.template_class.from_code(self, self.compile(ast), self.make_globals(None))

    @staticmethod
    def budgeted_iter(iterable: Any) -> Any:
        return _budgeted(iterable)

    @staticmethod
    def checked_concat(parts: tuple) -> str:
        texts = []
        total = 0
        for part in parts:
            _check_size(part)
            text = str(part)
            total += len(text)
            if total > MAX_OUTPUT_CHARS:
                raise _too_big("a ~ concatenation")
            texts.append(text)
        return "".join(texts)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _spend()
        if isinstance(__obj, LoopContext) and args:  # `loop(children)` in a recursive for
            args = (_budgeted(args[0]), *args[1:])
        elif isinstance(__obj, types.BuiltinMethodType) and isinstance(__obj.__self__, str):
            _guard_str_method(__obj, args, kwargs)
            for value in (*args, *kwargs.values()):
                _check_size(value)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, (str, list, tuple)) and len(result) > MAX_OUTPUT_CHARS:
            raise _too_big("a call's result")
        return result

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    if len(seq) * n > MAX_OUTPUT_CHARS:
                        raise _too_big("a repetition")
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                    raise _LimitExceeded("an integer product is too large")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
                if right * left.bit_length() > _MAX_INT_BITS:
                    raise _LimitExceeded("an integer power is too large")
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                if len(left) + len(right) > MAX_OUTPUT_CHARS:
                    raise _too_big("a concatenation")
        elif operator == "%" and isinstance(left, str):
            _check_format(left, right)
        return super().call_binop(context, operator, left, right)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        """Touching internals is never an accident in a chat template: fail at once rather
        than render an empty string as Jinja does by default."""
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} "
                            "object is unsafe")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        format_ = super().wrap_str_format(value)
        if format_ is None:
            return None
        fmt = value.__self__

        def checked_format(*args: Any, **kwargs: Any) -> str:
            _check_format(fmt, (*args, *kwargs.values()))
            return format_(*args, **kwargs)

        return checked_format


def _jinja_is_recent_enough() -> bool:
    parts = re.findall(r"\d+", jinja2.__version__)[:3]
    return tuple(int(p) for p in parts) >= (3, 1, 6)


# ---------------------------------------------------------------------------------------------
# Messages


def _text_content(content: Any, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise TemplateError(f"{where}: content part {j} must be "
                                    f'{{"type": "text", "text": "..."}}, got {part!r:.80}')
            texts.append(part["text"])
        return "\n".join(texts)  # as vLLM and OpenAI-compatible servers join text parts
    raise TemplateError(f"{where}: content must be a string, null or a list of text parts, "
                        f"not {type(content).__name__}")


def _tool_calls(calls: Any, where: str) -> list[dict]:
    if not isinstance(calls, list):
        raise TemplateError(f"{where}: tool_calls must be a list, not {type(calls).__name__}")
    normalized = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(fn, dict) and isinstance(fn.get("name"), str)):
            raise TemplateError(f'{where}: tool_calls[{j}] must look like {{"type": "function", '
                                f'"function": {{"name": ..., "arguments": ...}}}}')
        arguments = fn.get("arguments", {})
        if isinstance(arguments, str):
            # OpenAI sends arguments as JSON text; templates (Qwen, Llama 3) expect an object
            try:
                decoded = json.loads(arguments)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict):
                arguments = decoded
        normalized.append({**call, "function": {**fn, "arguments": arguments}})
    return normalized


def _normalize_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, (list, tuple)):
        raise TemplateError(f"messages must be a list of dicts, not {type(messages).__name__}")
    if not messages:
        raise TemplateError("messages is empty: there is nothing to render")
    normalized = []
    for i, message in enumerate(messages):
        where = f"message {i}"
        if not isinstance(message, dict):
            raise TemplateError(f"{where} must be a dict, not {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise TemplateError(f"{where}: role must be one of {', '.join(sorted(_ROLES))}, "
                                f"got {role!r:.40}")
        where = f"message {i} ({role})"
        out = dict(message)
        if "tool_calls" in message and message["tool_calls"] is not None:
            if role != "assistant":
                raise TemplateError(f"{where}: only assistant messages carry tool_calls")
            out["tool_calls"] = _tool_calls(message["tool_calls"], where)
        elif "content" not in message:
            raise TemplateError(f"{where} has no content")
        out["content"] = _text_content(message.get("content"), where)
        for key in ("name", "tool_call_id"):
            if key in message and not isinstance(message[key], str):
                raise TemplateError(f"{where}: {key} must be a string")
        normalized.append(out)
    return normalized


def _template_line(exc: BaseException) -> int | None:
    """The template line the error was raised on (Jinja rewrites tracebacks to show it)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# ---------------------------------------------------------------------------------------------


class ChatTemplate:
    """A compiled chat template; `render(messages)` turns a conversation into the prompt text."""

    is_fallback: bool = False

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "",
                 name: str = "chat template") -> None:
        if not _jinja_is_recent_enough():
            raise TemplateError(f"jinja2 {jinja2.__version__} has known sandbox escapes; "
                                "upgrade it: pip install -U 'jinja2>=3.1.6'")
        if not isinstance(source, str):
            raise TemplateError(f"{name} must be a string, not {type(source).__name__}")
        if len(source) > MAX_SOURCE_CHARS:
            raise TemplateError(f"{name} is {len(source):,} characters long; "
                                f"the limit is {MAX_SOURCE_CHARS:,}")
        if not (isinstance(bos_token, str) and isinstance(eos_token, str)):
            raise TemplateError("bos_token and eos_token must be strings")
        self.source = source
        self.name = name
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._env = _ChatSandbox(self._raise_exception)
        try:
            self._template = self._env.compile_chat_template(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{name} has a syntax error at line {exc.lineno}: {exc.message}") from None
        except RecursionError:
            raise TemplateError(f"{name} is nested too deeply to compile") from None
        except Exception as exc:
            raise TemplateError(f"{name} failed to compile: {type(exc).__name__}: {exc}") from None

    @classmethod
    def from_gguf_metadata(cls, metadata: dict, *, bos_token: str, eos_token: str) -> ChatTemplate:
        """The template stored under `tokenizer.chat_template`, else the built-in ChatML one
        (then `is_fallback` is True)."""
        source = metadata.get("tokenizer.chat_template")
        if isinstance(source, str) and source.strip():
            return cls(source, bos_token=bos_token, eos_token=eos_token,
                       name="the model's chat template (tokenizer.chat_template)")
        template = cls(CHATML_TEMPLATE, bos_token=bos_token, eos_token=eos_token,
                       name="the built-in ChatML template")
        template.is_fallback = True
        return template

    def _raise_exception(self, message: Any) -> None:
        raise TemplateError(f"{self.name} rejected the conversation: {message}")

    def render(self, messages: list[dict], *, add_generation_prompt: bool = True,
               tools: list[dict] | None = None, **extra: Any) -> str:
        """The prompt text for `messages` (OpenAI-style dicts), ready to tokenize.

        Content given as a list of text parts is joined with newlines; tool-call arguments given
        as JSON text are decoded to objects, as templates expect. `extra` (e.g. `date_string`)
        is passed to the template as further variables.
        """
        context = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **extra,
            "messages": _normalize_messages(messages),
            "tools": self._check_tools(tools),
            "add_generation_prompt": bool(add_generation_prompt),
        }
        token = _budget.set(_Budget(context))
        try:
            pieces, size = [], 0
            for piece in self._template.generate(context):
                size += len(piece)
                if size > MAX_OUTPUT_CHARS:
                    raise _too_big("the rendered prompt")
                pieces.append(piece)
            return "".join(pieces)
        except TemplateError:
            raise
        except RecursionError:
            raise TemplateError(f"{self.name} recursed too deeply (a macro that calls itself "
                                "without end?)") from None
        except Exception as exc:
            line = _template_line(exc)
            at = f" at line {line}" if line else ""
            if isinstance(exc, _LimitExceeded):
                problem = f"exceeded a sandbox limit{at}: {exc}"
            elif isinstance(exc, SecurityError):
                problem = f"tried something the sandbox forbids{at}: {exc}"
            elif isinstance(exc, MemoryError):
                problem = f"ran out of memory{at}"
            else:
                problem = f"failed to render{at}: {type(exc).__name__}: {exc}"
            raise TemplateError(f"{self.name} {problem}") from None
        finally:
            _budget.reset(token)

    def _check_tools(self, tools: Any) -> list[dict] | None:
        if tools is None:
            return None
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise TemplateError("tools must be a list of dicts (JSON schemas of functions)")
        return tools

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r}, is_fallback={self.is_fallback})"
