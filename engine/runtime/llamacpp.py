"""The GGUF fast path: llama.cpp (through llama-cpp-python) behind the same Model interface.

Tokenizer, chat template, samplers, stop handling and result events are ours, exactly as on the
native backend; llama.cpp computes the logits. Its context is the KV cache: `llm.input_ids[:n_tokens]`
are the cached positions, and a new prompt reuses the longest common prefix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import ContextOverflowError, ModelFormatError
from ..formats.gguf import read_gguf
from ..model.cache import PromptCache, common_prefix
from .base import Model
from .grammar import Constraint, apply_bitmask
from .sampling import SamplingParams

N_BATCH = 512


class LlamaCppModel(Model):
    backend = "gguf"

    def __init__(
        self,
        path: Path,
        *,
        name: str | None = None,
        context_length: int | None = None,
        n_threads: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        # Validate with our reader first: a corrupt file gets our typed error, not a crash in C.
        with read_gguf(self.path) as gguf:
            self.metadata = gguf.metadata
        self._load_text_side(self.metadata)
        arch = self.metadata.get("general.architecture")
        trained = self.metadata.get(f"{arch}.context_length")
        if not isinstance(trained, int) or trained <= 0:
            raise ModelFormatError(f"{self.path.name}: GGUF metadata lacks '{arch}.context_length'")
        self.context_length = min(context_length or trained, trained)
        import llama_cpp

        try:
            # verbose=False keeps llama.cpp's own logging out of the user's terminal.
            self.llm = llama_cpp.Llama(
                model_path=str(self.path),
                n_ctx=self.context_length,
                n_batch=N_BATCH,
                n_threads=n_threads or os.cpu_count(),
                n_threads_batch=n_threads or os.cpu_count(),
                logits_all=False,
                verbose=verbose,
            )
        except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
            raise ModelFormatError(f"{self.path.name}: llama.cpp could not load it ({e})") from None
        self.n_vocab = self.llm.n_vocab()
        self.sampling_defaults = {}

    @property
    def cached_ids(self) -> list[int]:
        return list(self.llm.input_ids[: self.llm.n_tokens])

    def _last_logits(self) -> torch.Tensor:
        # A view of llama.cpp's logits buffer: valid until the next decode, so sample before it.
        pointer = self.llm._ctx.get_logits_ith(-1)
        return torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)))

    def prefill(self, prompt_ids: list[int]) -> int:
        """Bring the context to `prompt_ids`, reusing the cached prefix; returns tokens reused."""
        if len(prompt_ids) >= self.context_length:
            raise ContextOverflowError(f"{len(prompt_ids)} tokens do not fit the context window of {self.context_length}")
        reuse = common_prefix(self.cached_ids, prompt_ids)
        reuse = min(reuse, len(prompt_ids) - 1)  # decode at least one token to get fresh logits
        self.llm.n_tokens = reuse  # eval() drops the cache past n_tokens
        self.llm.eval(prompt_ids[reuse:])
        return reuse

    def _token_ids(self, prompt_ids: list[int], params: SamplingParams, cache: PromptCache | None,
                   constraint: Constraint | None = None) -> Iterator[int]:
        # llama.cpp's context is the cache for every caller: prefix reuse needs no session.
        reused = self.prefill(prompt_ids)
        if cache is not None:
            cache.reused = reused
        sampler, processors = params.sampler(), params.processors()
        history = list(prompt_ids)
        while True:
            logits = self._last_logits()
            for process in processors:
                logits = process(history, logits)
            mask = constraint.bitmask() if constraint is not None else None
            if mask is not None:  # the grammar (engine/runtime/grammar.py): disallowed tokens -> -inf
                logits = apply_bitmask(logits, mask)
            token = sampler(logits)
            if constraint is not None:
                constraint.advance(token)
            yield token
            history.append(token)
            if self.llm.n_tokens >= self.context_length:
                return  # the context window is full
            self.llm.eval([token])

    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        """All-position logits, asking llama.cpp for an output row at every token of each batch."""
        ids = self.encode_prompt(ids) if len(ids) else []
        out = torch.empty(len(ids), self.n_vocab, dtype=torch.float32)
        self.llm.n_tokens = 0
        self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        for start in range(0, len(ids), N_BATCH):
            chunk = ids[start : start + N_BATCH]
            self.llm._batch.set_batch(batch=chunk, n_past=start, logits_all=True)
            self.llm._ctx.decode(self.llm._batch)
            rows = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(len(chunk), self.n_vocab))
            out[start : start + len(chunk)] = torch.from_numpy(rows)
            self.llm.input_ids[start : start + len(chunk)] = chunk
            self.llm.n_tokens = start + len(chunk)
        return out
