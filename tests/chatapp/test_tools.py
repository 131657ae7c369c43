"""Tools: schema derivation, argument checks, the built-ins, plugins, the runner and approval."""

import datetime as dt
import json
import os
import sys
from typing import Literal, Optional
from zoneinfo import ZoneInfo

import pytest

from chatapp.tools import (
    ApprovalPolicy,
    Decision,
    FileAccess,
    Tool,
    ToolArgumentError,
    ToolCall,
    ToolDefinitionError,
    ToolExecutionError,
    ToolRegistry,
    ToolResult,
    ToolRunner,
    hookimpl,
)
from chatapp.tools.builtin import calculator, current_datetime

# --- schema derivation ---------------------------------------------------------------------------


def search(query: str, limit: int = 10, *, ratio: float = 0.5, exact: bool = False,
           tags: list[str] | None = None, ids: list[int] = [],  # noqa: B006 - a default shown in the schema
           mode: Literal["fast", "slow"] = "fast", level: Literal[1, 2, 3] = 1,
           note: Optional[str] = None) -> list:
    """Search the notes.

    Matches are ranked by relevance.

    Args:
        query: the words to look for,
            several are AND-ed
        limit (int): at most this many results
        tags: only notes with these tags

    Returns:
        the matching notes
    """
    return [query, limit, ratio, exact, tags, ids, mode, level, note]


def test_schema_from_signature_and_docstring():
    tool = Tool.from_function(search)
    assert tool.schema() == {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the notes.",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "the words to look for, several are AND-ed"},
                    "limit": {"type": "integer", "description": "at most this many results", "default": 10},
                    "ratio": {"type": "number", "default": 0.5},
                    "exact": {"type": "boolean", "default": False},
                    "tags": {"type": "array", "items": {"type": "string"},
                             "description": "only notes with these tags"},
                    "ids": {"type": "array", "items": {"type": "integer"}, "default": []},
                    "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
                    "level": {"type": "integer", "enum": [1, 2, 3], "default": 1},
                    "note": {"type": "string"},
                },
                "required": ["query"],
            },
        },
    }
    assert tool.safe is False and Tool.from_function(search, name="find", safe=True).name == "find"


def test_schema_without_docstring_and_with_string_annotations():
    namespace: dict = {}
    exec("from __future__ import annotations\ndef f(a: int, b: str | None = None): return a", namespace)
    assert Tool.from_function(namespace["f"]).schema()["function"] == {
        "name": "f",
        "description": "",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
                       "required": ["a"]},
    }


def test_functions_that_cannot_be_tools():
    def star(*args: int): ...
    def unsupported(x: set): ...
    def union(x: int | str): ...
    for fn in (star, unsupported, union):
        with pytest.raises(ToolDefinitionError):
            Tool.from_function(fn)
    with pytest.raises(ToolDefinitionError, match="name"):
        Tool.from_function(search, name="no spaces allowed")


def test_invoke_checks_arguments():
    tool = Tool.from_function(search)
    result = json.loads(tool.invoke({"query": "x", "limit": 3.0, "ratio": 2, "ids": [1.0, 2]}))
    assert result == ["x", 3, 2, False, None, [1, 2], "fast", 1, None]
    assert isinstance(result[1], int)
    # an optional argument given as null means "use the default"
    assert json.loads(tool.invoke({"query": "x", "limit": None}))[1] == 10
    for arguments, message in [
        ({}, "missing required argument 'query'"),
        ({"query": "x", "colour": "red"}, "unknown argument 'colour' (expected: query, limit"),
        ({"query": 5}, "argument 'query' must be a string, not an integer (5)"),
        ({"query": None}, "argument 'query' must be a string, not null"),
        ({"query": "x", "limit": 2.5}, "argument 'limit' must be an integer, not a number (2.5)"),
        ({"query": "x", "limit": True}, "argument 'limit' must be an integer, not a boolean"),
        ({"query": "x", "ratio": False}, "argument 'ratio' must be a number, not a boolean"),
        ({"query": "x", "exact": 1}, "argument 'exact' must be a boolean (true or false), not an integer"),
        ({"query": "x", "tags": "a"}, "argument 'tags' must be an array"),
        ({"query": "x", "tags": ["a", 2]}, "argument 'tags'[1] must be a string"),
        ({"query": "x", "mode": "medium"}, 'argument \'mode\' must be one of "fast", "slow", not ("medium")'),
        ({"query": "x", "level": True}, "argument 'level' must be an integer"),
        ({"query": "x", "level": 4}, "argument 'level' must be one of 1, 2, 3"),
    ]:
        with pytest.raises(ToolArgumentError) as info:
            tool.invoke(arguments)
        assert message in str(info.value), (arguments, str(info.value))
    with pytest.raises(ToolArgumentError, match="must be a JSON object"):
        tool.invoke(["x"])  # type: ignore[arg-type]


