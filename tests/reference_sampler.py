"""The host sampler as it was before the on-device samplers (engine/runtime/sampling.py at commit
5caf726), kept verbatim as the reference they must match token for token: every step ends in a
`.item()` here, the device samplers return a tensor instead. Not used by the engine."""

from __future__ import annotations

import math
import secrets

import torch

from engine.errors import NumericalError
from engine.runtime.sampling import _as_vector, _validate_sampling

_NON_FINITE = "non-finite logits"


def _check_max(max_logit: torch.Tensor) -> None:
    if not math.isfinite(max_logit.item()):
        raise NumericalError(_NON_FINITE)


def reference_sampler(
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    seed: int | None = None,
) :
    """A callable that picks one token id from 1-D logits `[vocab]` (on any device).

    `temperature == 0` is greedy (argmax; the other filters cannot change the argmax). Otherwise
    the candidates are cut by top-k, then top-p, then min-p, the survivors are scaled by
    1/temperature and one token is drawn from a `torch.Generator` seeded with `seed` (a fresh
    random seed when None): the same seed and the same logits give the same tokens.
    Raises NumericalError on NaN or +Inf logits, or when every logit is -Inf.
    """
    _validate_sampling(temperature, top_p, top_k, min_p)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be an integer >= 0 or None, got {seed!r}")

    import torch

    if temperature == 0:

        def greedy(logits: torch.Tensor) -> int:
            best_logit, best = _as_vector(logits).max(dim=-1)
            _check_max(best_logit)
            return int(best.item())

        return greedy

    seed = secrets.randbits(63) if seed is None else seed
    generators: dict[torch.device, torch.Generator] = {}  # one per device, all seeded alike
    log_min_p = math.log(min_p) if min_p > 0 else None

    def draw(candidates: torch.Tensor) -> int:
        """One index into `candidates` (logits, -Inf where removed), after temperature.

        Inverse-CDF sampling (a cumsum and a binary search) costs a fraction of
        `torch.multinomial` on a full vocabulary; tokens of probability 0 are never chosen.
        """
        generator = generators.get(candidates.device)
        if generator is None:
            generator = generators[candidates.device] = torch.Generator(candidates.device)
            generator.manual_seed(seed)
        cdf = torch.cumsum(torch.softmax(candidates / temperature, dim=-1), dim=-1)
        u = torch.rand((), generator=generator, device=cdf.device) * cdf[-1]
        index = int(torch.searchsorted(cdf, u.reshape(1), right=True).item())
        if index >= cdf.numel():  # u rounded up to the total: take the last possible token
            index = int(torch.searchsorted(cdf, cdf[-1:]).item())
        return index

    def nucleus_candidates(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, token ids, probabilities over the whole vocabulary) of the most probable
        tokens, sorted descending, enough of them to hold `top_p` of the mass.

        A full sort of a 150k vocabulary costs ~10 ms on a CPU, but a peaked distribution
        reaches top_p within a few dozen tokens: try top-k first and sort only when it is flat.
        """
        probs = torch.softmax(logits, dim=-1)
        for k in (64, 1024):
            if k >= logits.numel() // 4:
                break
            top_probs, indices = torch.topk(probs, k)
            if top_probs.sum().item() >= top_p:
                return logits[indices], indices, top_probs
        top_probs, indices = torch.sort(probs, descending=True)
        return logits[indices], indices, top_probs

    def sample(logits: torch.Tensor) -> int:
        logits = _as_vector(logits).float()
        max_logit = logits.max()
        _check_max(max_logit)

        probs = None
        if top_k > 0 and top_k < logits.numel():
            # (k,) sorted descending: later filters work on k values, never the whole vocab
            values, indices = torch.topk(logits, top_k)
        elif top_p < 1:
            values, indices, probs = nucleus_candidates(logits)
        else:
            values, indices = logits, None

        if top_p < 1:  # `values` is sorted descending here
            if probs is None:  # after top-k, top-p sees the k survivors renormalised
                probs = torch.softmax(values, dim=-1)
            mass_before = torch.cumsum(probs, dim=-1) - probs
            # keep the smallest prefix whose mass reaches top_p (the first token always stays)
            values = values.masked_fill(mass_before >= top_p, -math.inf)
        if log_min_p is not None:
            # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
            values = values.masked_fill(values < max_logit + log_min_p, -math.inf)

        choice = draw(values)
        return choice if indices is None else int(indices[choice].item())

    return sample
