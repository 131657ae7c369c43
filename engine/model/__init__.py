"""The model: its config (ModelArgs), the plain decoder, RoPE maths, the KV cache, loaders from GGUF
and Hugging Face folders, CPU weight packing, and the device/dtype choice."""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ModelArgs": ".config",
    "RopeScaling": ".config",
    "Transformer": ".decoder",
    "plain_frequencies": ".rope",
    "rope_frequencies": ".rope",
    "KVCache": ".cache",
    "PromptCache": ".cache",
    "pick_device": ".device",
    "pick_dtype": ".device",
})
