"""Static-shape decoding: fixed-capacity KV buckets, padded prefill chunks, and on CUDA each
bucket's one-token step replayed as a CUDA graph.

Why (measured on an H200, /work/shared/REFERENCE.md): the plain path hands SDPA a new key length
every token, cuDNN attention builds a new plan for each (2.2 ms a call), and even with every plan
cached a step launches ~260 kernels one by one; the host cannot keep up (12 tok/s, 125 with warm
plans). Here nothing changes shape from token to token:

- KV storage comes in buckets of fixed capacity (powers of two from `MIN_BUCKET` up to the
  context length), allocated once each and kept. New keys are written with `index_copy_` at a
  position held in a device tensor; `Attention` gets the whole bucket back (`StaticKVCache` is a
  `KVStore` with `returns_whole_bucket`), and a mask built from that position tensor hides the
  unfilled slots and applies sliding windows. RoPE cos/sin come from tables indexed by it.
- The host keeps the filled length (`offset`) as a plain int. Trim (regenerate/edit) and prefix
  reuse only move it back; growing into the next bucket copies the filled prefix.
- Prefill pads each chunk to one of `PREFILL_LENGTHS`, so a new prompt length is never a new
  shape. Padded tokens write keys past the real ones; each such slot is overwritten by the real
  token at that position before any query can see it (a query sees only slots <= its own).
- The step: on CUDA, each bucket's decode step is captured once as a `torch.cuda.CUDAGraph` and
  replayed across turns and conversations. Captured directly rather than through
  `torch.compile(mode="reduce-overhead")`: no compile time on a fresh process (it took 25 s for
  the 1B shape), no guards to recompile, and the eager kernels here are graph-safe. On CPU the
  step runs eager (see the note above `supports`); `step="compile"` is there to measure it.
- Attention kernels, on CUDA (on CPU SDPA's own choice serves). Decode: `Attention` folds each
  KV head's query group into the query axis, so heads match and SDPA's memory-efficient kernel
  takes the mask; it plans nothing per shape and can be captured. Prefill (not captured): cuDNN
  attention, which takes GQA with a mask; it plans once per shape, and padded chunks over fixed
  buckets make those few. Flash is kept out (no mask with GQA), and mem-efficient cannot take
  GQA, so prefill falls back to math if cuDNN declines. `tools/gpu_check_static.py` reports
  which backends run each phase alone.

Dynamic NTK RoPE is not supported here (`supports`): its frequencies depend on where each
forward pass ends, which a table indexed by position cannot express; such models use the plain
path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from ..errors import ContextOverflowError
from ..model.config import ModelArgs
from ..model.decoder import Transformer
from ..model.packing import PackedLinear
from ..model.rope import rope_tables

MIN_BUCKET = 256  # smallest KV bucket: attention over 256 keys costs next to nothing
PREFILL_LENGTHS = (16, 64, 256, 512)  # a prefill chunk is padded to the first that holds it
STEP_KINDS = ("eager", "graph", "compile")

# CPU: eager, not `torch.compile`. Measured on the 2-core machine (SmolLM2-135M shape, random
# bf16 weights, 256-key bucket), while other jobs held a load of ~9: compiling the step took
# 136 s, and inductor cannot lower the oneDNN-prepacked linears (engine/model/packing.py), so a
# compiled step gives up the 1.3x they bring. Per-step medians over 6 interleaved rounds, eager
# packed 1015 ms, eager unpacked 1570 ms, compiled unpacked 1086 ms, spread 0.2-4.2 s: the load
# swamped any difference, so these decide nothing but the start-up cost. Re-measure on an idle
# machine (`tools/gpu_check_static.py --device cpu`) before changing `default_step`.


def supports(args: ModelArgs) -> bool:
    """Whether the static path runs this model (everything but dynamic NTK RoPE)."""
    return args.rope_scaling is None or args.rope_scaling.kind != "dynamic"


def default_decode_path(device: torch.device) -> str:
    """The decode path generation takes on `device` when not told: "plain" on a CPU, where the
    eager static step measured 3% slower and its padded-mask prefill 35% slower than the plain
    decoder (SmolLM2-135M shape, 256-token prompt, 128 tokens: `python -m engine bench --shape
    smollm2-135m --decode static|plain`), "static" elsewhere: on CUDA it is the CUDA-graph path,
    and MPS too compiles kernels per shape (not measured here)."""
    return "plain" if device.type == "cpu" else "static"


def default_step(device: torch.device) -> str:
    """How the decode step runs on `device`: "graph" on CUDA, "eager" elsewhere."""
    return "graph" if device.type == "cuda" else "eager"


def bucket_capacity(needed: int, limit: int, min_bucket: int = MIN_BUCKET) -> int:
    """The smallest bucket that holds `needed` positions: a power of two times `min_bucket`,
    or `limit` itself once that is reached (a context length need not be a power of two)."""
    if needed > limit:
        raise ContextOverflowError(f"{needed} positions exceed the context of {limit}")
    capacity = min_bucket
    while capacity < needed:
        capacity *= 2
    return min(capacity, limit)


class StaticKVCache:
    """Keys and values in fixed-capacity storage, (n_layers, 1, n_kv_heads, capacity, head_dim)
    each, written at `positions` (a device tensor of shape (T,) that the decoder sets before a
    forward pass). `update_and_fetch` returns the whole bucket: the caller's mask does the rest."""

    returns_whole_bucket = True

    def __init__(self, args: ModelArgs, capacity: int, *, dtype: torch.dtype, device: torch.device) -> None:
        shape = (args.n_layers, 1, args.n_kv_heads, capacity, args.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self._keys, self._values = self.keys.unbind(0), self.values.unbind(0)  # per-layer views, made once
        self.capacity = capacity
        self.positions = torch.zeros(1, dtype=torch.long, device=device)

    def update_and_fetch(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v of shape (1, n_kv_heads, T, head_dim) at `positions`; return the whole bucket."""
        keys, values = self._keys[layer], self._values[layer]
        keys.index_copy_(2, self.positions, k)
        values.index_copy_(2, self.positions, v)
        return keys, values  # (1, n_kv_heads, capacity, head_dim)


class _Bucket:
    """One capacity's storage, RoPE tables, static step inputs/outputs and captured graph."""

    def __init__(self, model: Transformer, capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        args = model.args
        self.capacity = capacity
        self.cache = StaticKVCache(args, capacity, dtype=dtype, device=device)
        scaling = args.rope_scaling
        scale = scaling.attention_factor if scaling is not None and scaling.kind == "yarn" else 1.0
        # Computed as the plain decoder computes its tables (float32 on the CPU, then cast), so
        # both paths rotate by bit-identical factors.
        cos, sin = rope_tables(model.inv_freq.float().cpu(), capacity, scale=scale)
        self.cos, self.sin = cos.to(device).to(dtype), sin.to(device).to(dtype)  # (capacity, rope_dim)
        self.key_positions = torch.arange(capacity, device=device)  # (capacity,)
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)  # the decode step's input
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # and its position
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # the graph's output, (1, 1, vocab)


class StaticDecoder:
    """Prefill and one-token decode of a `Transformer` through static shapes.

    It owns the KV storage (one conversation at a time, like llama.cpp's context): `offset` is
    how many positions are filled; `trim` moves it back for regenerate/edit and prefix reuse,
    `reset` starts a new conversation. Graphs and buckets stay for the next conversation.

        dec = StaticDecoder(model)
        logits = dec.prefill(prompt_ids)        # (1, vocab), the last prompt token's
        logits = dec.decode(token)              # token: int or a one-element device tensor
    """

    def __init__(
        self,
        model: Transformer,
        *,
        context_length: int | None = None,
        min_bucket: int = MIN_BUCKET,
        prefill_lengths: Sequence[int] | None = None,
        step: str | None = None,
        keep_buckets: bool | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not supports(model.args):
            raise ValueError("the static decoder does not run dynamic NTK RoPE; use the plain path")
        self.model = model
        self.args = model.args
        self.device = model.inv_freq.device
        # The run dtype (the KV storage's): given by the runner, since a quantized embedding
        # has no float weight to read it from.
        self.dtype = dtype or model.tok_embeddings.weight.dtype
        self.limit = min(context_length or self.args.context_length, self.args.context_length)
        self.min_bucket = min(min_bucket, self.limit)
        if prefill_lengths is None:  # padding saves planning on CUDA; on a CPU it is only work
            prefill_lengths = PREFILL_LENGTHS if self.device.type == "cuda" else ()
        self.prefill_lengths = tuple(sorted(prefill_lengths))
        self.chunk_len = self.prefill_lengths[-1] if self.prefill_lengths else PREFILL_LENGTHS[-1]
        self.step = step or default_step(self.device)
        # Graphs and compiled steps are made per bucket and kept for reuse; an eager step has
        # nothing to keep, so a bucket outgrown is freed (one conversation's KV, not the sum).
        self.keep_buckets = self.step != "eager" if keep_buckets is None else keep_buckets
        if self.step not in STEP_KINDS:
            raise ValueError(f"step must be one of {STEP_KINDS}, got {step!r}")
        if self.step == "graph" and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        if self.step == "compile" and any(isinstance(m, PackedLinear) for m in model.modules()):
            # inductor lowers mkldnn._linear_pointwise only for weights it froze itself.
            raise ValueError("torch.compile cannot run oneDNN-prepacked linears: load with pack_weights=False")
        self._layer_windows = [self.args.layer_window(i) for i in range(self.args.n_layers)]
        self._windows = sorted(set(self._layer_windows) - {None})
        self._buckets: dict[int, _Bucket] = {}
        self._bucket: _Bucket | None = None
        self._offset = 0
        self._graph_pool = None  # one memory pool shared by every bucket's graph
        self._compiled = torch.compile(self._decode_step, fullgraph=True, dynamic=False) if self.step == "compile" else None

    # -- position ----------------------------------------------------------------------------

    @property
    def offset(self) -> int:
        """Positions filled: the prompt and generated tokens whose keys are stored."""
        return self._offset

    @property
    def capacity(self) -> int:
        """The current bucket's capacity (0 before the first token)."""
        return 0 if self._bucket is None else self._bucket.capacity

    def trim(self, n_tokens: int) -> int:
        """Forget the last `n_tokens` positions (regenerate/edit); returns how many were trimmed."""
        n = min(max(n_tokens, 0), self._offset)
        self._offset -= n
        return n

    @torch.inference_mode()  # the buckets are inference tensors: growing one writes into them
    def ensure(self, capacity: int) -> None:
        """Move now into the bucket that holds `capacity` positions (copying the filled prefix),
        so the next steps up to there change no bucket and, on CUDA, capture nothing mid-reply.
        A larger bucket costs attention over more keys; without this, buckets grow on demand."""
        self._enter_bucket(capacity)

    def reset(self) -> None:
        """Start over (a new conversation); the next prompt starts in the smallest bucket that fits."""
        self._offset = 0
        self._bucket = None

    # -- the two calls -----------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, ids: Sequence[int]) -> torch.Tensor:
        """Feed prompt tokens after `offset`; returns the last one's logits, (1, vocab)."""
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("prefill needs at least one token")
        if self._offset + len(ids) > self.limit:
            raise ContextOverflowError(f"{self._offset} cached + {len(ids)} new tokens exceed the context of {self.limit}")
        chunk_len = self.chunk_len
        for i in range(0, len(ids), chunk_len):
            chunk = ids[i : i + chunk_len]
            n, start = len(chunk), self._offset
            padded = next((length for length in self.prefill_lengths if length >= n), n)
            if start + padded > self.limit:
                padded = n  # the last positions of the context: no room to pad
            bucket = self._enter_bucket(start + padded)
            tokens = torch.tensor([chunk + [0] * (padded - n)], dtype=torch.long, device=self.device)  # (1, padded)
            positions = torch.arange(start, start + padded, device=self.device)  # (padded,)
            with self._kernels("prefill"):
                hidden = self._hidden(bucket, tokens, positions)  # (1, padded, dim)
            self._offset += n
        return self.model.head(hidden[:, n - 1 : n])[0]  # (1, vocab)

    @torch.inference_mode()
    def decode(self, token: int | torch.Tensor) -> torch.Tensor:
        """Feed one token at `offset`; returns its logits, (1, vocab), a fresh tensor.

        `token` may be a one-element tensor on the device (what an on-device sampler returns):
        it is copied into the step's input without a host sync."""
        bucket = self._enter_bucket(self._offset + 1)
        if isinstance(token, torch.Tensor):
            bucket.token.copy_(token.reshape(1, 1))
        else:
            bucket.token.fill_(int(token))
        bucket.position.fill_(self._offset)  # a kernel argument, not a host-to-device copy
        if self.step == "graph":
            if bucket.graph is None:
                self._capture(bucket)
            bucket.graph.replay()
            logits = bucket.logits.clone()  # the graph overwrites its output on the next replay
        elif self._compiled is not None:
            logits = self._compiled(bucket)
        else:
            with self._kernels("decode"):
                logits = self._decode_step(bucket)
        self._offset += 1
        return logits[0]  # (1, vocab)

    # -- the step ----------------------------------------------------------------------------

    def _hidden(self, bucket: _Bucket, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens (1, T) at device positions (T,) -> hidden states (1, T, dim); the keys and
        values land in the bucket. Every shape here is fixed by T and the bucket's capacity."""
        model = self.model
        x = model.tok_embeddings(tokens)  # (1, T, dim)
        cos = bucket.cos.index_select(0, positions).unsqueeze(1)  # (T, 1, rope_dim)
        sin = bucket.sin.index_select(0, positions).unsqueeze(1)
        query = positions.unsqueeze(1)  # (T, 1)
        visible = bucket.key_positions <= query  # (T, capacity): causal, and hides unfilled slots
        masks = {None: visible}
        for window in self._windows:  # a query at p sees keys p - window < j <= p
            masks[window] = visible & (bucket.key_positions > query - window)
        bucket.cache.positions = positions
        for layer, window in zip(model.layers, self._layer_windows):
            x = layer(x, cos, sin, masks[window], bucket.cache)
        return x

    def _decode_step(self, bucket: _Bucket) -> torch.Tensor:
        """The captured/compiled unit: bucket.token at bucket.position -> logits (1, 1, vocab)."""
        return self.model.head(self._hidden(bucket, bucket.token, bucket.position))

    def _kernels(self, phase: str) -> contextlib.AbstractContextManager:
        """SDPA backends for "prefill" or "decode" on this device (see the module docstring)."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        first = SDPBackend.CUDNN_ATTENTION if phase == "prefill" else SDPBackend.EFFICIENT_ATTENTION
        return sdpa_kernel([first, SDPBackend.MATH])

    def _capture(self, bucket: _Bucket) -> None:
        """Capture `bucket`'s decode step as a CUDA graph, with the real token and position in
        its inputs: the warm-up runs write the same keys and values the replay will."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        # Warm up outside the capture: cuBLAS handles, workspaces and lazy module state are
        # created on first use, which a capture may not do.
        with torch.cuda.stream(side), self._kernels("decode"):
            for _ in range(2):
                self._decode_step(bucket)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool), self._kernels("decode"):
            bucket.logits = self._decode_step(bucket)
        bucket.graph = graph

    def _enter_bucket(self, needed: int) -> _Bucket:
        """The bucket to run in for `needed` positions, growing into a larger one (copying the
        filled prefix) when the current one is too small."""
        current = self._bucket
        if current is not None and needed <= current.capacity:
            return current
        capacity = bucket_capacity(needed, self.limit, self.min_bucket)
        bucket = self._buckets.get(capacity)
        if bucket is None:
            bucket = self._buckets[capacity] = _Bucket(self.model, capacity, self.dtype, self.device)
        if current is not None and self._offset:
            filled = self._offset
            for new, old in ((bucket.cache.keys, current.cache.keys), (bucket.cache.values, current.cache.values)):
                new[:, :, :, :filled].copy_(old[:, :, :, :filled])
        if not self.keep_buckets:
            self._buckets = {capacity: bucket}
        self._bucket = bucket
        return bucket

    def buckets(self) -> Iterator[int]:
        """Capacities allocated so far (each keeps its storage and graph for reuse)."""
        return iter(sorted(self._buckets))
