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

from ._lazy import lazy_exports
from .errors import (
    ContextOverflowError,
    EngineError,
    GGUFError,
    ModelFormatError,
    ModelNotFoundError,
    NumericalError,
    OutOfMemoryError,
    RegistryError,
    RemoteError,
    RequestError,
    TemplateError,
)
from .hub.spec import BACKENDS
from .results import Event, GenerationResult, ReasoningDelta, TextDelta, TokenProb

# What the chat app and quant use, by name, without importing the stage (or torch) until asked.
__getattr__, __dir__ = lazy_exports(__name__, {
    "Model": ".runtime.base",
    "SamplingParams": ".runtime.sampling",
    "ChatSession": ".runtime.session",
    "ToolCall": ".text.toolcalls",
    "Reasoning": ".text.reasoning",
    "ParsedReply": ".text.toolcalls",
    "parse_tool_calls": ".text.toolcalls",
    "ModelSpec": ".hub.spec",
    "Registry": ".hub.registry",
    "load_registry": ".hub.registry",
    "find_local": ".hub.registry",
    "pull": ".hub.registry",
})

if TYPE_CHECKING:
    from .runtime.base import Model

__all__ = [
    "load",
    "Model",
    "Event",
    "TextDelta",
    "ReasoningDelta",
    "Reasoning",
    "GenerationResult",
    "TokenProb",
    "EngineError",
    "ModelNotFoundError",
    "ModelFormatError",
    "GGUFError",
    "RegistryError",
    "RemoteError",
    "RequestError",
    "TemplateError",
    "ContextOverflowError",
    "NumericalError",
    "OutOfMemoryError",
]



def load(
    model: str | os.PathLike | None = None,
    *,
    backend: str = "auto",
    device: str | None = None,
    dtype: str | None = None,
    context_length: int | None = None,
    verbose: bool = False,
    threads: int | None = None,
    decode: str = "auto",
) -> Model:
    """Load a models.toml name (None: the default model; a `source = "remote"` entry connects to
    its OpenAI-compatible server and ignores the local-only arguments), a path to a .gguf file, a Hugging Face
    checkpoint folder (config.json + safetensors) or a folder written by `quant`.

    backend: "native" (our PyTorch engine), "gguf" (llama.cpp fast path) or "auto": the
    models.toml entry's choice if it names one, else native on a GPU (CUDA/MPS) and the GGUF
    fast path on CPU, where llama.cpp's quantized kernels decode several times faster than
    dequantized weights.
    device: "auto"/None picks CUDA, then MPS, then CPU (native backend). dtype: "auto"/None,
    "float32", "bfloat16" or "float16" (native backend).
    verbose: let llama.cpp print its own logs (gguf backend); they are kept quiet otherwise.
    threads: CPU threads for llama.cpp (gguf backend; default: $CHATAPP_THREADS, else the
    physical cores, less one while the machine is busy). The native backend follows
    torch.set_num_threads.
    decode: native backend, "auto", "static" (fixed-shape KV buckets, CUDA graphs on CUDA) or
    "plain" (the decoder over a growing cache); see `NativeModel.decode_path`.

    The model's `sampling_defaults` are its recommended sampling: a checkpoint folder's
    generation_config.json, overlaid by the models.toml entry's [models.NAME.sampling] table.
    """
    from .hub.registry import resolve
    from .model.device import check_dtype_name

    check_dtype_name(dtype)
    if backend not in BACKENDS:
        raise RequestError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if context_length is not None and (isinstance(context_length, bool) or not isinstance(context_length, int)
                                       or context_length < 1):
        raise RequestError(f"context_length must be an integer >= 1 (None: the model's own), got {context_length!r}")
    spec, path = resolve(model, allow_remote=True)
    if spec is not None and spec.is_remote:
        from .runtime.remote import RemoteModel

        remote = RemoteModel(spec.base_url, spec.model, name=spec.name, api_key_env=spec.api_key_env)
        remote.sampling_defaults = dict(spec.sampling)
        return remote
    from .model.memory import allocation_errors

    with allocation_errors(spec.name if spec is not None else path.name):
        loaded = _load(spec, path, backend=backend, device=device, dtype=dtype, context_length=context_length,
                       verbose=verbose, threads=threads)
    if getattr(loaded, "backend", None) == "native":
        loaded.decode_path = decode
    elif decode != "auto":
        raise RequestError(f"decode={decode!r} is a native-backend setting; {loaded.backend} decodes its own way")
    if spec is not None:  # models.toml wins over what the checkpoint's own files recommend
        loaded.sampling_defaults = {**loaded.sampling_defaults, **spec.sampling}
    return loaded


def _load(spec, path, *, backend, device, dtype, context_length, verbose, threads) -> Model:
    name = spec.name if spec is not None else path.name
    if path.is_dir():
        return _load_folder(path, name=name, backend=backend, device=device, dtype=dtype, context_length=context_length)
    if backend == "auto":
        backend = spec.backend if spec is not None and spec.backend != "auto" else _auto_backend(device)
    if backend == "gguf":
        from .runtime.llamacpp import LlamaCppModel

        return LlamaCppModel(path, name=name, context_length=context_length, verbose=verbose, n_threads=threads)
    from .runtime.native import NativeModel

    return NativeModel(path, name=name, device=device, dtype=dtype, context_length=context_length)


def _load_folder(path, *, name, backend, device, dtype, context_length) -> Model:
    """A checkpoint folder. A Hugging Face checkpoint (config.json) runs on the native backend;
    a folder with a marker file goes to the loader it names (entry points in the group
    "engine.checkpoint_loaders"; `quant` registers its quantized format there)."""
    from importlib.metadata import entry_points

    from .errors import ModelFormatError

    marker = path / "quantization.json"
    if not marker.is_file() and (path / "config.json").is_file():
        if backend == "gguf":
            raise RequestError(f"{path} is a Hugging Face checkpoint, which the native backend runs; use "
                             "backend='native' or 'auto' (llama.cpp needs it converted to GGUF first)")
        from .runtime.native import NativeModel

        return NativeModel.from_hf_folder(path, name=name, device=device, dtype=dtype, context_length=context_length)
    if not marker.is_file():
        raise ModelFormatError(f"{path}: not a model folder this engine can read (no config.json or "
                               "quantization.json); give a .gguf file, a Hugging Face checkpoint folder "
                               "or a folder written by `quant`")
    if backend == "gguf":
        raise RequestError(f"{path} is a quantized checkpoint for the native backend; use backend='native' or 'auto' "
                         "(or write a GGUF file with `quant ... --format gguf`)")
    loaders = {ep.name: ep for ep in entry_points(group="engine.checkpoint_loaders")}
    if "chatapp-quantized" not in loaders:
        raise ModelFormatError(f"{path}: a quantized checkpoint, but the `quant` package's loader is not installed")
    load_checkpoint = loaders["chatapp-quantized"].load()
    return load_checkpoint(path, name=name, device=device, dtype=dtype, context_length=context_length)


def _auto_backend(device: str | None) -> str:
    from .model.device import pick_device

    return "native" if pick_device(device).type in ("cuda", "mps") else "gguf"
