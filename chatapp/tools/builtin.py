"""The built-in tools, registered through the same hook as any plugin's.

calculator and current_datetime are safe (they run without asking). The file tools read only
inside the folders the user allowed, and ask before each use unless the user said otherwise.
"""

from __future__ import annotations

import ast
import codecs
import datetime as dt
import math
import operator
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from zoneinfo import ZoneInfo

from .hookspecs import hookimpl
from .tool import ToolArgumentError, ToolExecutionError

__all__ = ["calculator", "current_datetime", "FileAccess", "register_tools"]


@hookimpl
def register_tools(register):
    register(calculator, safe=True)
    register(current_datetime, safe=True)


# --- calculator ----------------------------------------------------------------------------------

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 1000
MAX_DEPTH = 50
MAX_INT_BITS = 3400  # about 1000 decimal digits
MAX_ROUND_DIGITS = 100

_BINARY_OPS: dict[type, Callable] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPS: dict[type, Callable] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _round(x, ndigits=None):
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or abs(ndigits) > MAX_ROUND_DIGITS:
        raise ValueError(f"round's digits must be a whole number between -{MAX_ROUND_DIGITS} "
                         f"and {MAX_ROUND_DIGITS}")
    return round(x, ndigits)


def _min(*args):
    return min(args)


def _max(*args):
    return max(args)