def test_invoke_wraps_failures_and_formats_results():
    def boom(x: int) -> str:
        """Fails."""
        raise RuntimeError(f"broken {x}")
    with pytest.raises(ToolExecutionError, match="RuntimeError: broken 1"):
        Tool.from_function(boom).invoke({"x": 1})

    def structured() -> dict:
        return {"a": [1, "é"]}
    assert Tool.from_function(structured).invoke({}) == '{"a": [1, "é"]}'

    def number() -> float:
        return 1.5
    assert Tool.from_function(number).invoke({}) == "1.5"


# --- calculator and date -------------------------------------------------------------------------


@pytest.mark.parametrize("expression, expected", [
    ("1 + 2 * 3", "7"),
    ("(1 + 2) * 3", "9"),
    ("7 / 2", "3.5"),
    ("7 // 2", "3"),
    ("-7 % 3", "2"),
    ("2 ** 10", "1024"),
    ("2 ** -1", "0.5"),
    ("-(3 - 5)", "2"),
    ("+4", "4"),
    ("sqrt(16)", "4"),
    ("round(pi, 3)", "3.142"),
    ("round(2.5)", "2"),
    ("max(1, 5, 3) - min(4, 2)", "3"),
    ("abs(-2.5)", "2.5"),
    ("log(e)", "1"),
    ("log(8, 2)", "3"),
    ("exp(0) + cos(0) + sin(0)", "2"),
    ("0.1 + 0.2", "0.3"),
    ("10 ** 100", "1" + "0" * 100),
    ("1.5e3", "1500"),
])
def test_calculator(expression, expected):
    assert calculator(expression) == expected


@pytest.mark.parametrize("expression, error, message", [
    ("__import__('os')", ToolArgumentError, "unknown function '__import__'"),
    ("(1).__class__", ToolArgumentError, "attribute access"),
    ("math.pi", ToolArgumentError, "attribute access"),
    ("x + 1", ToolArgumentError, "unknown name 'x'"),
    ("sqrt", ToolArgumentError, "call it with parentheses"),
    ("'a' * 3", ToolArgumentError, "only numbers"),
    ("2 ^ 3", ToolArgumentError, "use ** for powers"),
    ("1 < 2", ToolArgumentError, "comparisons not allowed"),
    ("[1, 2]", ToolArgumentError, "lists not allowed"),
    ("lambda: 1", ToolArgumentError, "lambda not allowed"),
    ("sqrt(x=4)", ToolArgumentError, "no keyword arguments"),
    ("sqrt(1, 2)", ToolArgumentError, "sqrt() takes 1 argument, not 2"),
    ("2 +", ToolArgumentError, "not a valid expression"),
    ("", ToolArgumentError, "empty"),
    ("1" + "+1" * 300, ToolArgumentError, "too long"),
    ("-" * 100 + "1", ToolArgumentError, "nested too deeply"),
    ("9**9**9", ToolExecutionError, "exponent 387420489 is too large"),
    ("2 ** 5000", ToolExecutionError, "exponent 5000 is too large"),
    ("(10 ** 999) ** 2", ToolExecutionError, "too large"),
    ("10 ** 999 * 10 ** 999", ToolExecutionError, "too large"),
    ("1e308 * 10", ToolExecutionError, "too large"),
    ("exp(1000)", ToolExecutionError, "too large"),
    ("1 / 0", ToolExecutionError, "division by zero"),
    ("5 % 0", ToolExecutionError, "division by zero"),
    ("sqrt(-1)", ToolExecutionError, "math domain error"),
    ("(-8) ** 0.5", ToolExecutionError, "complex"),
    ("round(1, 10 ** 9)", ToolExecutionError, "between -100 and 100"),
])
def test_calculator_refuses(expression, error, message):
    with pytest.raises(error) as info:
        calculator(expression)
    assert message in str(info.value)


