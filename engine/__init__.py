"""Our LLaMA-style inference engine.

    import engine
    m = engine.load("smollm2-135m", backend="native", device="cpu", dtype="float32")
    m.tokenizer.encode("some text")
    m.logits(ids)                           # float32 [len(ids), vocab]
    for event in m.chat(messages, max_tokens=200, temperature=0.7): ...

Importing this package is cheap: torch and llama.cpp load only when a model does.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import (
    ContextOverflowError,
    EngineError,
    GGUFError,
    ModelFormatError,
    ModelNotFoundError,
    NumericalError,
    RegistryError,
    TemplateError,
)
from .results import Event, GenerationResult, TextDelta

if TYPE_CHECKING:
    from .backends.base import Model

__all__ = [
    "load",
    "Model",
    "Event",
    "TextDelta",
    "GenerationResult",
    "EngineError",
    "ModelNotFoundError",
    "ModelFormatError",
    "GGUFError",
    "RegistryError",
    "TemplateError",
    "ContextOverflowError",
    "NumericalError",
]

BACKENDS = ("auto", "native", "gguf")


def load(
    model: str | os.PathLike | None = None,
    *,
    backend: str = "auto",
    device: str | None = None,
    dtype: str | None = None,
    context_length: int | None = None,
) -> Model:
    """Load a models.toml name (None: the default model) or a path to a .gguf file.

    backend: "native" (our PyTorch engine), "gguf" (llama.cpp fast path) or "auto"
    (the models.toml entry's choice, else native).
    device: "auto"/None picks CUDA, then MPS, then CPU. dtype: "auto"/None, "float32",
    "bfloat16" or "float16".
    """
    from .registry import resolve

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    spec, path = resolve(model)
    if backend == "auto":
        backend = spec.backend if spec is not None and spec.backend != "auto" else "native"
    name = spec.name if spec is not None else path.name
    if backend == "gguf":
        from .backends.llamacpp import LlamaCppModel

        return LlamaCppModel(path, name=name, context_length=context_length)
    from .backends.native import NativeModel

    return NativeModel(path, name=name, device=device, dtype=dtype, context_length=context_length)
