"""Real MCP servers for the tests, written with the official SDK's MCPServer and run as
subprocesses: over stdio (the client starts them) or over streamable HTTP on a loopback port."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

SERVER_SOURCE = '''
import os, sys
from pathlib import Path
import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("test-server")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def touch(path: str) -> str:
    """Create an empty file (the tests see whether the call reached the server)."""
    Path(path).touch()
    return f"created {path}"


@server.tool()
def crash() -> str:
    """Exit the server process in the middle of the call."""
    os._exit(3)


@server.tool()
def huge() -> str:
    """Return 10 MB of text."""
    return "x" * 10_000_000


@server.tool()
def escape() -> str:
    """Return text with terminal escape sequences in it."""
    return "\\x1b[2J\\x1b]0;pwned\\x07red"


@server.tool()
async def sleepy(seconds: float, record: str) -> str:
    """Sleep; write to `record` "started", then "finished" or "cancelled" (the client's
    notifications/cancelled interrupts the handler)."""
    Path(record).write_text("started")
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        Path(record).write_text("cancelled")
        raise
    Path(record).write_text("finished")
    return "slept"


@server.tool()
def named(tool: str, cancel: str) -> str:
    """Arguments whose names the client uses itself."""
    return f"tool={tool} cancel={cancel}"


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
'''

TOOLS = ["add", "touch", "crash", "huge", "escape", "sleepy", "named"]


def write_server(folder: Path) -> Path:
    path = folder / "mcp_test_server.py"
    path.write_text(SERVER_SOURCE, encoding="utf-8")
    return path


def stdio_entry(server: Path) -> dict:
    return {"command": sys.executable, "args": [str(server)]}


def write_config(path: Path, servers: dict) -> Path:
    path.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_http_server(server: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """The server over streamable HTTP on a free loopback port, once it accepts connections."""
    port = free_port()
    with open(log, "w") as err:
        process = subprocess.Popen([sys.executable, str(server), "http", str(port)], stdout=err, stderr=err)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the HTTP MCP server exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the HTTP MCP server did not start listening within 60 s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