def test_current_datetime():
    local = dt.datetime.fromisoformat(current_datetime())
    assert local.tzinfo is not None
    assert abs((local - dt.datetime.now(dt.timezone.utc)).total_seconds()) < 5
    tokyo = dt.datetime.fromisoformat(current_datetime("Asia/Tokyo"))
    assert tokyo.utcoffset() == dt.timedelta(hours=9)
    paris = dt.datetime.fromisoformat(current_datetime("Europe/Paris"))
    assert paris.utcoffset() == paris.astimezone(ZoneInfo("Europe/Paris")).utcoffset()
    for zone in ["Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime", "America"]:
        with pytest.raises(ToolArgumentError, match="unknown time zone"):
            current_datetime(zone)


# --- files ---------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """root/ (allowed) with notes, a subfolder and links; secret.txt and root-evil/ beside it."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "notes.txt").write_text("hello notes\n")
    (root / "sub" / "deep.txt").write_text("deep")
    (root / "blob.bin").write_bytes(b"\x89PNG\x00\x01")
    (tmp_path / "secret.txt").write_text("top secret")
    (tmp_path / "root-evil").mkdir()
    (tmp_path / "root-evil" / "x.txt").write_text("evil")
    os.symlink(tmp_path / "secret.txt", root / "link-out")
    os.symlink(tmp_path, root / "dir-out")
    os.symlink(root / "sub" / "deep.txt", root / "link-in")
    return tmp_path


def test_files_inside_the_allowed_folder(tree):
    files = FileAccess([tree / "root"])
    assert files.read_file("notes.txt") == "hello notes\n"
    assert files.read_file("sub/deep.txt") == "deep"
    assert files.read_file(str(tree / "root" / "sub" / "deep.txt")) == "deep"  # absolute, inside
    assert files.read_file("sub/../notes.txt") == "hello notes\n"  # .. that stays inside
    assert files.read_file("link-in") == "deep"  # a symlink inside pointing inside
    assert files.list_files().splitlines() == [
        "blob.bin (6 bytes)", "dir-out@", "link-in@", "link-out@", "notes.txt (12 bytes)", "sub/"]
    assert files.list_files("sub") == "deep.txt (4 bytes)"


@pytest.mark.parametrize("path", [
    "../secret.txt",                 # .. escape
    "sub/../../secret.txt",
    "{tmp}/secret.txt",              # absolute path outside
    "/etc/passwd",
    "link-out",                      # symlink pointing out
    "dir-out/secret.txt",            # through a symlinked folder pointing out
    "{tmp}/root-evil/x.txt",         # shares the string prefix "root" but is not inside
    "../root-evil/x.txt",
    "../nonexistent.txt",            # outside and missing: refused as outside
])
def test_files_outside_the_allowed_folder_are_refused(tree, path):
    files = FileAccess([tree / "root"])
    path = path.format(tmp=tree)
    with pytest.raises(ToolArgumentError, match="outside the allowed folders"):
        files.read_file(path)
    with pytest.raises(ToolArgumentError, match="outside the allowed folders"):
        files.list_files(path)


def test_file_errors(tree):
    files = FileAccess([tree / "root"])
    with pytest.raises(ToolArgumentError, match="'missing.txt' does not exist"):
        files.read_file("missing.txt")
    with pytest.raises(ToolArgumentError, match="binary"):
        files.read_file("blob.bin")
    with pytest.raises(ToolArgumentError, match="is a folder; use list_files"):
        files.read_file("sub")
    with pytest.raises(ToolArgumentError, match="use read_file"):
        files.list_files("notes.txt")
    with pytest.raises(ToolArgumentError, match="max_bytes"):
        files.read_file("notes.txt", max_bytes=0)
    with pytest.raises(ToolArgumentError, match="NUL"):
        files.read_file("notes\x00.txt")
    with pytest.raises(ToolExecutionError, match="--allow-dir"):
        FileAccess([]).read_file("notes.txt")
    with pytest.raises(ToolExecutionError, match="no folder is allowed"):
        FileAccess([]).list_files()


