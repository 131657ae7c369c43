"""The widgets' text goes through the engine's one escaping function (the CLIs use it too)."""

from engine.text import inert

__all__ = ["inert"]
