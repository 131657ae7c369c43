"""llama.cpp (through llama-cpp-python) as the independent reference implementation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

GGML_TYPE_F32 = 0


def open_llama(path: Path, n_ctx: int = 512, *, vocab_only: bool = False):
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=2,
        logits_all=not vocab_only,
        vocab_only=vocab_only,
        type_k=GGML_TYPE_F32,  # an F32 KV cache: the default F16 cache would add ~1e-3 of error
        type_v=GGML_TYPE_F32,
        verbose=False,
    )


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    """All-position logits [len(ids), vocab] from a fresh evaluation."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)
