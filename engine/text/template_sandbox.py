"""The Jinja sandbox that chat templates render in, and the limits that stop a hostile one.

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

A broken limit raises `LimitExceeded`, forbidden access jinja2's `SecurityError`;
`engine.text.template` turns both into `TemplateError`.
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
from jinja2.compiler import CodeGenerator
from jinja2.ext import Extension, loopcontrols
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace

from ..errors import TemplateError

MAX_OUTPUT_CHARS = 4_000_000  # rendered prompt, and any single value built while rendering
MAX_STEPS = 500_000  # loop iterations + calls per render; a real chat template needs thousands
MAX_SECONDS = 5.0
_MAX_INT_BITS = 1 << 16

# Everything `_check_size` walks into besides mappings.
_COLLECTIONS = (list, tuple, set, frozenset, deque, KeysView, ValuesView, ItemsView)


def require_safe_jinja() -> None:
    parts = re.findall(r"\d+", jinja2.__version__)[:3]
    if tuple(int(p) for p in parts) < (3, 1, 6):
        raise TemplateError(f"jinja2 {jinja2.__version__} has known sandbox escapes; "
                            "upgrade it: pip install -U 'jinja2>=3.1.6'")


# ---------------------------------------------------------------------------------------------
# Limits


class LimitExceeded(SecurityError):
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
            raise LimitExceeded(f"more than {MAX_STEPS:,} loop iterations and calls")
        if time.monotonic() > self.deadline:
            raise LimitExceeded(f"rendering took longer than {MAX_SECONDS:g} s")


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


def _budgeted(iterable: Any) -> Any:
    for item in iterable:
        _spend()
        yield item


def render_within_limits(template: jinja2.Template, context: dict) -> str:
    """Render `template` (compiled by ChatSandbox) with a fresh budget, stopping at the output cap."""
    token = _budget.set(_Budget(context))
    try:
        pieces, size = [], 0
        for piece in template.generate(context):
            size += len(piece)
            if size > MAX_OUTPUT_CHARS:
                raise _too_big("the rendered prompt")
            pieces.append(piece)
        return "".join(pieces)
    finally:
        _budget.reset(token)


def _too_big(what: str) -> LimitExceeded:
    return LimitExceeded(f"{what} would exceed {MAX_OUTPUT_CHARS:,} characters")


def _check_result(result: Any, what: str) -> Any:
    if isinstance(result, (str, list, tuple)) and len(result) > MAX_OUTPUT_CHARS:
        raise _too_big(what)
    return result


def _check_size(value: Any) -> None:
    """Raise if printing or serialising `value` could exceed MAX_OUTPUT_CHARS.

    Walks containers counting every visit, so `[x, x]` nested n deep costs 2**n, as its repr
    would: the walk stops as soon as the count passes the limit.
    """
    if isinstance(value, str):
        if len(value) > MAX_OUTPUT_CHARS:
            raise _too_big("a value")
        return
    if not isinstance(value, (Mapping, *_COLLECTIONS)):
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
        elif isinstance(item, _COLLECTIONS):
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


def _check_indent(a: dict) -> None:
    s, width = a.get("s", ""), a.get("width", 4)
    pad = len(width) if isinstance(width, str) else width
    if isinstance(s, str) and isinstance(pad, int) and (s.count("\n") + 1) * pad > MAX_OUTPUT_CHARS:
        raise _too_big("indent()")


def _check_wordwrap(a: dict) -> None:
    s, width, wrap = a.get("s", ""), a.get("width", 79), a.get("wrapstring") or "\n"
    if isinstance(s, str) and isinstance(width, int) and isinstance(wrap, str):
        if len(s) + len(wrap) * (len(s) // max(width, 1) + 1) > MAX_OUTPUT_CHARS:
            raise _too_big("wordwrap()")


# Per-filter pre-checks on the bound arguments of Jinja's built-in filters.
_FILTER_GUARDS: dict[str, Callable[[dict], None]] = {
    "center": lambda a: _check_width("center", a.get("width")),
    "batch": lambda a: _check_width("batch", a.get("linecount")),
    "slice": lambda a: _check_width("slice", a.get("slices")),
    "indent": _check_indent,
    "wordwrap": _check_wordwrap,
    "replace": lambda a: _check_replace(a.get("s"), a.get("old"), a.get("new"),
                                        a.get("count") if a.get("count") is not None else -1),
    "join": lambda a: _check_join(a.get("d", ""), a.get("value")),
    "format": lambda a: _check_format(a.get("value"), a.get("kwargs") or a.get("args", ())),
}


def _guarded_filter(name: str, func: Callable, guard: Callable[[dict], None] | None) -> Callable:
    """`func` spending a step, with its arguments and its result measured."""
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
        return _check_result(func(*args, **kwargs), f"the {name} filter's result")

    filter_.__dict__.update(getattr(func, "__dict__", {}))  # keeps Jinja's pass_context mark
    filter_.__name__ = filter_.__qualname__ = getattr(func, "__name__", name)
    return filter_


# ---------------------------------------------------------------------------------------------
# What templates can reach besides the built-ins


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
    """transformers' `tojson`: plain `json.dumps`, no HTML escaping, Unicode kept.

    Registered through `_guarded_filter`, which measures `value` and the result; only the
    indent, which multiplies the output, needs a check of its own.
    """
    _check_width("tojson indent", indent)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    if not isinstance(format, str) or len(format) > 256 or _WIDE_FIELD.search(format):
        raise SecurityError("strftime_now() takes a short format string")
    return datetime.now().strftime(format)


def _checked_value(value: Any) -> Any:
    """`finalize`: every `{{ value }}` is measured before it is turned into text."""
    _check_size(value)
    return value


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


class ChatSandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _BudgetedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})  # also keeps them out of constant folding

    def __init__(self, raise_exception: Callable[[str], None]) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, finalize=_checked_value,
                         extensions=[loopcontrols, _GenerationTag], autoescape=False)
        for name, func in list(self.filters.items()):
            self.filters[name] = _guarded_filter(name, func, _FILTER_GUARDS.get(name))
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

    budgeted_iter = staticmethod(_budgeted)

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
        return _check_result(super().call(__context, __obj, *args, **kwargs), "a call's result")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    if len(seq) * n > MAX_OUTPUT_CHARS:
                        raise _too_big("a repetition")
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                    raise LimitExceeded("an integer product is too large")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
                if right * left.bit_length() > _MAX_INT_BITS:
                    raise LimitExceeded("an integer power is too large")
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
