"""Perplexity over a token stream, scored the way llama.cpp's perplexity tool does.

The text is cut into chunks of `ctx` tokens; each chunk is evaluated on its own (with BOS in
front if the model adds one), and only the second half of each chunk is scored, so every scored
token has at least ctx/2 tokens of context.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import RequestError


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_nll: float
    scored_tokens: int
    chunks: int
    ctx: int


def chunk_scores(logits: torch.Tensor, chunk: Sequence[int], first: int) -> torch.Tensor:
    """Negative log-likelihoods of chunk[first+1:] given logits at positions first..end-1."""
    logprobs = torch.log_softmax(logits[first:-1].float(), dim=-1)
    targets = torch.tensor(chunk[first + 1 :], dtype=torch.long)
    return -logprobs.gather(1, targets[:, None])[:, 0]


def perplexity(
    logits_fn: Callable[[list[int]], torch.Tensor],
    ids: Sequence[int],
    *,
    ctx: int = 512,
    bos_id: int | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """logits_fn(ids) -> [len(ids), vocab] logits; ids: the whole tokenized text."""
    if ctx < 16:
        raise RequestError(f"--ctx must be at least 16 tokens, got {ctx}")
    if len(ids) < 2 * 16:
        raise RequestError(f"the text is only {len(ids)} tokens; perplexity needs at least 32")
    ctx = min(ctx, len(ids))
    n_chunks = len(ids) // ctx
    first = ctx // 2
    nll_sum, count = 0.0, 0
    for c in range(n_chunks):
        chunk = list(ids[c * ctx : (c + 1) * ctx])
        if bos_id is not None:
            chunk[0] = bos_id
        nll = chunk_scores(logits_fn(chunk), chunk, first)
        nll_sum += float(nll.double().sum())
        count += nll.numel()
        if on_chunk is not None:
            on_chunk(c + 1, n_chunks)
    mean = nll_sum / count
    return PerplexityResult(perplexity=math.exp(mean), mean_nll=mean, scored_tokens=count, chunks=n_chunks, ctx=ctx)