def test_read_file_truncates_on_a_character_boundary(tree):
    (tree / "root" / "long.txt").write_text("aé" * 10, encoding="utf-8")  # 30 bytes
    text = FileAccess([tree / "root"]).read_file("long.txt", max_bytes=5)  # cuts "é" in half
    assert text == "aéa\n[truncated: showed the first 5 of 30 bytes]"


def test_second_root_by_absolute_path(tree):
    files = FileAccess([tree / "root", tree / "root-evil"])
    assert files.read_file(str(tree / "root-evil" / "x.txt")) == "evil"
    with pytest.raises(ToolArgumentError, match="outside"):
        files.read_file(str(tree / "secret.txt"))


# --- registry ------------------------------------------------------------------------------------

USER_TOOLS = '''
from typing import Literal
from chatapp.tools import hookimpl


def shout(text: str, times: int = 1, end: Literal["!", "?"] = "!") -> str:
    """Shout a text.

    Args:
        text: what to shout
    """
    return (text.upper() + end) * times


@hookimpl
def register_tools(register):
    register(shout, safe=True)
'''


def registry(tmp_path, source=None, **kwargs) -> ToolRegistry:
    user_file = None
    if source is not None:
        user_file = tmp_path / "tools.py"
        user_file.write_text(source)
    return ToolRegistry(FileAccess([tmp_path]), user_tools_file=user_file, entry_points=False, **kwargs)


def test_registry_has_the_builtins(tmp_path):
    reg = ToolRegistry(FileAccess([tmp_path]), user_tools_file=tmp_path / "absent.py")  # entry points too
    assert list(reg.tools()) == ["calculator", "current_datetime", "list_files", "read_file"]
    assert reg.load_errors == []
    assert [s["function"]["name"] for s in reg.schemas()] == list(reg.tools())
    assert reg.get("calculator").safe and reg.get("current_datetime").safe
    assert not reg.get("read_file").safe and not reg.get("list_files").safe
    assert reg.get("nope") is None


def test_registry_loads_the_user_tools_file(tmp_path):
    reg = registry(tmp_path, USER_TOOLS)
    assert reg.load_errors == []
    shout = reg.get("shout")
    assert shout.safe
    assert shout.parameters == {
        "type": "object",
        "properties": {
            "text": {"type": "string", "description": "what to shout"},
            "times": {"type": "integer", "default": 1},
            "end": {"type": "string", "enum": ["!", "?"], "default": "!"},
        },
        "required": ["text"],
    }
    assert shout.invoke({"text": "hi", "times": 2}) == "HI!HI!"


@pytest.mark.parametrize("source, message", [
    ("def broken(:\n", "SyntaxError"),
    ("raise RuntimeError('oops')\n", "RuntimeError: oops"),
    ("import sys\nsys.exit(3)\n", "SystemExit"),
    ("from chatapp.tools import hookimpl\n@hookimpl\ndef register_tools(register, extra): pass\n",
     "PluginValidationError"),
    ("from chatapp.tools import hookimpl\n@hookimpl\ndef register_tools(register):\n    1 / 0\n",
     "register_tools failed: ZeroDivisionError"),
    ("from chatapp.tools import hookimpl\ndef f(x: set): pass\n@hookimpl\ndef register_tools(register):\n"
     "    register(f)\n", "unsupported type"),
    ("from chatapp.tools import hookimpl\ndef calculator(x: str): pass\n@hookimpl\n"
     "def register_tools(register):\n    register(calculator)\n", "'calculator' is already registered"),
])
def test_a_broken_user_tools_file_is_a_load_error(tmp_path, source, message):
    reg = registry(tmp_path, source)
    assert len(reg.load_errors) == 1 and message in reg.load_errors[0], reg.load_errors
    assert reg.get("calculator").function is calculator  # built-ins unaffected
    assert "read_file" in reg.tools()


