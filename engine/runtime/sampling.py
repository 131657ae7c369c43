"""Token samplers and logits processors, built once per request (mlx-lm's `sample_utils` shape).

`make_sampler(...)` validates its arguments and returns a closure `sampler(logits) -> token id`
that is called once per generated token; `make_logits_processors(...)` returns a list of
`processor(token_ids, logits) -> logits` applied before the sampler. `SamplingParams` holds the
defaults the CLIs and the chat app share.

Filter order (the same as llama.cpp's default chain `penalties -> top-k -> top-p -> min-p ->
temperature -> dist`): the repetition penalty runs first as a logits processor, then top-k,
top-p (nucleus) and min-p cut the candidate set at temperature 1, and only then is temperature
applied to the survivors before the multinomial draw. Filtering before temperature means the
candidate set does not depend on the temperature; temperature only reshapes the distribution
over it. Like llama.cpp, top-p is measured on the distribution renormalised over what top-k
left, and min-p is relative to the most probable token (a ratio, unaffected by renormalising).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import NumericalError

if TYPE_CHECKING:  # torch is imported lazily: `chatapp --help` must not pay for it
    import torch

Sampler = Callable[["torch.Tensor"], int]
DeviceSampler = Callable[["torch.Tensor"], "torch.Tensor"]  # logits -> 0-d int64 token on their device
LogitsProcessor = Callable[[Sequence[int], "torch.Tensor"], "torch.Tensor"]

_NON_FINITE = (
    "the model produced non-finite logits (NaN/Inf) — float16 overflow? "
    "try --dtype bfloat16 or float32"
)


def _validate_sampling(temperature: float, top_p: float, top_k: int, min_p: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (1 disables nucleus sampling), got {top_p!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {top_k!r}")
    if not (isinstance(min_p, (int, float)) and 0 <= min_p < 1):
        raise ValueError(f"min_p must be in [0, 1) (0 disables it), got {min_p!r}")


# What a model may recommend (models.toml `[models.NAME.sampling]`, generation_config.json):
# how to sample, never how long to answer or when to stop.
MODEL_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def check_model_defaults(values: Mapping[str, Any]) -> dict[str, float | int]:
    """A model's recommended sampling settings, validated one key at a time; ValueError names
    the key (an unknown one, a bool, a value SamplingParams would refuse)."""
    unknown = sorted(set(values) - set(MODEL_DEFAULT_KEYS))
    if unknown:
        raise ValueError(f"unknown sampling key(s) {unknown} (allowed: {', '.join(MODEL_DEFAULT_KEYS)})")
    checked = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a number, got {value!r}")
        SamplingParams(**{key: value})  # the same rules as everywhere else; the message names the key
        checked[key] = value
    return checked


def _as_vector(logits: torch.Tensor) -> torch.Tensor:
    """1-D float logits `[vocab]`; a single-row `[1, vocab]` batch is accepted too."""
    if logits.dim() == 2 and logits.shape[0] == 1:
        logits = logits[0]
    if logits.dim() != 1 or logits.numel() == 0:
        raise ValueError(f"expected 1-D logits of shape [vocab], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"expected floating-point logits, got {logits.dtype}")
    return logits


def _checked(token: torch.Tensor, max_logit: torch.Tensor) -> torch.Tensor:
    """`token`, or -1 where `max_logit` is not finite: `max` propagates NaN and is +Inf if any
    logit is, -Inf if all are masked, so one comparison checks them all without a host sync.
    The caller turns -1 into NumericalError when it reads the token (`token_id`)."""
    import torch

    return torch.where(torch.isfinite(max_logit), token, torch.full_like(token, -1))


def token_id(token: torch.Tensor) -> int:
    """The host int of a device sampler's 0-d token: the one host sync per generated token.
    NumericalError for the -1 a device sampler returns on non-finite logits."""
    value = int(token.item())
    if value < 0:
        raise NumericalError(_NON_FINITE)
    return value


def make_device_sampler(
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    seed: int | None = None,
) -> DeviceSampler:
    """`make_sampler`'s maths, kept on the logits' device: the callable returns a 0-d int64
    tensor there (-1 for NaN/+Inf logits, or all -Inf) and never waits for the device, so a
    decode loop can queue the next step before it reads the token (`token_id`).

    One exception, where a sync is free: on a CPU, top-p without top-k first tries a short
    top-k and sorts the whole vocabulary only when that holds too little mass; elsewhere it
    sorts at once. The survivors, their order and the draw are the same either way.
    """
    _validate_sampling(temperature, top_p, top_k, min_p)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be an integer >= 0 or None, got {seed!r}")

    import torch

    if temperature == 0:

        def greedy(logits: torch.Tensor) -> torch.Tensor:
            best_logit, best = _as_vector(logits).max(dim=-1)
            return _checked(best, best_logit)

        return greedy

    seed = secrets.randbits(63) if seed is None else seed
    generators: dict[torch.device, torch.Generator] = {}  # one per device, all seeded alike
    log_min_p = math.log(min_p) if min_p > 0 else None

    def draw(candidates: torch.Tensor) -> torch.Tensor:
        """One index into `candidates` (logits, -Inf where removed), after temperature; 0-d.

        Inverse-CDF sampling (a cumsum and a binary search) costs a fraction of
        `torch.multinomial` on a full vocabulary; tokens of probability 0 are never chosen.
        """
        generator = generators.get(candidates.device)
        if generator is None:
            generator = generators[candidates.device] = torch.Generator(candidates.device)
            generator.manual_seed(seed)
        cdf = torch.cumsum(torch.softmax(candidates / temperature, dim=-1), dim=-1)
        u = torch.rand((), generator=generator, device=cdf.device) * cdf[-1]
        index = torch.searchsorted(cdf, u.reshape(1), right=True)[0]
        # u rounded up to the total: take the last possible token (the first to reach it)
        last = torch.searchsorted(cdf, cdf[-1:])[0]
        # (clamped too: NaN logits make both searches miss; the caller reports those)
        return torch.where(index >= cdf.numel(), last, index).clamp(max=cdf.numel() - 1)

    def nucleus_candidates(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, token ids, probabilities over the whole vocabulary) of the most probable
        tokens, sorted descending, enough of them to hold `top_p` of the mass.

        A full sort of a 150k vocabulary costs ~10 ms on a CPU, but a peaked distribution
        reaches top_p within a few dozen tokens: there, try top-k first and sort only when it
        is flat (the mass check reads a number back, free on a CPU, a stall on an accelerator).
        """
        probs = torch.softmax(logits, dim=-1)
        for k in (64, 1024) if logits.device.type == "cpu" else ():
            if k >= logits.numel() // 4:
                break
            top_probs, indices = torch.topk(probs, k)
            if top_probs.sum().item() >= top_p:
                return logits[indices], indices, top_probs
        top_probs, indices = torch.sort(probs, descending=True)
        return logits[indices], indices, top_probs

    def sample(logits: torch.Tensor) -> torch.Tensor:
        logits = _as_vector(logits).float()
        max_logit = logits.max()

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
        return _checked(choice if indices is None else indices[choice], max_logit)

    return sample


