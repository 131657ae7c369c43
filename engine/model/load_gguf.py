"""Build a Transformer from a GGUF file: map tensor names, undo the Q/K row permutation, fuse projections.

llama.cpp's converter permutes Q/K rows (and biases) for arch 'llama' and 'smollm3' (a Llama to
it); for 'qwen2' and 'qwen3' it writes Hugging Face's layout unchanged (llama.cpp rotates those
in NeoX style, as we do). Qwen3's per-head Q/K norm weights are `attn_q_norm`/`attn_k_norm`.
"""

from __future__ import annotations

import torch

from ..errors import ModelFormatError
from ..formats.gguf import GGUFFile
from .config import ModelArgs
from .decoder import Transformer
from .rope import rope_frequencies


def unpermute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's converter permutation of Q/K rows (a weight [rows, dim] or a bias [rows]).

    The converter reorders each head's rows from Hugging Face's halves layout (row s*hd/2 + j)
    to adjacent pairs (row 2*j + s) so that llama.cpp's adjacent-pair RoPE applies. We rotate
    halves, so we reorder back: (n_heads, hd/2, 2, ...) -> (n_heads, 2, hd/2, ...).
    """
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def load_gguf_model(gguf: GGUFFile, args: ModelArgs, *, dtype: torch.dtype, device: torch.device) -> Transformer:
    if args.rope_dim != args.head_dim:
        raise ModelFormatError(f"{gguf.path.name}: partial RoPE ({args.rope_dim} of {args.head_dim} dims) is not supported")

    def tensor(name: str, shape: tuple[int, ...], run_dtype: torch.dtype = dtype) -> torch.Tensor:
        info = gguf.tensors.get(name)
        if info is None:
            raise ModelFormatError(f"{gguf.path.name}: tensor {name!r} is missing")
        if tuple(info.shape) != shape:
            raise ModelFormatError(f"{gguf.path.name}: tensor {name!r} has shape {tuple(info.shape)}, expected {shape}")
        # Dequantize in float32 (exact), then cast once to the run dtype.
        return gguf.load(name, dtype=torch.float32).to(device=device, dtype=run_dtype)

    arch = gguf.metadata.get("general.architecture")
    permuted = arch in ("llama", "smollm3")
    if permuted and args.qk_norm:
        # The norm weights would need the same reordering within each head; no such arch exists.
        raise ModelFormatError(f"{gguf.path.name}: Q/K norms on arch {arch!r} are not supported")
    unsupported = sorted(n for n in gguf.tensors if n.endswith(".bias") and n.split(".")[-2] not in ("attn_q", "attn_k", "attn_v"))
    if unsupported:
        raise ModelFormatError(f"{gguf.path.name}: bias tensors such as {unsupported[0]!r} are not supported by the native engine")

    def rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
        return unpermute_rope_rows(w, n_heads) if permuted else w

    hd, dim = args.head_dim, args.dim
    state: dict[str, torch.Tensor] = {
        "tok_embeddings.weight": tensor("token_embd.weight", (args.vocab_size, dim)),
        "norm.weight": tensor("output_norm.weight", (dim,), torch.float32),
    }
    if not args.tied_output:
        state["output.weight"] = tensor("output.weight", (args.vocab_size, dim))
    for i in range(args.n_layers):
        p, b = f"layers.{i}.", f"blk.{i}."
        q = rope_rows(tensor(b + "attn_q.weight", (args.n_heads * hd, dim)), args.n_heads)
        k = rope_rows(tensor(b + "attn_k.weight", (args.n_kv_heads * hd, dim)), args.n_kv_heads)
        v = tensor(b + "attn_v.weight", (args.n_kv_heads * hd, dim))
        state[p + "attention.wqkv.weight"] = torch.cat((q, k, v))
        if args.qkv_bias:
            q = rope_rows(tensor(b + "attn_q.bias", (args.n_heads * hd,)), args.n_heads)
            k = rope_rows(tensor(b + "attn_k.bias", (args.n_kv_heads * hd,)), args.n_kv_heads)
            state[p + "attention.wqkv.bias"] = torch.cat((q, k, tensor(b + "attn_v.bias", (args.n_kv_heads * hd,))))
        state[p + "attention.wo.weight"] = tensor(b + "attn_output.weight", (dim, args.n_heads * hd))
        if args.qk_norm:
            state[p + "attention.q_norm.weight"] = tensor(b + "attn_q_norm.weight", (hd,), torch.float32)
            state[p + "attention.k_norm.weight"] = tensor(b + "attn_k_norm.weight", (hd,), torch.float32)
        gate = tensor(b + "ffn_gate.weight", (args.ffn_dim, dim))
        up = tensor(b + "ffn_up.weight", (args.ffn_dim, dim))
        state[p + "feed_forward.w13.weight"] = torch.cat((gate, up))
        state[p + "feed_forward.w2.weight"] = tensor(b + "ffn_down.weight", (dim, args.ffn_dim))
        state[p + "attention_norm.weight"] = tensor(b + "attn_norm.weight", (dim,), torch.float32)
        state[p + "ffn_norm.weight"] = tensor(b + "ffn_norm.weight", (dim,), torch.float32)

    freq_factors = None
    if "rope_freqs.weight" in gguf.tensors:
        freq_factors = tensor("rope_freqs.weight", (args.rope_dim // 2,), torch.float32).cpu()

    # inv_freq is a non-persistent buffer, not in the state dict: built here on the real device.
    model = Transformer.empty(args, rope_frequencies(args, freq_factors).to(device))
    model.load_state_dict(state, assign=True, strict=False)
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ModelFormatError(f"{gguf.path.name}: no weights for {missing[:3]}")
    return model.eval().requires_grad_(False)