def test_register_plugin_adds_tools(tmp_path):
    reg = registry(tmp_path)

    class Plugin:
        @hookimpl
        def register_tools(self, register):
            register(Tool("echo", "Echo.", {"type": "object", "properties": {"s": {"type": "string"}},
                                              "required": ["s"]}, lambda s: s))

    reg.register_plugin(Plugin())
    assert reg.get("echo").invoke({"s": "x"}) == "x"
    assert reg.load_errors == []


# --- runner --------------------------------------------------------------------------------------


def call(name, **arguments) -> ToolCall:
    return ToolCall(id="call_1", name=name, arguments=arguments, raw="")


def test_runner_results(tmp_path):
    runner = ToolRunner(registry(tmp_path))
    ok = runner.run(call("calculator", expression="6*7"))
    assert ok == ToolResult("call_1", "calculator", "42")
    assert ok.to_message() == {
        "role": "tool", "tool_call_id": "call_1", "name": "calculator", "content": "42"}

    unknown = runner.run(call("launch_rockets"))
    assert unknown.is_error and not unknown.denied
    assert unknown.content == ("Error: unknown tool 'launch_rockets'; "
                               "available: calculator, current_datetime, list_files, read_file")

    bad = runner.run(call("calculator", expr="1"))
    assert bad.is_error
    assert bad.content == ("Error: invalid arguments for calculator: unknown argument 'expr' "
                           "(expected: expression)")

    failed = runner.run(call("calculator", expression="1/0"))
    assert failed.is_error and failed.content == "Error: calculator failed: division by zero"

    outside = runner.run(call("read_file", path="/etc/passwd"))
    assert outside.is_error and "outside the allowed folders" in outside.content


def test_runner_truncates_huge_results(tmp_path):
    reg = registry(tmp_path)
    reg.register_plugin(type("P", (), {"register_tools": hookimpl(lambda self, register: register(
        Tool("big", "Big.", {"type": "object"}, lambda: "x" * 100)))})())
    result = ToolRunner(reg, max_result_chars=10).run(call("big"))
    assert result.content == "x" * 10 + "\n[truncated: the result had 100 characters; showed the first 10]"


class Recorder:
    def __init__(self, decision=None, replace=None):
        self.decision, self.replace, self.seen = decision, replace, []

    @hookimpl
    def before_tool_call(self, call, tool):
        self.seen.append(("before", call.arguments, tool.name))
        return self.decision

    @hookimpl
    def after_tool_call(self, call, result):
        self.seen.append(("after", call.arguments, result.content))
        return self.replace


def test_before_hooks_change_arguments_in_order_and_deny_stops(tmp_path):
    reg = registry(tmp_path)
    first, second = Recorder(), Recorder(Decision(arguments={"expression": "2+2"}))
    reg.register_plugin(first)
    reg.register_plugin(second)  # pluggy calls the last registered first
    result = ToolRunner(reg).run(call("calculator", expression="1+1"))
    assert result.content == "4"
    assert second.seen[0] == ("before", {"expression": "1+1"}, "calculator")
    assert first.seen[0] == ("before", {"expression": "2+2"}, "calculator")
    assert first.seen[1] == ("after", {"expression": "2+2"}, "4")

    denier = Recorder(Decision.deny("not today"))
    reg.register_plugin(denier)
    result = ToolRunner(reg).run(call("calculator", expression="1+1"))
    assert result == ToolResult("call_1", "calculator", "Error: the user denied this call: not today",
                                is_error=True, denied=True)
    assert len(second.seen) == 3  # not asked after the denial; saw the denied result afterwards
    assert second.seen[-1][0] == "after"


def test_after_hook_replaces_the_result(tmp_path):
    reg = registry(tmp_path)
    reg.register_plugin(Recorder(replace=ToolResult("call_1", "calculator", "[redacted]")))
    assert ToolRunner(reg).run(call("calculator", expression="1")).content == "[redacted]"


