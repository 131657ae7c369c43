"""Collect the tools of every plugin: the built-ins, installed packages and the user's tools.py.

Plugins come from three places, in this order (the first to register a name keeps it, so no
plugin can replace a built-in tool):
  1. chatapp.tools.builtin and the FileAccess object (the built-in tools),
  2. installed packages with a `chatapp.tools` entry point,
  3. `tools.py` in the user config folder, imported by path.
A plugin that fails to load or to register its tools is skipped with a line in `load_errors`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from typing import Any

import platformdirs
import pluggy

from . import builtin, hookspecs
from .builtin import FileAccess
from .tool import Tool, ToolError

__all__ = ["ToolRegistry", "default_user_tools_file"]

ENTRY_POINT_GROUP = "chatapp.tools"
_DEFAULT: Any = object()


def default_user_tools_file() -> Path:
    return Path(platformdirs.user_config_dir("chatapp")) / "tools.py"


class ToolRegistry:
    def __init__(
        self,
        file_access: FileAccess | None = None,
        *,
        user_tools_file: Path | None = _DEFAULT,
        entry_points: bool = True,
    ):
        self.file_access = file_access if file_access is not None else FileAccess()
        self._plugin_errors: list[str] = []  # plugins that failed to load
        self._tool_errors: list[str] = []  # tools that failed to register (recomputed by _collect)
        self.plugin_manager = pluggy.PluginManager("chatapp")
        self.plugin_manager.add_hookspecs(hookspecs)
        self.plugin_manager.register(builtin, name="builtin")
        self.plugin_manager.register(self.file_access, name="file_access")
        if entry_points:
            try:
                self.plugin_manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
            except Exception as exc:
                self._plugin_errors.append(f"installed tool plugins ({ENTRY_POINT_GROUP!r} entry points): "
                                        f"{type(exc).__name__}: {exc}")
        if user_tools_file is _DEFAULT:
            user_tools_file = default_user_tools_file()
        if user_tools_file is not None and Path(user_tools_file).is_file():
            self._load_user_tools(Path(user_tools_file))
        self._tools: dict[str, Tool] = {}
        self._collect()

    @property
    def load_errors(self) -> list[str]:
        """One line per plugin or tool that could not be loaded, for the app to show."""
        return self._plugin_errors + self._tool_errors

    def tools(self) -> dict[str, Tool]:
        return dict(self._tools)

    def schemas(self) -> list[dict]:
        """The OpenAI-style `tools` list for the chat template."""
        return [tool.schema() for tool in self._tools.values()]

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def register_plugin(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object or module (its hooks run from now on; its tools are added).

        An object is named after its class unless that name is taken, so that error messages
        say "the 'ApprovalPolicy' plugin" rather than a number."""
        if name is None and not hasattr(plugin, "__name__"):
            class_name = type(plugin).__name__
            if self.plugin_manager.get_plugin(class_name) is None:
                name = class_name
        self.plugin_manager.register(plugin, name=name)
        self._collect()

    def _load_user_tools(self, path: Path) -> None:
        module_name = "chatapp_user_tools"
        try:
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise ImportError("not a Python file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # dataclasses and pickling look modules up here
            spec.loader.exec_module(module)
            self.plugin_manager.register(module, name=f"user:{path}")
        except (Exception, SystemExit) as exc:
            sys.modules.pop(module_name, None)
            self._plugin_errors.append(f"{path}: {type(exc).__name__}: {exc}")

    def _collect(self) -> None:
        tools: dict[str, Tool] = {}
        errors: list[str] = []
        # Registration order, so that built-ins come first and keep their names.
        for impl in self.plugin_manager.hook.register_tools.get_hookimpls():
            plugin = impl.plugin_name

            def register(
                fn_or_tool: Any, safe: bool = False, name: str | None = None, side_effects: bool | None = None,
                plugin: str = plugin,
            ) -> None:
                try:
                    tool = _as_tool(fn_or_tool, safe=safe, name=name, side_effects=side_effects)
                except ToolError as exc:
                    errors.append(f"plugin {plugin!r}: {exc}")
                    return
                if tool.name in tools:
                    errors.append(f"plugin {plugin!r}: a tool named {tool.name!r} is already registered; "
                                  "this one is ignored")
                    return
                tools[tool.name] = tool

            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except Exception as exc:
                errors.append(f"plugin {plugin!r}: register_tools failed: {type(exc).__name__}: {exc}")
        self._tools = tools
        self._tool_errors = errors


def _as_tool(fn_or_tool: Any, *, safe: bool, name: str | None, side_effects: bool | None) -> Tool:
    # side_effects=None keeps what the Tool says (a function: it has side effects, to be safe).
    if isinstance(fn_or_tool, Tool):
        if safe and not fn_or_tool.safe:
            fn_or_tool = dataclasses.replace(fn_or_tool, safe=True)
        if side_effects is not None and side_effects != fn_or_tool.side_effects:
            fn_or_tool = dataclasses.replace(fn_or_tool, side_effects=side_effects)
        return fn_or_tool
    if not callable(fn_or_tool):
        raise ToolError(f"register() takes a function or a Tool, not {type(fn_or_tool).__name__}")
    return Tool.from_function(fn_or_tool, name=name, safe=safe,
                              side_effects=True if side_effects is None else side_effects)
