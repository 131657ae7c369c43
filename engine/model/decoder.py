"""A LLaMA-style decoder in one file: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Weights use Hugging Face's rotary layout (each head's dimensions split into two halves that
rotate together). GGUF files of arch 'llama' store Q/K rows permuted for llama.cpp's
adjacent-pair rotation; `engine.model.load_gguf` undoes that permutation at load.

Family switches come from `ModelArgs`, not from subclasses: a bias on the fused Q/K/V
projection (Qwen2), an RMSNorm over each query and key head before RoPE (Qwen3), layers that
rotate nothing (SmolLM3), a sliding attention window per layer (Mistral, Qwen2), and the RoPE
scaling kinds of `engine.model.config.RopeScaling`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache, KVStore
from .config import ModelArgs
from .rope import RopeTables, apply_rope, rope_frequencies


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise and scale in float32 as llama.cpp does (the weight stays float32), then
        # return to the run dtype.
        return F.rms_norm(x.float(), self.weight.shape, self.weight, self.eps).to(x.dtype)


def attention_mask(start: int, T: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    """Which keys each of T queries (absolute positions start .. start + T - 1) may see.

    Returns None where SDPA needs no mask: one query (decode sees every key it is given), or a
    causal pass from position 0 (`is_causal`). Otherwise a bool (T, S) mask over the S keys
    `Attention` keeps: all `start + T` of them without a window; with a window, only the last
    `window + T - 1` (older ones are outside every query's window), and query p sees key j
    when p - window < j <= p, as transformers' sliding-window mask.
    """
    end = start + T
    if T == 1:
        return None
    if window is None or window >= end:
        return None if start == 0 else torch.ones(T, end, dtype=torch.bool, device=device).tril(diagonal=start)
    first = max(0, end - (window + T - 1))
    q = torch.arange(start, end, device=device)[:, None]  # (T, 1)
    k = torch.arange(first, end, device=device)  # (S,)
    return (k <= q) & (k > q - window)  # (T, S)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.window = args.layer_window(layer)  # None: attends to the whole context
        self.uses_rope = args.layer_uses_rope(layer)  # False: positions enter only through the causal mask
        # One fused projection for Q, K and V: one matmul per layer instead of three.
        self.wqkv = nn.Linear(args.dim, (args.n_heads + 2 * args.n_kv_heads) * args.head_dim, bias=args.qkv_bias)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.qk_norm = args.qk_norm
        if args.qk_norm:  # one head_dim weight shared by all query heads, one by all key heads
            self.q_norm = RMSNorm(args.head_dim, args.norm_eps)
            self.k_norm = RMSNorm(args.head_dim, args.norm_eps)

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of x (B, T, dim), normed and rotated as this layer does:
        q (B, n_heads, T, head_dim), k and v (B, n_kv_heads, T, head_dim). Shared with the
        explicit attention path of engine/runtime/inspect.py."""
        B, T, _ = x.shape
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        qk, v = self.wqkv(x).split((q_size + kv_size, kv_size), dim=-1)
        qk = qk.view(B, T, self.n_heads + self.n_kv_heads, self.head_dim)  # Q heads, then K heads
        if self.qk_norm:
            q, k = qk.split((self.n_heads, self.n_kv_heads), dim=2)
            qk = torch.cat((self.q_norm(q), self.k_norm(k)), dim=2)
        if self.uses_rope:
            qk = apply_rope(qk, cos, sin)  # Q and K heads rotated in one pass
        q, k = qk.transpose(1, 2).split((self.n_heads, self.n_kv_heads), dim=1)  # (B, heads, T, head_dim)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv_heads, T, head_dim)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVStore | None,
    ) -> torch.Tensor:
        """mask: bool (T, S) over the S keys attended to, or None (see `attention_mask`). With a
        cache that returns its whole bucket, the mask is always given, decode included: it
        hides the unfilled slots and the keys outside a sliding window. A layer without RoPE
        ignores cos and sin."""
        B, T, _ = x.shape
        q_size = self.n_heads * self.head_dim
        q, k, v = self.project(x, cos, sin)
        whole_bucket = cache is not None and cache.returns_whole_bucket
        if cache is not None:
            k, v = cache.update_and_fetch(self.layer, k, v)  # (B, n_kv_heads, S, head_dim)
        if self.window is not None and not whole_bucket:
            # Keys before the first query's window are outside every query's window: keep the
            # last window + T - 1, (B, n_kv_heads, <= window + T - 1, head_dim), as `mask` expects.
            keep = self.window + T - 1
            k, v = k[:, :, -keep:], v[:, :, -keep:]
        if T == 1:
            # Decode: fold each KV head's query heads into the query-length axis, (B, n_kv_heads,
            # group, head_dim): CPU kernels run this shape ~5x faster in bfloat16 than enable_gqa.
            # From a `KVCache` the one new token sees every key it is given (mask None); over a
            # whole bucket the (1, S) mask broadcasts over the group, all at one position.
            group = self.n_heads // self.n_kv_heads
            y = F.scaled_dot_product_attention(q.reshape(B, self.n_kv_heads, group, self.head_dim), k, v, attn_mask=mask)
            y = y.reshape(B, self.n_heads, 1, self.head_dim)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=self.n_heads != self.n_kv_heads
            )  # (B, n_heads, T, head_dim)
        return self.wo(y.transpose(1, 2).reshape(B, T, q_size))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.ffn_dim = args.ffn_dim
        self.w13 = nn.Linear(args.dim, 2 * args.ffn_dim, bias=False)  # gate and up, fused
        self.w2 = nn.Linear(args.ffn_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).split(self.ffn_dim, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args, layer)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x, cos, sin, mask, cache):
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, cache)
        return h + self.feed_forward(self.ffn_norm(h))