def test_a_failing_hook_fails_closed(tmp_path):
    class Broken:
        @hookimpl
        def before_tool_call(self, call):
            raise RuntimeError("bug")

    reg = registry(tmp_path)
    reg.register_plugin(Broken(), name="broken")
    result = ToolRunner(reg).run(call("calculator", expression="1"))
    assert result.is_error
    assert result.content == "Error: the 'broken' plugin failed before the call: RuntimeError: bug"


# --- approval ------------------------------------------------------------------------------------


class Asker:
    """The app's dialog, answering from a script."""

    def __init__(self, *answers):
        self.answers, self.asked = list(answers), []

    def __call__(self, call, tool, after_tool_output=False):
        self.asked.append((call.name, call.arguments, tool.name))
        return self.answers.pop(0)


def approved(tmp_path, ask, permanent_file):
    reg = registry(tmp_path)
    (tmp_path / "a.txt").write_text("A")
    policy = ApprovalPolicy(ask, permanent_file=permanent_file)
    reg.register_plugin(policy)
    return ToolRunner(reg), policy


def test_safe_tools_are_not_asked(tmp_path):
    ask = Asker()
    runner, _ = approved(tmp_path, ask, tmp_path / "approved.json")
    assert runner.run(call("calculator", expression="2")).content == "2"
    assert ask.asked == []


def test_allow_once_asks_every_time(tmp_path):
    ask = Asker("allow", "allow")
    runner, _ = approved(tmp_path, ask, tmp_path / "approved.json")
    assert runner.run(call("read_file", path="a.txt")).content == "A"
    assert runner.run(call("read_file", path="a.txt")).content == "A"
    assert ask.asked == [("read_file", {"path": "a.txt"}, "read_file")] * 2


def test_allow_session_is_remembered(tmp_path):
    ask = Asker("allow_session")
    runner, policy = approved(tmp_path, ask, tmp_path / "approved.json")
    assert runner.run(call("read_file", path="a.txt")).content == "A"
    assert runner.run(call("read_file", path="a.txt")).content == "A"
    assert len(ask.asked) == 1
    assert not (tmp_path / "approved.json").exists()
    assert policy.session_allowed == {"read_file"}


def test_allow_always_is_persisted_and_honoured_by_a_fresh_policy(tmp_path):
    approved_file = tmp_path / "config" / "approved_tools.json"
    runner, _ = approved(tmp_path, Asker("allow_always"), approved_file)
    assert runner.run(call("read_file", path="a.txt")).content == "A"
    assert json.loads(approved_file.read_text()) == ["read_file"]
    assert [p.name for p in approved_file.parent.iterdir()] == ["approved_tools.json"]  # no temp left

    fresh_ask = Asker()
    runner, policy = approved(tmp_path, fresh_ask, approved_file)
    assert runner.run(call("read_file", path="a.txt")).content == "A"
    assert fresh_ask.asked == []
    policy.forget("read_file")
    assert json.loads(approved_file.read_text()) == []


def test_deny(tmp_path):
    runner, _ = approved(tmp_path, Asker("deny"), tmp_path / "approved.json")
    result = runner.run(call("read_file", path="a.txt"))
    assert result.denied and result.is_error
    assert result.content == "Error: the user denied this call: declined in the approval dialog"


def test_a_malformed_permanent_file_allows_nothing(tmp_path):
    approved_file = tmp_path / "approved.json"
    approved_file.write_text('{"read_file": true}')
    ask = Asker("something else")
    runner, _ = approved(tmp_path, ask, approved_file)
    result = runner.run(call("read_file", path="a.txt"))
    assert len(ask.asked) == 1 and result.denied  # an unexpected answer denies


def test_approval_sees_arguments_changed_by_other_hooks(tmp_path):
    ask = Asker("allow")
    runner, _ = approved(tmp_path, ask, None)
    runner.registry.register_plugin(Recorder(Decision(arguments={"path": "a.txt"})))
    assert runner.run(call("read_file", path="elsewhere.txt")).content == "A"
    assert ask.asked == [("read_file", {"path": "a.txt"}, "read_file")]


def test_nothing_here_imports_textual_or_torch():
    import subprocess
    code = ("import sys, chatapp.tools, engine.text.toolcalls; "
            "print(sorted(m for m in ('torch', 'textual') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
