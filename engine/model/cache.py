"""A preallocated KV cache, passed into the model explicitly (the model holds no generation state)."""

from __future__ import annotations

from typing import Protocol

import torch

from ..errors import ContextOverflowError
from .config import ModelArgs


class KVStore(Protocol):
    """What `Attention` asks of a cache: store one layer's new keys and values, return the keys
    and values to attend over.

    `returns_whole_bucket` says what comes back. False (`KVCache`): only the filled positions,
    so a one-token decode needs no mask and `Attention` drops keys older than its sliding
    window itself. True (`engine.runtime.static.StaticKVCache`): the whole fixed-capacity
    storage, the same shape every step, and the caller's mask hides unfilled slots and keys
    outside the window.
    """

    returns_whole_bucket: bool

    def update_and_fetch(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class KVCache:
    """Keys and values for every layer, written in place at positions [offset, offset + T).

    Storage: (n_layers, batch, n_kv_heads, max_seq_len, head_dim) for keys and for values.
    `offset` is the number of positions already filled; the model advances it after each
    forward pass, and `trim` moves it back to reuse a shared prefix.

    Sliding-window models (`ModelArgs.sliding_window`) keep every position here too: the window
    is applied when reading, where `Attention` drops keys older than the window and the model's
    mask hides the rest. A rolling buffer of `window` positions would save memory on contexts
    longer than the window, but it could not be trimmed back past the window (the overwritten
    keys are gone, so a regenerated or edited chat turn would have to be prefilled from the
    start), and Qwen2 mixes windowed and full layers in one model.
    """

    returns_whole_bucket = False  # see KVStore

    def __init__(
        self,
        args: ModelArgs,
        max_seq_len: int,
        *,
        batch_size: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if not 0 < max_seq_len <= args.context_length:
            raise ContextOverflowError(
                f"a KV cache of {max_seq_len} positions does not fit the model's context of {args.context_length}"
            )
        self.args = args
        shape = (args.n_layers, batch_size, args.n_kv_heads, max_seq_len, args.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self._layer_views()
        self.max_seq_len = max_seq_len
        self.offset = 0

    def _layer_views(self) -> None:
        # One view per layer, made once: indexing `keys[layer]` on every step is dispatcher work
        # that a one-token decode step pays 60 times.
        self._keys, self._values = self.keys.unbind(0), self.values.unbind(0)

    def ensure(self, capacity: int) -> None:
        """Grow the storage (doubling, up to the context length) so `capacity` positions fit."""
        if capacity <= self.max_seq_len:
            return
        limit = self.args.context_length
        if capacity > limit:
            raise ContextOverflowError(f"{capacity} positions exceed the model's context of {limit}")
        new_len = min(max(capacity, 2 * self.max_seq_len), limit)
        grown = []
        for old in (self.keys, self.values):
            new = old.new_zeros(*old.shape[:3], new_len, old.shape[4])
            new[:, :, :, : self.offset] = old[:, :, :, : self.offset]
            grown.append(new)
        self.keys, self.values = grown
        self._layer_views()
        self.max_seq_len = new_len

    def reserve(self, n_tokens: int) -> int:
        """Check that `n_tokens` more positions fit; returns the start position for them."""
        if self.offset + n_tokens > self.max_seq_len:
            raise ContextOverflowError(
                f"{self.offset} cached + {n_tokens} new tokens exceed the cache of {self.max_seq_len} positions"
            )
        return self.offset

    def update_and_fetch(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v of shape (B, n_kv_heads, T, head_dim) at the current offset; return all filled positions."""
        start, n = self.offset, k.shape[2]
        keys, values = self._keys[layer], self._values[layer]
        keys.narrow(2, start, n).copy_(k)
        values.narrow(2, start, n).copy_(v)
        return keys.narrow(2, 0, start + n), values.narrow(2, 0, start + n)

    def advance(self, n_tokens: int) -> None:
        self.offset += n_tokens

    def trim(self, n_tokens: int) -> int:
        """Forget the last `n_tokens` positions (for regenerate/edit); returns how many were trimmed."""
        n = min(max(n_tokens, 0), self.offset)
        self.offset -= n
        return n

    def reset(self) -> None:
        self.offset = 0


class PromptCache:
    """What a chat session keeps between turns: the token ids whose keys and values are cached.

    The native backend stores them in `kv`; llama.cpp keeps them in its own context, so there
    `kv` stays None. `reused` is how many prompt tokens the last generation did not prefill.
    """

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.kv: KVCache | None = None
        self.reused = 0


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
