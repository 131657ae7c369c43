"""What the model attended to: an explicit attention path for one query position.

Generation runs SDPA (fused kernels that never materialise the attention weights). To show the
weights, `attention_row` runs the decoder layer by layer over `ids[:position + 1]` with its
normal code, and beside each layer computes softmax(q k^T / sqrt(head_dim) + mask) for the last
query only, in float32, from the same `Attention.project` (so qk-norm, RoPE or its absence,
and the layer's sliding window are exactly the decoder's). Cost: one prefill of position + 1
tokens, on demand, for one position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import RequestError
from ..model.decoder import Attention, Transformer, attention_mask
from ..model.rope import RopeTables


def last_query_weights(attn: Attention, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """h: the layer's normed input (1, T, dim) -> the last query's weights (n_heads, T), float32.

    Grouped-query attention: query head i reads KV head i // (n_heads // n_kv_heads), as
    transformers' `repeat_kv` and SDPA's `enable_gqa` do."""
    q, k, _ = attn.project(h, cos, sin)  # q (1, n_heads, T, head_dim), k (1, n_kv_heads, T, head_dim)
    T = h.shape[1]
    group = attn.n_heads // attn.n_kv_heads
    q_last = q[0, :, -1].float()  # (n_heads, head_dim)
    keys = k[0].float().repeat_interleave(group, dim=0)  # (n_heads, T, head_dim)
    scores = torch.einsum("hd,htd->ht", q_last, keys) / math.sqrt(attn.head_dim)  # (n_heads, T)
    if attn.window is not None:
        # Key j is visible to query T - 1 when T - 1 - window < j: the decoder's window mask.
        hidden = torch.arange(T, device=h.device) <= T - 1 - attn.window
        scores = scores.masked_fill(hidden, float("-inf"))
    return torch.softmax(scores, dim=-1)


@torch.inference_mode()
def attention_row(model: Transformer, ids: Sequence[int], position: int, *, device: torch.device,
                  rope: RopeTables | None = None) -> torch.Tensor:
    """What the query at `position` attended to: float32 (n_layers, n_heads, position + 1) on the
    CPU, each row summing to 1 (keys outside a sliding window get 0)."""
    if not 0 <= position < len(ids):
        raise RequestError(f"position {position} is outside the {len(ids)} token ids given")
    T = position + 1
    tokens = torch.as_tensor(list(ids[:T]), dtype=torch.long, device=device).reshape(1, T)
    x = model.tok_embeddings(tokens)  # (1, T, dim)
    rope = rope or RopeTables(model.args, model.inv_freq)
    cos, sin = rope(0, T, x.dtype)
    windows = [block.attention.window for block in model.layers]
    masks = {w: attention_mask(0, T, w, x.device) for w in set(windows)}
    rows = []
    for block, window in zip(model.layers, windows):
        rows.append(last_query_weights(block.attention, block.attention_norm(x), cos, sin))
        x = block(x, cos, sin, masks[window], None)  # the normal layer, fast kernels and all
    return torch.stack(rows).cpu()  # (n_layers, n_heads, T)
