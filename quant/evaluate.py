"""`quant --eval FILE`: size, perplexity, KL divergence, top-1 agreement and decode speed, side by side.

Every model is scored on the same chunks of the same text: perplexity the way llama.cpp's tool
does it (second half of each `ctx`-token chunk), mean KL divergence and same-top-token rate at
every position against the float32 model, which is the closest run we have to the source
weights. Decode speed is greedy generation from the same prompt, best of `repeats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.measure import chunk_scores


@dataclass
class EvalRow:
    label: str
    size_bytes: int | None
    perplexity: float
    mean_kl: float | None
    top1: float | None
    decode_tokens_per_second: float


def _chunks(ids: list[int], ctx: int) -> list[list[int]]:
    n = max(len(ids) // ctx, 1)
    return [ids[i * ctx : (i + 1) * ctx] for i in range(n)]


def scored_tokens(ids: list[int], ctx: int) -> int:
    """How many tokens the perplexity counts: each chunk's second half, less its last position."""
    return sum(len(c) - len(c) // 2 - 1 for c in _chunks(ids, min(ctx, len(ids))))


def score(model, chunks: list[list[int]], reference: list[torch.Tensor] | None) -> tuple[float, float | None, float | None, list[torch.Tensor]]:
    """(perplexity, mean KL vs reference, top-1 agreement, this model's log-probs per chunk)."""
    nll, kls, same, logprobs = [], [], [], []
    for i, chunk in enumerate(chunks):
        logits = model.logits(chunk)  # (T, vocab) float32
        nll.append(chunk_scores(logits, chunk, len(chunk) // 2))
        lp = torch.log_softmax(logits.float(), dim=-1)
        logprobs.append(lp)
        if reference is not None:
            ref = reference[i]
            kls.append((ref.exp() * (ref - lp)).sum(-1))
            same.append((ref.argmax(-1) == lp.argmax(-1)).float())
    ppl = math.exp(float(torch.cat(nll).mean()))
    if reference is None:
        return ppl, None, None, logprobs
    return ppl, float(torch.cat(kls).mean()), float(torch.cat(same).mean()), logprobs


def decode_speed(model, prompt: list[int], tokens: int, repeats: int = 2) -> float:
    best = 0.0
    for _ in range(repeats):
        for event in model.generate(prompt, max_tokens=tokens, temperature=0):
            result = event
        best = max(best, result.tokens_per_second or 0.0)
    return best


def evaluate(models: list[tuple[str, object, int | None]], ids: list[int], *, ctx: int = 256, gen_tokens: int = 64,
             progress=None) -> list[EvalRow]:
    """models: (label, loaded model, size in bytes); the first is the reference (float32)."""
    chunks = _chunks(ids, min(ctx, len(ids)))
    prompt = ids[: min(64, len(ids))]
    rows, reference = [], None
    for label, model, size in models:
        ppl, kl, top1, logprobs = score(model, chunks, reference)
        if reference is None:
            reference = logprobs
        rows.append(EvalRow(label, size, ppl, kl, top1, decode_speed(model, prompt, gen_tokens)))
        if progress is not None:
            progress(label)
    return rows


def format_table(rows: list[EvalRow], *, scored_tokens: int, ctx: int) -> str:
    base = rows[0].perplexity
    head = f"{'model':<34}{'size MB':>9}{'perplexity':>12}{'vs float':>10}{'mean KL':>10}{'same top-1':>12}{'decode tok/s':>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        size = f"{r.size_bytes / 1e6:.1f}" if r.size_bytes else "-"
        delta = "-" if r is rows[0] else f"{(r.perplexity / base - 1) * 100:+.2f}%"
        kl = "-" if r.mean_kl is None else f"{r.mean_kl:.4f}"
        top1 = "-" if r.top1 is None else f"{r.top1 * 100:.1f}%"
        lines.append(f"{r.label:<34}{size:>9}{r.perplexity:>12.3f}{delta:>10}{kl:>10}{top1:>12}{r.decode_tokens_per_second:>14.1f}")
    lines.append(f"perplexity over {scored_tokens} scored tokens in chunks of {ctx}; KL and top-1 against the float32 model at every position")
    return "\n".join(lines)
