"""Approval per tool and arguments: a tool with side effects is approved per exact arguments, a
read-only one may be approved as a whole; the approval hook learns when tool output came first."""

from __future__ import annotations

import json

from chatapp.tools import ApprovalPolicy, FileAccess, Tool, ToolCall, ToolRegistry, ToolRunner, hookimpl


class Notes:
    """A plugin with a tool that writes (side effects) and one that only reads."""

    def __init__(self, folder) -> None:
        self.folder = folder

    @hookimpl
    def register_tools(self, register):
        def append_line(name: str, line: str) -> str:
            """Append a line to a note.

            Args:
                name: the note's file name
                line: the text to append
            """
            with open(self.folder / name, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            return "appended"

        def count_notes() -> str:
            """How many notes there are."""
            return str(len(list(self.folder.iterdir())))

        register(append_line)
        register(count_notes, side_effects=False)


class Asker:
    def __init__(self, *answers):
        self.answers, self.asked = list(answers), []

    def __call__(self, call, tool, after_tool_output=False):
        self.asked.append((call.name, call.arguments, after_tool_output))
        return self.answers.pop(0)


def setup(tmp_path, ask, permanent_file=None):
    notes = tmp_path / "notes"
    notes.mkdir()
    registry = ToolRegistry(FileAccess([notes]), user_tools_file=None, entry_points=False)
    registry.register_plugin(Notes(notes))
    policy = ApprovalPolicy(ask, permanent_file=permanent_file)
    registry.register_plugin(policy)
    return ToolRunner(registry), policy, notes


def call(tool_name, /, **arguments):
    return ToolCall(id=f"call_{tool_name}", name=tool_name, arguments=arguments, raw="")


def test_tools_declare_side_effects_and_builtin_readers_have_none(tmp_path):
    runner, _, _ = setup(tmp_path, Asker())
    tools = runner.registry.tools()
    assert tools["append_line"].side_effects  # a plain function: assumed to have them
    assert not tools["count_notes"].side_effects
    assert not tools["read_file"].side_effects and not tools["list_files"].side_effects
    assert Tool.from_function(lambda text: text, name="echo").side_effects


def test_a_session_approval_of_a_tool_with_side_effects_covers_only_those_arguments(tmp_path):
    ask = Asker("allow_session", "allow_session")
    runner, policy, notes = setup(tmp_path, ask)
    assert runner.run(call("append_line", name="a.txt", line="one")).content == "appended"
    # Same arguments (in another key order): approved. New arguments: asked again.
    assert runner.run(ToolCall("call_2", "append_line", {"line": "one", "name": "a.txt"}, raw="")).content == "appended"
    assert len(ask.asked) == 1
    assert runner.run(call("append_line", name="a.txt", line="rm -rf ~")).content == "appended"
    assert [a[1] for a in ask.asked] == [{"name": "a.txt", "line": "one"}, {"name": "a.txt", "line": "rm -rf ~"}]
    assert policy.session_allowed == set()  # never the name
    assert (notes / "a.txt").read_text() == "one\none\nrm -rf ~\n"


def test_allow_always_for_a_tool_with_side_effects_is_not_stored_by_name(tmp_path):
    approved_file = tmp_path / "approved.json"
    ask = Asker("allow_always", "deny")
    runner, _, notes = setup(tmp_path, ask, approved_file)
    runner.run(call("append_line", name="a.txt", line="one"))
    result = runner.run(call("append_line", name="b.txt", line="two"))
    assert result.denied and len(ask.asked) == 2
    assert not approved_file.exists()
    assert not (notes / "b.txt").exists()


def test_a_name_on_the_permanent_list_does_not_approve_a_tool_with_side_effects(tmp_path):
    approved_file = tmp_path / "approved.json"
    approved_file.write_text(json.dumps(["append_line", "count_notes"]))
    ask = Asker("deny")
    runner, _, _ = setup(tmp_path, ask, approved_file)
    assert runner.run(call("count_notes")).content == "0"
    assert runner.run(call("append_line", name="a.txt", line="x")).denied
    assert [a[0] for a in ask.asked] == ["append_line"]


def test_these_arguments_for_the_session(tmp_path):
    ask = Asker("allow_arguments", "deny")
    runner, policy, _ = setup(tmp_path, ask)
    assert runner.run(call("read_file", path="x.txt")).is_error  # approved, then the file is missing
    assert runner.run(call("read_file", path="x.txt")).is_error
    assert runner.run(call("read_file", path="y.txt")).denied
    assert len(ask.asked) == 2
    policy.forget("read_file")
    assert policy.session_allowed_calls == set()


def test_a_session_approval_of_a_read_only_tool_covers_any_arguments(tmp_path):
    ask = Asker("allow_session")
    runner, _, notes = setup(tmp_path, ask)
    (notes / "a.txt").write_text("A")
    (notes / "b.txt").write_text("B")
    assert runner.run(call("read_file", path="a.txt")).content == "A"
    assert runner.run(call("read_file", path="b.txt")).content == "B"
    assert len(ask.asked) == 1


def test_the_approval_hook_learns_that_tool_output_came_first(tmp_path):
    ask = Asker("allow", "allow")
    runner, _, _ = setup(tmp_path, ask)
    runner.run(call("append_line", name="a.txt", line="one"))
    runner.run(call("append_line", name="a.txt", line="two"), after_tool_output=True)
    assert [a[2] for a in ask.asked] == [False, True]
