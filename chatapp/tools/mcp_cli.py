"""`chatapp mcp list`: start each configured MCP server, say how it went and list its tools."""

from __future__ import annotations

import argparse
import json
import sys

from ..widgets.inert import inert
from .mcp import McpTools
from .mcp_config import load_mcp_config

__all__ = ["cmd_mcp_list"]


def cmd_mcp_list(args: argparse.Namespace) -> int:
    """Exit 0 when every server started, 1 when one failed or a config entry was skipped."""
    config = load_mcp_config(args.mcp)
    for error in config.errors:
        print(f"chatapp mcp: {error}", file=sys.stderr)
    if not config.servers:
        if not config.errors:
            print(f"no MCP servers configured in {config.path}", file=sys.stderr)
        return 1 if config.errors else 0
    mcp = McpTools(config)
    try:
        mcp.start()
        rows = [_row(mcp, name) for name in mcp.connections]
    finally:
        mcp.close()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            # Names, descriptions and errors come from the servers: shown inert, one line each.
            state = f"started ok, {len(row['tools'])} tool(s)" if row["state"] == "running" else f"failed: {row['error']}"
            print(inert(f"{row['name']} ({row['transport']}: {row['where']}): {state}").replace("\n", " "))
            width = max((len(t["name"]) for t in row["tools"]), default=0)
            for tool in row["tools"]:
                summary = tool["description"].strip().splitlines()[0] if tool["description"].strip() else ""
                print(inert(f"  {tool['name']:<{width}}  {summary[:100]}").rstrip())
            for problem in row["problems"]:
                print(inert(f"  ! {problem}"))
    failed = any(row["state"] != "running" for row in rows)
    return 1 if failed or config.errors else 0


def _row(mcp: McpTools, name: str) -> dict:
    connection = mcp.connections[name]
    tools = mcp.tools_of(name)
    return {
        "name": name,
        "transport": connection.config.transport,
        "where": connection.config.describe(),
        "state": connection.state,
        "error": connection.error,
        "tools": [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools],
        "problems": mcp.tool_errors.get(name, []),
    }
