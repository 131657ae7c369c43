"""The per-token work of the native backend, in one place beside the plain decoder.

`engine.model.decoder.Transformer` stays the readable model; `DecodeRunner` wraps one for one
device and dtype and owns what makes it fast: chunked prefill, the one-token decode step with its
reused input buffer, the RoPE tables, and on-device sampling whose token stays a device tensor
until the loop reads it (one host sync per token). Static KV buckets, torch.compile and CUDA
graphs belong here too (as gpt-fast's `decode_one_token` and vLLM's model runner), never in the
decoder.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import torch

from ..model.cache import KVCache, PromptCache, common_prefix
from ..model.decoder import Transformer
from ..model.rope import RopeTables
from .grammar import Constraint, apply_bitmask
from .probs import ProbRecorder
from .sampling import SamplingParams, token_id
from .static import StaticDecoder

PREFILL_CHUNK = 512  # tokens per prefill forward pass: bounds activation memory on long prompts


class TokenSampler:
    """One request's sampling, all on the logits' device: the repetition penalty (its history a
    device ring, `engine.runtime.sampling.DevicePenalty`), then the device sampler (seeded once,
    so its draws continue across calls). Returns a 0-d int64 tensor on the logits' device, -1 for
    non-finite logits (`engine.runtime.sampling.token_id` reads it); nothing here waits for the
    device, so the one host sync per token is the caller's read of that tensor.

    A grammar `constraint` (engine/runtime/grammar.py) masks the logits on the device after the
    penalty (one copy of its bitmask per token); the caller reports each token it read with
    `advance`. `record` (engine/runtime/probs.py) sees the penalized logits, before the mask."""

    def __init__(self, params: SamplingParams, n_tokens: int, history: Sequence[int], device: torch.device,
                 record: ProbRecorder | None = None, constraint: Constraint | None = None) -> None:
        self.n_tokens = n_tokens
        self.penalty = params.device_penalty(history, device)
        self.draw = params.device_sampler()
        self.record = record  # sees the logits the draw saw, and the token (engine/runtime/probs.py)
        self.constraint = constraint

    def _penalized(self, logits: torch.Tensor) -> torch.Tensor:
        # Checkpoints often pad the embedding past the tokenizer (Qwen2.5: 151,936 rows for
        # 151,665 tokens); ids with no token are never sampled.
        next_logits = logits.reshape(-1, logits.shape[-1])[-1, : self.n_tokens].float()
        return next_logits if self.penalty is None else self.penalty(next_logits)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: (vocab,) or (T, vocab), the last row is used. The token drawn joins the
        penalty's history."""
        next_logits = self._penalized(logits)
        drawn_from = next_logits
        if self.constraint is not None:
            mask = self.constraint.bitmask()
            if mask is not None:
                drawn_from = apply_bitmask(next_logits, mask)
        token = self.draw(drawn_from)
        self._took(next_logits, token)
        return token

    def step(self, logits: torch.Tensor, forced: deque[int] | None) -> tuple[torch.Tensor | int, int]:
        """One token of a decode loop: (what to feed back, its id). The next id in `forced` (the
        reasoning budget's close marker) if there is one, else a draw, read back once: the one
        host sync of the step. Either way the grammar, if any, moves on."""
        if forced:
            token = next_id = forced.popleft()
            self.forced(logits, next_id)
        else:
            token = self(logits)  # a 0-d device tensor
            next_id = token_id(token)
        self.advance(next_id)
        return token, next_id

    def forced(self, logits: torch.Tensor, token: int) -> None:
        """`token` is fed instead of drawn (the reasoning budget's close marker): it joins the
        history all the same."""
        self._took(self._penalized(logits) if self.record is not None else None, token)

    def _took(self, next_logits: torch.Tensor | None, token: torch.Tensor | int) -> None:
        if self.record is not None:
            self.record(next_logits, token)
        if self.penalty is not None:
            self.penalty.push(token)

    def advance(self, token: int) -> None:
        """The token the caller read (`token_id`) moves the grammar on, if there is one."""
        if self.constraint is not None:
            self.constraint.advance(token)


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
        self._static: StaticDecoder | None = None  # made on the first static generation
        self._static_ids: list[int] = []  # the ids whose keys the static decoder holds
        self._static_turn = 0  # which generation owns the static decoder now

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

    def sampler(self, params: SamplingParams, n_tokens: int, history: Sequence[int],
                record: ProbRecorder | None = None, constraint: Constraint | None = None) -> TokenSampler:
        """The request's sampler over the first `n_tokens` logits (the tokenizer's ids), its
        repetition penalty starting from `history` (the prompt's ids), masked by `constraint`."""
        return TokenSampler(params, n_tokens, history, self.device, record, constraint)

    # -- the plain path: a KVCache per conversation, grown as needed ---------------------------

    @torch.inference_mode()
    def plain_token_ids(self, prompt_ids: list[int], params: SamplingParams, n_tokens: int, *,
                        context_length: int, cache: PromptCache | None = None,
                        forced: deque[int] | None = None, record: ProbRecorder | None = None,
                        constraint: Constraint | None = None) -> Iterator[int]:
        """Sampled ids after `prompt_ids` through the plain decoder and `cache.kv` (made here when
        missing), reusing the longest prefix `cache` holds, until the caller stops or the context
        is full. Ids in `forced` (the reasoning budget's close marker) are fed instead of sampled;
        `record` sees each step's logits and token; `constraint` masks them (a grammar)."""
        sample = self.sampler(params, n_tokens, prompt_ids, record, constraint)
        # The cache holds the prompt and every generated token but the last (never fed back).
        needed = min(len(prompt_ids) + max(params.max_tokens - 1, 1), context_length)
        if cache is None:
            cache = PromptCache()
        if cache.kv is None:
            cache.kv = KVCache(self.model.args, needed, dtype=self.dtype, device=self.device)
        # Reuse the longest common prefix; decode at least one token to get fresh logits.
        reused = min(common_prefix(cache.ids, prompt_ids), len(prompt_ids) - 1)
        cache.kv.trim(cache.kv.offset - reused)
        cache.kv.ensure(needed)
        cache.ids, cache.reused = prompt_ids[:reused], reused
        kv = cache.kv
        logits = self.prefill(prompt_ids[reused:], kv)
        cache.ids = list(prompt_ids)
        while True:
            token, next_id = sample.step(logits, forced)
            yield next_id
            if kv.offset >= min(kv.max_seq_len, context_length):
                return  # the context window is full
            logits = self.decode(token, kv)
            cache.ids.append(next_id)

    # -- the static path (engine/runtime/static.py) --------------------------------------------

    def static_decoder(self, context_length: int) -> StaticDecoder:
        """The one static decoder of this model (its buckets and graphs are kept across turns
        and conversations), for a context of `context_length` positions."""
        if self._static is None or self._static.limit != context_length:
            self._static = StaticDecoder(self.model, context_length=context_length, dtype=self.dtype)
            self._static_ids = []
        return self._static

    def clear_static(self) -> None:
        """Forget what the static decoder holds (its buckets and graphs stay for reuse)."""
        if self._static is not None:
            self._static.reset()
        self._static_ids = []

    @torch.inference_mode()
    def static_token_ids(self, prompt_ids: list[int], params: SamplingParams, n_tokens: int, *,
                         context_length: int, cache: PromptCache | None = None,
                         forced: deque[int] | None = None, record: ProbRecorder | None = None,
                         constraint: Constraint | None = None) -> Iterator[int]:
        """Sampled ids after `prompt_ids`, decoded through the static decoder, until the caller
        stops or the context is full.

        Like llama.cpp's context, the decoder is the model's one KV store: a prompt reuses the
        longest prefix it shares with whatever the decoder holds (from any conversation), and
        `cache.reused` says how much. One generation at a time: a suspended generator whose
        decoder was taken over by a newer one raises instead of decoding from the wrong keys.
        Ids in `forced` (the reasoning budget's close marker) are fed instead of sampled;
        `record` sees each step's logits and token."""
        dec = self.static_decoder(context_length)
        self._static_turn += 1
        turn = self._static_turn
        held = self._static_ids
        if len(held) != dec.offset:  # the decoder was used directly (reset, trimmed): trust nothing
            held.clear()
            dec.reset()
        reused = min(common_prefix(held, prompt_ids), len(prompt_ids) - 1)  # decode at least one
        dec.trim(dec.offset - reused)
        del held[reused:]
        if cache is not None:
            cache.ids, cache.reused = list(prompt_ids), reused
        try:
            logits = dec.prefill(prompt_ids[reused:])
        except BaseException:
            dec.trim(dec.offset - reused)  # a chunk may have landed: forget it
            raise
        held.extend(prompt_ids[reused:])
        sample = self.sampler(params, n_tokens, prompt_ids, record, constraint)
        while True:
            token, next_id = sample.step(logits, forced)
            yield next_id
            if dec.offset >= dec.limit:
                return  # the context window is full
            if self._static_turn != turn:
                raise RuntimeError("another generation took over this model's KV cache; "
                                   "finish one generation before starting the next")
            logits = dec.decode(token)
            held.append(next_id)
