"""Model file formats, read and validated: GGUF (with GGML quant types) and Hugging Face folders."""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "read_gguf": ".gguf",
    "generation_defaults": ".hf_files",
})
