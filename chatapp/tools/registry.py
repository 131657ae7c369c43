"""Collect the tools of every plugin: the built-ins, installed packages and the user's tools.py.

Plugins come from three places, in this order (the first to register a name keeps it, so no
plugin can replace a built-in tool):
  1. chatapp.tools.builtin and the FileAccess object (the built-in tools),
  2. installed packages with a `chatapp.tools` entry point,
  3. `tools.py` in the user config folder, imported by path.
A plugin that fails to load or to register its tools is skipped with a line in `load_errors`.
`plugins=False` (chatapp --no-plugins, or CHATAPP_NO_PLUGINS=1) loads neither 2 nor 3, and
`loaded_plugins()` says what was loaded, from where, and what it added (the help screen shows it).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
import pluggy

from . import builtin, hookspecs
from .builtin import FileAccess
from .tool import Tool, ToolError

__all__ = ["ToolRegistry", "PluginInfo", "default_user_tools_file", "plugins_off_by_env", "NO_PLUGINS_ENV"]

ENTRY_POINT_GROUP = "chatapp.tools"
NO_PLUGINS_ENV = "CHATAPP_NO_PLUGINS"
_DEFAULT: Any = object()
_BUILT_IN = "built-in"


def default_user_tools_file() -> Path:
    return Path(platformdirs.user_config_dir("chatapp")) / "tools.py"


def plugins_off_by_env() -> bool:
    """CHATAPP_NO_PLUGINS set to 1 (or true/yes/on) turns installed plugins and tools.py off."""
    return os.environ.get(NO_PLUGINS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin, as the help screen lists it."""

    name: str
    origin: str  # "built-in", the user's tools.py path, or the package and module file
    tools: tuple[str, ...]  # the tools it registered (the ones kept: a taken name is not)
    hooks: tuple[str, ...]  # the hooks it implements

    @property
    def builtin(self) -> bool:
        return self.origin == _BUILT_IN


class ToolRegistry:
    def __init__(
        self,
        file_access: FileAccess | None = None,
        *,
        user_tools_file: Path | None = _DEFAULT,
        entry_points: bool = True,
        plugins: bool | None = None,
    ):
        """plugins=False loads no installed plugin and no tools.py, whatever the other arguments
        say; None (the default) means True unless CHATAPP_NO_PLUGINS=1 is set."""
        self.plugins_enabled = not plugins_off_by_env() if plugins is None else plugins
        self.file_access = file_access if file_access is not None else FileAccess()
        self._plugin_errors: list[str] = []  # plugins that failed to load
        self._tool_errors: list[str] = []  # tools that failed to register (recomputed by _collect)
        self._origins: dict[str, str] = {}  # plugin name -> where it came from, for loaded_plugins
        self._tools_by_plugin: dict[str, list[str]] = {}  # recomputed by _collect
        self.plugin_manager = pluggy.PluginManager("chatapp")
        self.plugin_manager.add_hookspecs(hookspecs)
        self.plugin_manager.register(builtin, name="builtin")
        self.plugin_manager.register(self.file_access, name="file_access")
        if not self.plugins_enabled:
            entry_points, user_tools_file = False, None
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

    def loaded_plugins(self) -> list[PluginInfo]:
        """Every registered plugin in registration order: what it is, where it came from, and
        the tools and hooks it added."""
        infos = []
        distributions = {id(plugin): dist for plugin, dist in self.plugin_manager.list_plugin_distinfo()}
        for name, plugin in self.plugin_manager.list_name_plugin():
            if plugin is None:  # blocked
                continue
            hooks = tuple(sorted(caller.name for caller in self.plugin_manager.get_hookcallers(plugin) or ()))
            shown = Path(name.removeprefix("user:")).name if name.startswith("user:") else name
            infos.append(PluginInfo(shown, self._origin(name, plugin, distributions.get(id(plugin))),
                                    tuple(self._tools_by_plugin.get(name, ())), hooks))
        return infos

    def _origin(self, name: str, plugin: object, dist: Any) -> str:
        if name in self._origins:
            return self._origins[name]
        module_name = getattr(plugin, "__name__", None) or type(plugin).__module__
        module = sys.modules.get(module_name)
        if module_name == "chatapp" or module_name.startswith("chatapp."):
            return _BUILT_IN
        where = getattr(module, "__file__", None) or module_name
        if dist is not None:
            return f"package {dist.project_name} {dist.version}: {where}"
        return str(where)

    def schemas(self) -> list[dict]:
        """The OpenAI-style `tools` list for the chat template."""
        return [tool.schema() for tool in self._tools.values()]

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def prepare(self) -> None:
        """Run the plugins' prepare_tools hooks (they may block: call it off the UI thread) and
        collect the tools again if one says its tools changed. A failing hook is a load error."""
        changed = False
        for impl in self.plugin_manager.hook.prepare_tools.get_hookimpls():
            try:
                changed = bool(impl.function()) or changed
            except Exception as exc:
                self._plugin_errors.append(f"plugin {impl.plugin_name!r}: prepare_tools failed: "
                                           f"{type(exc).__name__}: {exc}")
        if changed:
            self._collect()

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
            self._origins[f"user:{path}"] = str(path)
        except (Exception, SystemExit) as exc:
            sys.modules.pop(module_name, None)
            self._plugin_errors.append(f"{path}: {type(exc).__name__}: {exc}")

    def _collect(self) -> None:
        tools: dict[str, Tool] = {}
        errors: list[str] = []
        by_plugin: dict[str, list[str]] = {}
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
                by_plugin.setdefault(plugin, []).append(tool.name)

            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except Exception as exc:
                errors.append(f"plugin {plugin!r}: register_tools failed: {type(exc).__name__}: {exc}")
        self._tools = tools
        self._tool_errors = errors
        self._tools_by_plugin = by_plugin


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
