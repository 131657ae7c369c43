"""The per-token work of the native backend, in one place beside the plain decoder.

`engine.model.decoder.Transformer` stays the readable model; `DecodeRunner` wraps one for one
device and dtype and owns what makes it fast: chunked prefill, the one-token decode step with its
reused input buffer, the RoPE tables, and on-device sampling whose token stays a device tensor
until the loop reads it (one host sync per token). Static KV buckets, torch.compile and CUDA
graphs belong here too (as gpt-fast's `decode_one_token` and vLLM's model runner), never in the
decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..model.cache import KVCache
from ..model.decoder import Transformer
from ..model.rope import RopeTables
from .sampling import LogitsProcessor, SamplingParams

PREFILL_CHUNK = 512  # tokens per prefill forward pass: bounds activation memory on long prompts


class TokenSampler:
    """One request's sampling: the logits processors (repetition penalty), then the device
    sampler (seeded once, so its draws continue across calls). Returns a 0-d int64 tensor on the
    logits' device, -1 for non-finite logits (`engine.runtime.sampling.token_id` reads it)."""

    def __init__(self, params: SamplingParams, n_tokens: int) -> None:
        self.n_tokens = n_tokens
        self.processors: list[LogitsProcessor] = params.processors()
        self.draw = params.device_sampler()

    def __call__(self, logits: torch.Tensor, history: Sequence[int]) -> torch.Tensor:
        """logits: (vocab,) or (T, vocab), the last row is used; history: the ids so far."""
        # Checkpoints often pad the embedding past the tokenizer (Qwen2.5: 151,936 rows for
        # 151,665 tokens); ids with no token are never sampled.
        next_logits = logits.reshape(-1, logits.shape[-1])[-1, : self.n_tokens].float()
        for process in self.processors:
            next_logits = process(history, next_logits)
        return self.draw(next_logits)


class DecodeRunner:
    """A Transformer on one device and dtype, run for inference.

    `prefill(ids, cache)` and `decode(token, cache)` continue from `cache.offset` and advance it;
    `forward(ids, cache, last_only)` is one pass over any number of tokens. Logits come back on
    the device in the run dtype: (T, vocab), or (1, vocab) with `last_only`.
    """

    def __init__(self, model: Transformer, *, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.rope = RopeTables(model.args, model.inv_freq)
        # The decode step's input, (1, 1) int64, written in place: a sampled token goes in
        # without leaving the device, and a captured graph would read it from a fixed address.
        self._token = torch.zeros(1, 1, dtype=torch.long, device=device)

    @torch.inference_mode()
    def forward(self, ids: Sequence[int] | torch.Tensor, cache: KVCache | None, *, last_only: bool) -> torch.Tensor:
        tokens = torch.as_tensor(ids, dtype=torch.long, device=self.device).reshape(1, -1)  # (1, T)
        return self.model(tokens, cache, last_only=last_only, rope=self.rope)[0]  # (T or 1, vocab)

    @torch.inference_mode()
    def prefill(self, ids: Sequence[int], cache: KVCache) -> torch.Tensor:
        """Feed `ids` in chunks of PREFILL_CHUNK; the last position's logits, (1, vocab)."""
        if not len(ids):
            raise ValueError("prefill needs at least one token")
        for i in range(0, len(ids), PREFILL_CHUNK):
            logits = self.forward(ids[i : i + PREFILL_CHUNK], cache, last_only=True)
        return logits

    @torch.inference_mode()
    def decode(self, token: int | torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token (a host int, or a sampler's 0-d device tensor, copied without a sync); its
        logits, (1, vocab)."""
        if isinstance(token, torch.Tensor):
            self._token.copy_(token.reshape(1, 1))
        else:
            self._token.fill_(token)
        return self.model(self._token, cache, last_only=True, rope=self.rope)[0]

    @torch.inference_mode()
    def logits(self, ids: Sequence[int], cache: KVCache) -> torch.Tensor:
        """Every position's logits, prefilled in chunks: (len(ids), vocab) float32 on the CPU."""
        out = [self.forward(ids[i : i + PREFILL_CHUNK], cache, last_only=False) for i in range(0, len(ids), PREFILL_CHUNK)]
        return torch.cat(out).float().cpu()

    def sampler(self, params: SamplingParams, n_tokens: int) -> TokenSampler:
        """The request's sampler over the first `n_tokens` logits (the tokenizer's ids)."""
        return TokenSampler(params, n_tokens)