# name -> (function, fewest arguments, most arguments or None for any number)
_FUNCTIONS: dict[str, tuple[Callable, int, int | None]] = {
    "sqrt": (math.sqrt, 1, 1),
    "exp": (math.exp, 1, 1),
    "log": (math.log, 1, 2),
    "log10": (math.log10, 1, 1),
    "log2": (math.log2, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "asin": (math.asin, 1, 1),
    "acos": (math.acos, 1, 1),
    "atan": (math.atan, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (_min, 1, None),
    "max": (_max, 1, None),
}

_SYNTAX_NAMES = {
    ast.Attribute: "attribute access ('.')",
    ast.Subscript: "indexing ('[...]')",
    ast.Compare: "comparisons",
    ast.BoolOp: "'and'/'or'",
    ast.Lambda: "lambda",
    ast.IfExp: "'if ... else'",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Dict: "dicts",
    ast.Set: "sets",
    ast.JoinedStr: "strings",
}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** (power), parentheses, the
    constants pi, e and tau, and the functions sqrt, exp, log (natural; log(x, base)), log10, log2,
    sin, cos, tan, asin, acos, atan (radians), floor, ceil, abs, round, min and max.

    Args:
        expression: the expression, e.g. "(3 + 4) * 2 ** 10 / sqrt(2)"
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolArgumentError(
            f"the expression is too long ({len(expression)} characters; at most {MAX_EXPRESSION_CHARS})"
        )
    if not expression.strip():
        raise ToolArgumentError("the expression is empty")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        detail = exc.msg if isinstance(exc, SyntaxError) else str(exc) or type(exc).__name__
        raise ToolArgumentError(f"not a valid expression: {detail}") from None
    value = _evaluate(tree.body, 0)
    if isinstance(value, float):
        return format(value, ".15g")
    return str(value)


def _evaluate(node: ast.AST, depth: int) -> int | float:
    if depth > MAX_DEPTH:
        raise ToolArgumentError(f"the expression is nested too deeply (at most {MAX_DEPTH} levels)")
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ToolArgumentError(f"only numbers are allowed, not {node.value!r}")
        return _checked(node.value)
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        hint = " (call it with parentheses)" if node.id in _FUNCTIONS else ""
        raise ToolArgumentError(f"unknown name {node.id!r}{hint}; the constants are {', '.join(_CONSTANTS)}")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return _checked(_UNARY_OPS[type(node.op)](_evaluate(node.operand, depth + 1)))
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY_OPS:
            hint = " (use ** for powers)" if isinstance(node.op, ast.BitXor) else ""
            raise ToolArgumentError(f"the operator {type(node.op).__name__} is not allowed{hint}")
        left = _evaluate(node.left, depth + 1)
        right = _evaluate(node.right, depth + 1)
        return _binary(node.op, left, right)
    if isinstance(node, ast.Call):
        return _call(node, depth)
    what = _SYNTAX_NAMES.get(type(node), type(node).__name__)
    raise ToolArgumentError(
        f"{what} not allowed: only numbers, + - * / // % **, parentheses and math functions"
    )


def _binary(op: ast.operator, left: int | float, right: int | float) -> int | float:
    if isinstance(op, ast.Pow):
        if abs(right) > MAX_EXPONENT:
            raise ToolExecutionError(f"the exponent {_short(right)} is too large (at most {MAX_EXPONENT})")
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > MAX_INT_BITS:
            raise ToolExecutionError("the result is too large (more than about 1000 digits)")
    if isinstance(op, ast.Mult) and isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
            raise ToolExecutionError("the result is too large (more than about 1000 digits)")
    try:
        return _checked(_BINARY_OPS[type(op)](left, right))
    except ZeroDivisionError:
        raise ToolExecutionError("division by zero") from None
    except OverflowError:
        raise ToolExecutionError("the result is too large") from None


def _call(node: ast.Call, depth: int) -> int | float:
    if not isinstance(node.func, ast.Name):
        raise ToolArgumentError("only calls of the math functions by name are allowed, e.g. sqrt(2)")
    name = node.func.id
    if name not in _FUNCTIONS:
        raise ToolArgumentError(f"unknown function {name!r}; the functions are {', '.join(_FUNCTIONS)}")
    if node.keywords:
        raise ToolArgumentError(f"{name}() takes no keyword arguments")
    function, fewest, most = _FUNCTIONS[name]
    if len(node.args) < fewest or (most is not None and len(node.args) > most):
        count = str(fewest) if fewest == most else f"{fewest} to {most}" if most else f"at least {fewest}"
        plural = "s" if most != 1 else ""
        raise ToolArgumentError(f"{name}() takes {count} argument{plural}, not {len(node.args)}")
    args = [_evaluate(arg, depth + 1) for arg in node.args]
    try:
        return _checked(function(*args))
    except ValueError as exc:
        detail = str(exc)
        if "domain" in detail:
            detail = "math domain error, e.g. sqrt or log of a negative number"
        raise ToolExecutionError(f"{name}(): {detail}") from None
    except OverflowError:
        raise ToolExecutionError(f"{name}(): the result is too large") from None
    except ZeroDivisionError:
        raise ToolExecutionError(f"{name}(): division by zero") from None


def _checked(value: object) -> int | float:
    if isinstance(value, complex):
        raise ToolExecutionError(
            "the result is a complex number, e.g. a fractional power of a negative number"
        )
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolExecutionError("the result is too large (more than about 1000 digits)")
    if isinstance(value, float):
        if math.isinf(value):
            raise ToolExecutionError("the result is too large")
        if math.isnan(value):
            raise ToolExecutionError("the result is not a number")
    return value  # type: ignore[return-value]


def _short(value: int | float) -> str:
    text = str(value)
    return text if len(text) <= 20 else text[:17] + "..."


# --- date and time -------------------------------------------------------------------------------


def current_datetime(timezone: str | None = None) -> str:
    """The current date and time in ISO 8601, in the local time zone or in the one given.

    Args:
        timezone: an IANA time zone such as "Europe/Paris", "America/New_York" or "UTC"
    """
    if not timezone:
        return dt.datetime.now().astimezone().isoformat(timespec="seconds")
    try:
        zone = ZoneInfo(timezone)
    except Exception:  # not found, malformed key, a folder such as "America", ...
        raise ToolArgumentError(
            f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from None
    return dt.datetime.now(zone).isoformat(timespec="seconds")


# --- files ---------------------------------------------------------------------------------------

MAX_READ_BYTES = 1 << 20
MAX_LISTED_ENTRIES = 500
HOW_TO_ALLOW = "The user can allow a folder by starting chatapp with --allow-dir DIR."


class FileAccess:
    """The folders the user allowed the model to read, and the file tools confined to them.

    A path is resolved (symlinks included) relative to the first folder, or taken as absolute,
    and is allowed only when its real path lies inside the real path of an allowed folder.
    Registered as a plugin, it contributes list_files and read_file.
    """

    def __init__(self, roots: Iterable[str | os.PathLike] = (), *, how_to_allow: str = HOW_TO_ALLOW):
        self.roots = [Path(os.path.abspath(os.path.expanduser(root))) for root in roots]
        self.how_to_allow = how_to_allow

    def allow(self, root: str | os.PathLike) -> None:
        self.roots.append(Path(os.path.abspath(os.path.expanduser(root))))

    @hookimpl
    def register_tools(self, register):
        # They only read, so "allow for this session" may cover any path (still inside the
        # allowed folders); tools with side effects are approved per arguments.
        register(self.list_files, side_effects=False)
        register(self.read_file, side_effects=False)

    def resolve(self, path: str) -> str:
        """The real path of `path` if it lies inside an allowed folder; raises otherwise."""
        if not self.roots:
            raise ToolExecutionError(f"no folder is allowed for the file tools. {self.how_to_allow}")
        if "\0" in path:
            raise ToolArgumentError("the path contains a NUL character")
        real = os.path.realpath(os.path.join(self.roots[0], path or "."))
        if not any(_inside(real, os.path.realpath(root)) for root in self.roots):
            allowed = ", ".join(str(root) for root in self.roots)
            raise ToolArgumentError(f"{path!r} is outside the allowed folders ({allowed})")
        if not os.path.lexists(real):
            raise ToolArgumentError(f"{path!r} does not exist")
        return real

    def list_files(self, path: str = ".") -> str:
        """List a folder the user allowed: folders end with '/', links with '@', files show a size.

        Args:
            path: the folder, relative to the first allowed folder, or absolute
        """
        real = self.resolve(path)
        if not os.path.isdir(real):
            raise ToolArgumentError(f"{path!r} is a file, not a folder; use read_file to read it")
        try:
            with os.scandir(real) as it:
                entries = sorted(it, key=lambda entry: entry.name)
        except OSError as exc:
            raise ToolExecutionError(f"cannot list {path!r}: {exc.strerror or exc}") from None
        if not entries:
            return f"{path} is an empty folder"
        lines = [_describe(entry) for entry in entries[:MAX_LISTED_ENTRIES]]
        if len(entries) > MAX_LISTED_ENTRIES:
            lines.append(f"[... and {len(entries) - MAX_LISTED_ENTRIES} more]")
        return "\n".join(lines)

    def read_file(self, path: str, max_bytes: int = 65536) -> str:
        """Read a text file in a folder the user allowed.

        Args:
            path: the file, relative to the first allowed folder, or absolute
            max_bytes: read at most this many bytes from the start of the file
        """
        if not 1 <= max_bytes <= MAX_READ_BYTES:
            raise ToolArgumentError(f"max_bytes must be between 1 and {MAX_READ_BYTES}")
        real = self.resolve(path)
        if os.path.isdir(real):
            raise ToolArgumentError(f"{path!r} is a folder; use list_files to see what is in it")
        # The real path has no symlinks left; O_NOFOLLOW refuses one swapped in since, and
        # O_NONBLOCK keeps a FIFO from hanging the open before the regular-file check.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(real, flags)
        except OSError as exc:
            raise ToolExecutionError(f"cannot open {path!r}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ToolArgumentError(f"{path!r} is not a regular file")
            data = f.read(max_bytes)
        if b"\0" in data:
            raise ToolArgumentError(
                f"{path!r} looks like a binary file (it contains NUL bytes); only text files can be read"
            )
        # A cut in the middle of a UTF-8 character drops that character instead of garbling it.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = decoder.decode(data, final=info.st_size <= max_bytes)
        if info.st_size > max_bytes:
            text += f"\n[truncated: showed the first {max_bytes} of {info.st_size} bytes]"
        return text


def _inside(real: str, root: str) -> bool:
    # commonpath compares whole components: /allowed-evil is not inside /allowed.
    try:
        return os.path.commonpath([real, root]) == root
    except ValueError:  # different drives, or a relative path
        return False


def _describe(entry: os.DirEntry) -> str:
    if entry.is_symlink():  # not followed: its target may lie outside the allowed folders
        return f"{entry.name}@"
    if entry.is_dir():
        return f"{entry.name}/"
    try:
        return f"{entry.name} ({entry.stat().st_size} bytes)"
    except OSError:
        return entry.name
