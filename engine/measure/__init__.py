"""Measuring models: the side-by-side bench and llama.cpp-style perplexity."""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "chunk_scores": ".perplexity",
    "perplexity": ".perplexity",
})
