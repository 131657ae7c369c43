"""mcp.json: the shape other MCP clients use, checked entry by entry; and `chatapp mcp list`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from mcpservers import TOOLS, stdio_entry, write_config, write_server

from chatapp.tools.mcp_config import default_mcp_file, load_mcp_config


def test_a_good_config_reads_stdio_and_http_servers(tmp_path):
    path = write_config(tmp_path / "mcp.json", {
        "files": {"command": "npx", "args": ["-y", "server-files", "/tmp"], "env": {"DEBUG": "0"}},
        "search": {"type": "http", "url": "https://example.com/mcp", "headers": {"Authorization": "Bearer k"}},
        "off": {"command": "x", "disabled": True},
    })
    config = load_mcp_config(path)
    assert config.errors == []
    files, search = config.servers
    assert (files.transport, files.command, files.args, files.env) == ("stdio", "npx", ("-y", "server-files", "/tmp"), {"DEBUG": "0"})
    assert (search.transport, search.url, search.headers) == ("http", "https://example.com/mcp", {"Authorization": "Bearer k"})
    assert "Bearer" not in search.describe()


def test_each_bad_entry_is_one_line_naming_the_server_and_field_and_the_rest_still_load(tmp_path):
    path = write_config(tmp_path / "mcp.json", {
        "ok": {"command": "server"},
        "no-kind": {"args": []},
        "both": {"command": "a", "url": "http://x"},
        "args": {"command": "a", "args": "--flag"},
        "env": {"command": "a", "env": {"N": 1}},
        "url": {"url": "ftp://x"},
        "sse": {"type": "sse", "url": "http://x/sse"},
        "bad name!": {"command": "a"},
        "notobj": ["a"],
    })
    config = load_mcp_config(path)
    assert [s.name for s in config.servers] == ["ok"]
    expected = {"no-kind": "exactly one of 'command'", "both": "exactly one of 'command'", "args": "'args' must be a list",
                "env": "'env' must be an object of string values", "url": "'url' must be an http:// or https://",
                "sse": "not supported", "bad name!": "the name must be", "notobj": "must be an object"}
    assert len(config.errors) == len(expected)
    for (name, words), line in zip(expected.items(), config.errors):
        assert "\n" not in line and f"MCP server {name!r}: " in line and words in line and str(path) in line, line


def test_a_file_that_is_not_the_expected_shape_loads_no_servers_and_says_why(tmp_path):
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "list.json").write_text("[]", encoding="utf-8")
    assert "not valid JSON" in load_mcp_config(tmp_path / "bad.json").errors[0]
    assert '"mcpServers"' in load_mcp_config(tmp_path / "list.json").errors[0]
    assert load_mcp_config(tmp_path / "absent.json").errors == [f"{tmp_path / 'absent.json'}: no such MCP config file"]


def test_the_default_file_lives_in_the_user_config_dir_and_may_be_absent():
    # conftest points XDG_CONFIG_HOME at a temporary folder.
    assert default_mcp_file().parent.name == "chatapp"
    assert str(default_mcp_file()).startswith(os.environ["XDG_CONFIG_HOME"])
    config = load_mcp_config()
    assert config.servers == [] and config.errors == []


def _chatapp(*args, env=None):
    return subprocess.run([sys.executable, "-m", "chatapp.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_mcp_list_shows_each_server_its_state_and_its_tools(tmp_path):
    server = write_server(tmp_path)
    config = write_config(tmp_path / "mcp.json", {
        "local": stdio_entry(server),
        "missing": {"command": str(tmp_path / "no-such-program")},
        "broken": {"command": 42},
    })
    done = _chatapp("mcp", "list", "--mcp", str(config))
    assert done.returncode == 1, done.stderr  # a server failed and an entry was skipped
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"local (stdio: {sys.executable} {server}): started ok, {len(TOOLS)} tool(s)")
    assert [line.split()[0] for line in lines[1:1 + len(TOOLS)]] == [f"local__{t}" for t in TOOLS]
    assert re.search(r"^  local__add +Add two integers\.$", done.stdout, re.M)
    assert lines[-1].startswith("missing (stdio: ") and ": failed: [Errno 2] No such file or directory" in lines[-1]
    assert done.stderr.strip() == f"chatapp mcp: {config}: MCP server 'broken': 'command' must be a non-empty string; it is skipped"

    done = _chatapp("mcp", "list", "--json", "--mcp", str(config))
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["local"]["state"] == "running" and rows["missing"]["state"] == "failed"
    assert rows["local"]["tools"][0]["parameters"]["required"] == ["a", "b"]


def test_mcp_list_reads_the_default_config_and_exits_0_when_all_start(tmp_path):
    server = write_server(tmp_path)
    home = tmp_path / "config"
    (home / "chatapp").mkdir(parents=True)
    write_config(home / "chatapp" / "mcp.json", {"local": stdio_entry(server)})
    done = _chatapp("mcp", "list", env={"XDG_CONFIG_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("local (stdio: ") and done.stderr == ""