def make_sampler(
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    seed: int | None = None,
) -> Sampler:
    """A callable that picks one token id from 1-D logits `[vocab]` (on any device).

    `temperature == 0` is greedy (argmax; the other filters cannot change the argmax). Otherwise
    the candidates are cut by top-k, then top-p, then min-p, the survivors are scaled by
    1/temperature and one token is drawn from a `torch.Generator` seeded with `seed` (a fresh
    random seed when None): the same seed and the same logits give the same tokens.
    Raises NumericalError on NaN or +Inf logits, or when every logit is -Inf.

    The host-int face of `make_device_sampler` (the same draws): decode loops that want to
    keep the device busy use that one and read the token with `token_id`.
    """
    sample = make_device_sampler(temperature, top_p, top_k, min_p, seed)
    return lambda logits: token_id(sample(logits))


REPETITION_CONTEXT = 64  # ids the repetition penalty looks back over (llama.cpp's repeat_last_n)


def make_logits_processors(
    repetition_penalty: float = 1.0, repetition_context_size: int = REPETITION_CONTEXT
) -> list[LogitsProcessor]:
    """Processors `(token_ids, logits) -> logits`; an empty list when nothing is enabled.

    The repetition penalty (CTRL, as in llama.cpp's `repeat_penalty` over `repeat_last_n`):
    every distinct token among the last `repetition_context_size` ids has its logit divided by
    the penalty when positive and multiplied by it when negative, so a penalty > 1 always makes
    the token less likely. Ids outside the vocabulary are ignored. The input is not modified.
    """
    if not (isinstance(repetition_penalty, (int, float)) and math.isfinite(repetition_penalty)
            and repetition_penalty > 0):
        raise ValueError(f"repetition_penalty must be a finite number > 0 (1 disables it), "
                         f"got {repetition_penalty!r}")
    if (isinstance(repetition_context_size, bool) or not isinstance(repetition_context_size, int)
            or repetition_context_size < 1):
        raise ValueError(f"repetition_context_size must be an integer >= 1, "
                         f"got {repetition_context_size!r}")
    if repetition_penalty == 1.0:
        return []

    import torch

    def repetition_penalty_processor(tokens: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        recent = tokens[-repetition_context_size:]
        if isinstance(recent, torch.Tensor):
            recent = recent.tolist()
        vocab = logits.shape[-1]
        seen = sorted({int(t) for t in recent if 0 <= int(t) < vocab})
        if not seen:
            return logits
        index = torch.tensor(seen, device=logits.device)
        selected = logits[..., index]
        penalized = torch.where(selected > 0, selected / repetition_penalty,
                                selected * repetition_penalty)
        return logits.index_copy(-1, index, penalized)

    return [repetition_penalty_processor]


class DevicePenalty:
    """The repetition penalty with its history on the logits' device: a fixed ring of the last
    `context_size` ids (-1 where empty), so applying it and recording a sampled token (a 0-d
    device tensor) never wait for the device. The same maths as `make_logits_processors`'s
    processor: each distinct recent id in the vocabulary is penalised once.

        penalty = DevicePenalty(1.2, 64, prompt_ids, device)
        logits = penalty(logits)     # (vocab,) float
        penalty.push(token)          # after the draw
    """

    def __init__(self, repetition_penalty: float, context_size: int, history: Sequence[int],
                 device: torch.device | str) -> None:
        make_logits_processors(repetition_penalty, context_size)  # the same argument checks
        import torch

        self.penalty = repetition_penalty
        recent = [int(t) for t in list(history)[-context_size:]]
        ring = torch.full((context_size,), -1, dtype=torch.long)
        if recent:
            ring[context_size - len(recent):] = torch.tensor(recent, dtype=torch.long)
        self.recent = ring.to(device)  # (context_size,), oldest first

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        vocab = logits.shape[-1]
        recent = self.recent
        valid = ((recent >= 0) & (recent < vocab)).to(logits.dtype)
        # how often each id occurs among the recent ones; ids outside the vocabulary add 0
        hits = torch.zeros(vocab, dtype=logits.dtype, device=logits.device).index_add_(0, recent.clamp(0, vocab - 1), valid)
        penalized = torch.where(logits > 0, logits / self.penalty, logits * self.penalty)
        return torch.where(hits > 0, penalized, logits)

    def push(self, token: torch.Tensor | int) -> None:
        """Record the sampled token: the oldest id leaves the ring."""
        import torch

        token = torch.as_tensor(token, dtype=torch.long, device=self.recent.device).reshape(1)
        self.recent = torch.cat((self.recent[1:], token))


@dataclass(frozen=True)
class SamplingParams:
    """The one place for sampling defaults: the CLIs and `chat()` start from these."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int = 512
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _validate_sampling(self.temperature, self.top_p, self.top_k, self.min_p)
        if not (isinstance(self.repetition_penalty, (int, float)) and math.isfinite(self.repetition_penalty)
                and self.repetition_penalty > 0):
            raise ValueError(f"repetition_penalty must be a finite number > 0 (1 disables it), "
                             f"got {self.repetition_penalty!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or self.seed < 0):
            raise ValueError(f"seed must be an integer >= 0 or None, got {self.seed!r}")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a tuple of non-empty strings, got {self.stop!r}")

    @classmethod
    def merged(cls, *layers: SamplingParams | Mapping[str, Any] | None) -> SamplingParams:
        """The defaults, overlaid by each layer in turn (later ones win; None values and None
        layers are skipped, so "not chosen" falls through). A SamplingParams layer sets every
        field it has (a complete request). ValueError on an unknown key or a bad value. The
        usual stack: SamplingParams() < the model's defaults < the caller's params < keywords."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for layer in layers:
            if isinstance(layer, SamplingParams):
                layer = {name: getattr(layer, name) for name in known}
            if not layer:
                continue
            unknown = sorted(set(layer) - known)
            if unknown:
                raise ValueError(f"unknown sampling setting(s) {unknown} (known: {', '.join(sorted(known))})")
            values.update({k: v for k, v in layer.items() if v is not None})
        if "stop" in values and not isinstance(values["stop"], str):
            values["stop"] = tuple(values["stop"])
        return cls(**values)

    def sampler(self) -> Sampler:
        return make_sampler(self.temperature, self.top_p, self.top_k, self.min_p, self.seed)

    def device_sampler(self) -> DeviceSampler:
        return make_device_sampler(self.temperature, self.top_p, self.top_k, self.min_p, self.seed)

    def processors(self) -> list[LogitsProcessor]:
        return make_logits_processors(self.repetition_penalty)

    def device_penalty(self, history: Sequence[int], device: torch.device | str) -> DevicePenalty | None:
        """The repetition penalty kept on `device` (None when it is 1, i.e. off)."""
        if self.repetition_penalty == 1.0:
            return None
        return DevicePenalty(self.repetition_penalty, REPETITION_CONTEXT, history, device)
