"""Tools the model can call: typed Python functions behind a small pluggy hook spec.

    registry = ToolRegistry(FileAccess(["~/notes"]))
    registry.register_plugin(ApprovalPolicy(ask))
    runner = ToolRunner(registry)
    for call in parse_tool_calls(reply, registry.tools()).tool_calls:
        messages.append(runner.run(call).to_message())

Plugin authors need only `hookimpl` (and `Tool`, `Decision`, `ToolResult` for the finer hooks).
"""

from engine import ParsedReply, ToolCall, parse_tool_calls

from .approval import ApprovalPolicy
from .builtin import FileAccess
from .hookspecs import hookimpl
from .registry import ToolRegistry
from .runner import MAX_CHAINED_CALLS, Decision, ToolResult, ToolRunner
from .tool import Tool, ToolArgumentError, ToolDefinitionError, ToolError, ToolExecutionError

__all__ = [
    "hookimpl",
    "Tool",
    "ToolCall",
    "ParsedReply",
    "parse_tool_calls",
    "ToolRegistry",
    "ToolRunner",
    "ToolResult",
    "Decision",
    "FileAccess",
    "ApprovalPolicy",
    "MAX_CHAINED_CALLS",
    "ToolError",
    "ToolArgumentError",
    "ToolExecutionError",
    "ToolDefinitionError",
]
