"""Tiny random LLaMA-architecture models written as F32 GGUF files, for golden tests against llama.cpp."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from engine.text.tokenizer import bytes_to_unicode

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "a n", "Ġ w"]


@dataclass(frozen=True)
class TinyConfig:
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_dim: int = 96
    context_length: int = 256
    rope_base: float = 10000.0
    tied: bool = True
    linear_rope_factor: float | None = None
    rope_freq_factors: bool = False  # Llama 3.1-style per-frequency divisors in `rope_freqs.weight`
    seed: int = 0
    weight_scale: float = 1.0  # large values make float16 overflow, on purpose


def vocabulary() -> tuple[list[str], list[int], list[str]]:
    tokens = list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in MERGES]
    types = [gguf.TokenType.NORMAL] * len(tokens) + [gguf.TokenType.CONTROL] * len(SPECIALS)
    return tokens + SPECIALS, [int(t) for t in types], MERGES


def add_tiny_vocabulary(w: gguf.GGUFWriter) -> None:
    """The tiny byte-level BPE vocabulary (`vocabulary()`), as SmolLM2's GGUF writes its own."""
    tokens, types, merges = vocabulary()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)


def write_tiny_llama(path: Path, cfg: TinyConfig = TinyConfig(), *, metadata: dict[str, Any] | None = None,
                     drop: tuple[str, ...] = ()) -> Path:
    """`metadata` replaces (or adds) keys with values of the given Python type (int: uint32 or
    uint64 when large, float: float32, str, list of str); `drop` removes keys."""
    rng = np.random.default_rng(cfg.seed)
    vocab = len(vocabulary()[0])
    head_dim = cfg.dim // cfg.n_heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-random-llama")
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.ffn_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if cfg.linear_rope_factor:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.linear_rope_factor)
    add_tiny_vocabulary(w)

    def tensor(name: str, *shape: int, scale: float = 0.08) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale * cfg.weight_scale).astype(np.float32))

    tensor("token_embd.weight", vocab, cfg.dim, scale=0.5)
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(cfg.dim)).astype(np.float32))
    if not cfg.tied:
        tensor("output.weight", vocab, cfg.dim, scale=0.3)
    if cfg.rope_freq_factors:
        w.add_tensor("rope_freqs.weight", rng.uniform(1.0, 8.0, head_dim // 2).astype(np.float32))
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", (1 + 0.1 * rng.standard_normal(cfg.dim)).astype(np.float32))
        tensor(b + "attn_q.weight", cfg.n_heads * head_dim, cfg.dim, scale=0.3)
        tensor(b + "attn_k.weight", cfg.n_kv_heads * head_dim, cfg.dim, scale=0.3)
        tensor(b + "attn_v.weight", cfg.n_kv_heads * head_dim, cfg.dim)
        tensor(b + "attn_output.weight", cfg.dim, cfg.n_heads * head_dim)
        w.add_tensor(b + "ffn_norm.weight", (1 + 0.1 * rng.standard_normal(cfg.dim)).astype(np.float32))
        tensor(b + "ffn_gate.weight", cfg.ffn_dim, cfg.dim)
        tensor(b + "ffn_up.weight", cfg.ffn_dim, cfg.dim)
        tensor(b + "ffn_down.weight", cfg.dim, cfg.ffn_dim)
    for key, value in (metadata or {}).items():
        w.kv_data[0][key] = _gguf_value(value)
    for key in drop:
        w.kv_data[0].pop(key, None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _gguf_value(value: Any) -> gguf.GGUFValue:
    kinds = gguf.GGUFValueType
    if isinstance(value, bool):
        return gguf.GGUFValue(value, kinds.BOOL)
    if isinstance(value, int):
        return gguf.GGUFValue(value, kinds.UINT32 if 0 <= value < 2**32 else kinds.INT64)
    if isinstance(value, float):
        return gguf.GGUFValue(value, kinds.FLOAT32)
    if isinstance(value, str):
        return gguf.GGUFValue(value, kinds.STRING)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return gguf.GGUFValue(value, kinds.ARRAY, kinds.STRING)
    if isinstance(value, list) and any(isinstance(v, float) for v in value):
        return gguf.GGUFValue(value, kinds.ARRAY, kinds.FLOAT32)
    if isinstance(value, list):
        return gguf.GGUFValue(value, kinds.ARRAY, kinds.INT32)
    raise TypeError(f"no GGUF type for {value!r}")
