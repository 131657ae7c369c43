"""Lazy exports (PEP 562): a package names what it offers without importing it until asked, so
`import engine` stays cheap (no torch) while `engine.SamplingParams` or `engine.runtime.NativeModel`
still work. Each access looks the name up again, so a test that patches the defining module is
seen through the package too."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`exports`: name -> the module (relative to `package`) that defines it. Returns the
    package's `__getattr__` and `__dir__`."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(exports[name], package), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