def _no_init(module: nn.Module) -> None:
    pass


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, *, inv_freq: torch.Tensor | None = None) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = None if args.tied_output else nn.Linear(args.dim, args.vocab_size, bias=False)
        if inv_freq is None:  # loaders pass their own, with any GGUF frequency factors applied
            inv_freq = rope_frequencies(args)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._rope: RopeTables | None = None  # built on first use, after the weights have moved
        self._layer_windows = [args.layer_window(i) for i in range(args.n_layers)]  # None: whole context
        self._windows = sorted(set(self._layer_windows) - {None})

    @classmethod
    def empty(cls, args: ModelArgs, inv_freq: torch.Tensor) -> Transformer:
        """The module tree with its weights on the meta device, for a loader to fill with
        `load_state_dict(..., assign=True)`, and `inv_freq` (already on the run device) as
        its RoPE frequencies. Nothing is computed on meta tensors: PyTorch runs meta ops such
        as the default initializers' `normal_` through its Python references, whose first use
        imports torch._dynamo, 1-2 s of start-up for nothing."""
        saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
        nn.Linear.reset_parameters = nn.Embedding.reset_parameters = _no_init
        try:
            with torch.device("meta"):
                return cls(args, inv_freq=inv_freq)
        finally:
            nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved

    def forward(
        self, tokens: torch.Tensor, cache: KVCache | None = None, *, last_only: bool = False,
        rope: RopeTables | None = None,
    ) -> torch.Tensor:
        """tokens: (B, T) int64 -> logits (B, T, vocab), or (B, 1, vocab) with last_only.

        With a cache, the tokens continue from `cache.offset` and the cache advances by T.
        `rope`: the caller's cos/sin tables (engine.runtime.runner keeps its own); else the
        model's, built on first use.
        """
        B, T = tokens.shape
        start = cache.reserve(T) if cache is not None else 0
        x = self.tok_embeddings(tokens)  # (B, T, dim)
        if rope is None:
            if self._rope is None or self._rope.inv_freq is not self.inv_freq:
                self._rope = RopeTables(self.args, self.inv_freq)
            rope = self._rope
        cos, sin = rope(start, start + T, x.dtype)
        mask = attention_mask(start, T, None, x.device)
        window_masks = {w: attention_mask(start, T, w, x.device) for w in self._windows}  # empty without windows
        for layer, window in zip(self.layers, self._layer_windows):
            x = layer(x, cos, sin, mask if window is None else window_masks[window], cache)
        if cache is not None:
            cache.advance(T)
        return self.head(x[:, -1:] if last_only else x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm and output projection: hidden states (B, T, dim) -> logits (B, T, vocab)."""
        x = self.norm(x)
        # Call an untied head as a module, so quantization can swap it like any other linear.
        return F.linear(x, self.tok_embeddings.weight) if self.output is None else self.output(x)
