"""Run one tool call: look the tool up, let the hooks approve or change it, invoke, report.

Every outcome is a `ToolResult` the model can read, errors included, so that it can recover
(fix its arguments, pick another tool, or answer without one). `run` never raises.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import TYPE_CHECKING, Any

from engine import ToolCall

from .hookspecs import Decision, ToolResult
from .tool import ToolArgumentError, ToolExecutionError

if TYPE_CHECKING:
    from .registry import ToolRegistry

__all__ = ["Decision", "ToolResult", "ToolRunner", "MAX_CHAINED_CALLS"]

# How many rounds of tool calls the app lets the model chain before it must answer in text.
MAX_CHAINED_CALLS = 5
# Results longer than this are cut: a whole file or listing would crowd out the conversation.
MAX_RESULT_CHARS = 50_000
# Seconds a tool may run before its call is answered "timed out" (ToolRunner(timeout=...)).
TOOL_TIMEOUT_S = 60.0


class ToolRunner:
    def __init__(self, registry: ToolRegistry, *, max_result_chars: int = MAX_RESULT_CHARS,
                 timeout: float = TOOL_TIMEOUT_S):
        self.registry = registry
        self.max_result_chars = max_result_chars
        self.timeout = timeout

    def run(self, call: ToolCall, cancel: threading.Event | None = None, *, after_tool_output: bool = False) -> ToolResult:
        """Run `call` through the hooks and the tool; never raises. Setting `cancel` (Esc in the
        app) answers a running tool's call at once and tells the tool to stop, as does the
        timeout (only tools that opt in can stop: see Tool). after_tool_output: the
        model wrote the call after reading tool output (the approval dialog says so)."""
        try:
            call, result = self._run(call, cancel or threading.Event(), after_tool_output)
        except Exception as exc:  # a bug in a hook or here must not end the conversation
            result = _error(call, f"{call.name} failed: {type(exc).__name__}: {exc}")
        return self._after(call, result)

    def _run(self, call: ToolCall, cancel: threading.Event, after_tool_output: bool) -> tuple[ToolCall, ToolResult]:
        """The call as the before hooks leave it (what the after hooks see) and its result."""
        tool = self.registry.get(call.name)
        if tool is None:
            available = ", ".join(sorted(self.registry.tools())) or "none"
            return call, _error(call, f"unknown tool {call.name!r}; available: {available}")

        for impl in _in_call_order(self.registry.plugin_manager.hook.before_tool_call):
            try:
                decision = _call_impl(impl, call=call, tool=tool, after_tool_output=after_tool_output)
            except Exception as exc:  # fail closed: a broken approval hook must not approve
                return call, _error(call, f"the {impl.plugin_name!r} plugin failed before the call: "
                                          f"{type(exc).__name__}: {exc}")
            if decision is None:
                continue
            if not isinstance(decision, Decision):
                return call, _error(call, f"the {impl.plugin_name!r} plugin returned "
                                          f"{type(decision).__name__}, not a Decision")
            if decision.denied:
                reason = f": {decision.reason}" if decision.reason else ""
                return call, ToolResult(call.id, call.name, f"Error: the user denied this call{reason}",
                                        is_error=True, denied=True)
            if decision.arguments is not None:
                if not isinstance(decision.arguments, dict):
                    return call, _error(call, f"the {impl.plugin_name!r} plugin gave arguments "
                                              "that are not a dict")
                call = dataclasses.replace(call, arguments=decision.arguments)

        try:
            content = self._invoke(tool, call, cancel)
        except _Abandoned as exc:
            return call, _error(call, str(exc))
        except ToolArgumentError as exc:
            return call, _error(call, f"invalid arguments for {call.name}: {exc}")
        except ToolExecutionError as exc:
            return call, _error(call, f"{call.name} failed: {exc}")
        if len(content) > self.max_result_chars:
            content = (content[: self.max_result_chars]
                       + f"\n[truncated: the result had {len(content)} characters; showed the first "
                         f"{self.max_result_chars}]")
        return call, ToolResult(call.id, call.name, content)

    def _invoke(self, tool, call: ToolCall, cancel: threading.Event) -> str:
        """The tool on a daemon thread of its own, waited for until it returns, the timeout passes
        or `cancel` is set. Either way out answers the call at once and sets the call's own
        cancel event, which stops a tool that opted in (a `cancel` parameter, an async tool, an
        MCP tool: see Tool). Python cannot stop a thread: any other tool runs on unseen, but the
        conversation goes on without it."""
        outcome: dict[str, Any] = {}
        # The call's own event, set on Esc and on the timeout alike (`cancel` is Esc only).
        stop = threading.Event()

        def target() -> None:
            try:
                outcome["content"] = tool.invoke(call.arguments, cancel=stop)
            except BaseException as exc:  # handed to the waiting thread, which raises it there
                outcome["error"] = exc

        worker = threading.Thread(target=target, name=f"tool {call.name}", daemon=True)
        worker.start()
        waited, step = 0.0, 0.05
        while worker.is_alive():
            if cancel.is_set():
                stop.set()
                raise _Abandoned(f"{call.name} was cancelled by the user before it finished")
            if waited >= self.timeout:
                stop.set()
                raise _Abandoned(f"{call.name} timed out after {self.timeout:g} s without returning")
            worker.join(step)
            waited += step
        if "error" in outcome:
            raise outcome["error"]
        return outcome["content"]

    def _after(self, call: ToolCall, result: ToolResult) -> ToolResult:
        for impl in _in_call_order(self.registry.plugin_manager.hook.after_tool_call):
            try:
                replaced = _call_impl(impl, call=call, result=result)
            except Exception as exc:  # fail closed: the hook may have been redacting the result
                return _error(call, f"the {impl.plugin_name!r} plugin failed after the call: "
                                    f"{type(exc).__name__}: {exc}")
            if replaced is None:
                continue
            if not isinstance(replaced, ToolResult):
                return _error(call, f"the {impl.plugin_name!r} plugin returned {type(replaced).__name__}, "
                                    "not a ToolResult")
            result = replaced
        return result


def _error(call: ToolCall, message: str) -> ToolResult:
    return ToolResult(call.id, call.name, f"Error: {message}", is_error=True)


def _in_call_order(hook_caller: Any) -> list:
    """The hook's implementations in the order pluggy would call them (last registered first,
    tryfirst/trylast respected). The runner calls them one at a time because a denial must stop
    the rest and changed arguments must reach the later ones; wrapper hooks are not run."""
    return [impl for impl in reversed(hook_caller.get_hookimpls()) if not (impl.wrapper or impl.hookwrapper)]


def _call_impl(impl: Any, **kwargs: Any) -> Any:
    # An implementation may accept a subset of the spec's arguments, as in pluggy itself.
    return impl.function(**{name: kwargs[name] for name in impl.argnames})


class _Abandoned(Exception):
    """The tool's call was answered without its result: it timed out or was cancelled."""
