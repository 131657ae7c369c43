"""The MCP servers the user configured: `<user config dir>/chatapp/mcp.json`, or `--mcp FILE`.

The file has the shape other MCP clients use, so one can be copied from them:

    {"mcpServers": {
        "files":  {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"],
                   "env": {"DEBUG": "0"}},
        "search": {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer ..."}}}}

A server with "command" runs as a subprocess over stdio; one with "url" is reached over streamable
HTTP. A server entry that is wrong is skipped with one line naming it and the field; the others
still load, and a missing default file means no servers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

__all__ = ["McpServerConfig", "McpConfig", "default_mcp_file", "load_mcp_config"]

# Tool names are namespaced "<server>__<tool>" and must match ^[A-Za-z0-9_-]{1,64}$ (OpenAI and the
# chat templates): a server name keeps those characters and is at most this long.
MAX_SERVER_NAME = 30
_SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_HTTP_TYPES = {"http", "streamable-http", "streamable_http", "streamableHttp"}


def default_mcp_file() -> Path:
    return Path(platformdirs.user_config_dir("chatapp")) / "mcp.json"


@dataclass(frozen=True)
class McpServerConfig:
    name: str
    command: str | None = None  # stdio: the program to run
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # added to a small safe default environment
    cwd: str | None = None
    url: str | None = None  # streamable HTTP: the endpoint, e.g. http://127.0.0.1:8000/mcp
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"

    def describe(self) -> str:
        """Where the server is, for `chatapp mcp list` (header values left out: they hold keys)."""
        if self.command is not None:
            return " ".join([self.command, *self.args])
        return str(self.url)


@dataclass
class McpConfig:
    path: Path | None
    servers: list[McpServerConfig] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one line per entry (or file) that was skipped


def load_mcp_config(path: Path | None = None) -> McpConfig:
    """Read and check the MCP config. Never raises for a bad file: the errors say what is wrong.

    `path=None` reads the default file, which may be absent; a file given explicitly must exist."""
    explicit = path is not None
    path = Path(path) if explicit else default_mcp_file()
    config = McpConfig(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            config.errors.append(f"{path}: no such MCP config file")
        return config
    except (OSError, UnicodeDecodeError) as exc:
        config.errors.append(f"{path}: cannot read the MCP config: {exc}")
        return config
    try:
        data = json.loads(text)
    except ValueError as exc:
        config.errors.append(f"{path}: not valid JSON ({exc}); no MCP servers were loaded")
        return config
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        config.errors.append(f'{path}: expected {{"mcpServers": {{"name": {{...}}}}}}; no MCP servers were loaded')
        return config
    for name, entry in servers.items():
        try:
            server = _server(name, entry)
        except ValueError as exc:
            config.errors.append(f"{path}: MCP server {name!r}: {exc}; it is skipped")
            continue
        if server is not None:
            config.servers.append(server)
    return config


def _server(name: str, entry: Any) -> McpServerConfig | None:
    if not _SERVER_NAME_RE.match(name) or len(name) > MAX_SERVER_NAME:
        raise ValueError(f"the name must be 1-{MAX_SERVER_NAME} letters, digits, '_' or '-' "
                         "(it prefixes the tool names the model sees)")
    if not isinstance(entry, dict):
        raise ValueError("must be an object with 'command' (stdio) or 'url' (streamable HTTP)")
    if entry.get("disabled") is True:  # other clients' configs carry this flag
        return None
    kind = entry.get("type")
    if kind == "sse":
        raise ValueError("'type': 'sse' (the old HTTP+SSE transport) is not supported; use streamable HTTP")
    has_command, has_url = "command" in entry, "url" in entry
    if has_command == has_url:
        raise ValueError("needs exactly one of 'command' (stdio) and 'url' (streamable HTTP)")
    if has_command:
        if kind not in (None, "stdio"):
            raise ValueError(f"'type' is {kind!r} but the entry has a 'command' (stdio)")
        command = entry["command"]
        if not isinstance(command, str) or not command.strip():
            raise ValueError("'command' must be a non-empty string")
        args = entry.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError("'args' must be a list of strings")
        cwd = entry.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise ValueError("'cwd' must be a string")
        return McpServerConfig(name, command=command, args=tuple(args), env=_strings(entry, "env"), cwd=cwd)
    if kind is not None and kind not in _HTTP_TYPES:
        raise ValueError(f"'type' is {kind!r} but the entry has a 'url' (streamable HTTP)")
    url = entry["url"]
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError("'url' must be an http:// or https:// address")
    return McpServerConfig(name, url=url, headers=_strings(entry, "headers"))


def _strings(entry: dict, key: str) -> dict[str, str]:
    value = entry.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"'{key}' must be an object of string values")
    return dict(value)
