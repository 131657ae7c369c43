"""A Hugging Face checkpoint folder into our Transformer: config.json as ModelArgs, and the
validated safetensors weights (engine/formats/hf.py reads and checks the files) renamed onto
our modules: Q/K/V rows (and Qwen2's biases) concatenated into `wqkv`, gate and up into `w13`,
Qwen3's per-head `q_norm`/`k_norm` kept as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFormatError
from ..formats.hf import CONFIG, FLOAT_DTYPES, IGNORED_SUFFIXES, checkpoint_folder, hf_weight_files, refuse_pickle_only
from ..formats.hf_files import read_json
from .config import ModelArgs
from .decoder import Transformer
from .rope import rope_frequencies


def read_hf_config(folder: str | Path) -> ModelArgs:
    """The folder's config.json as ModelArgs."""
    folder = checkpoint_folder(folder)
    refuse_pickle_only(folder)  # before the config: that is the problem to report
    path = folder / CONFIG
    if not path.is_file():
        raise ModelFormatError(f"{folder}: no {CONFIG}, so this is not a Hugging Face model folder")
    config = read_json(path, required=True)
    try:
        return ModelArgs.from_hf_config(config)
    except ModelFormatError as e:
        raise ModelFormatError(f"{path}: {str(e).removeprefix(CONFIG + ': ')}") from None


def _expected_tensors(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Hugging Face tensor name -> shape, for every tensor this model needs."""
    dim, q, kv = args.dim, args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    shapes = {"model.embed_tokens.weight": (args.vocab_size, dim), "model.norm.weight": (dim,)}
    if not args.tied_output:
        shapes["lm_head.weight"] = (args.vocab_size, dim)
    for i in range(args.n_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (dim,),
            p + "self_attn.q_proj.weight": (q, dim),
            p + "self_attn.k_proj.weight": (kv, dim),
            p + "self_attn.v_proj.weight": (kv, dim),
            p + "self_attn.o_proj.weight": (dim, q),
            p + "post_attention_layernorm.weight": (dim,),
            p + "mlp.gate_proj.weight": (args.ffn_dim, dim),
            p + "mlp.up_proj.weight": (args.ffn_dim, dim),
            p + "mlp.down_proj.weight": (dim, args.ffn_dim),
        })
        if args.qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
        if args.qk_norm:
            shapes.update({p + "self_attn.q_norm.weight": (args.head_dim,), p + "self_attn.k_norm.weight": (args.head_dim,)})
    return shapes


def load_hf_weights(folder: str | Path, args: ModelArgs, *, dtype: torch.dtype, device: torch.device | str) -> Transformer:
    """A Transformer with the folder's safetensors weights, in `dtype` on `device` (norms in float32).

    Every tensor the model needs must be present with its exact shape and a float dtype, and
    every tensor present must be one the model uses: an unknown one (an o_proj bias, say)
    would otherwise be dropped silently and the model run wrongly. With tied embeddings, a
    stored `lm_head.weight` is ignored, as transformers ignores it.
    """
    from safetensors import SafetensorError, safe_open

    folder = checkpoint_folder(folder)
    files = hf_weight_files(folder)
    expected = _expected_tensors(args)
    for name, shape in expected.items():
        if name not in files:
            raise ModelFormatError(f"{folder}: tensor {name!r} is missing")
        path, entry = files[name]
        if entry.dtype not in FLOAT_DTYPES:
            raise ModelFormatError(f"{path}: tensor {name!r} is {entry.dtype}, not a float type")
        if entry.shape != shape:
            raise ModelFormatError(f"{path}: tensor {name!r} has shape {entry.shape}, the config says {shape}")
    ignorable = {"lm_head.weight"} if args.tied_output else set()
    unknown = sorted(n for n in files if n not in expected and n not in ignorable and not n.endswith(IGNORED_SUFFIXES))
    if unknown:
        raise ModelFormatError(
            f"{files[unknown[0]][0]}: tensor {unknown[0]!r} is not part of a {args.n_layers}-layer model "
            f"this engine runs ({len(unknown)} such tensors)"
        )

    handles: dict[Path, Any] = {}

    def tensor(name: str, run_dtype: torch.dtype = dtype) -> torch.Tensor:
        path = files[name][0]
        try:
            if path not in handles:
                handles[path] = safe_open(str(path), framework="pt", device="cpu")  # memory-mapped
            t = handles[path].get_tensor(name)
        except (OSError, SafetensorError) as e:
            raise ModelFormatError(f"{path}: cannot read tensor {name!r} ({e})") from None
        return t.to(device=device, dtype=run_dtype)

    state: dict[str, torch.Tensor] = {
        "tok_embeddings.weight": tensor("model.embed_tokens.weight"),
        "norm.weight": tensor("model.norm.weight", torch.float32),
    }
    if not args.tied_output:
        state["output.weight"] = tensor("lm_head.weight")
    for i in range(args.n_layers):
        p, h = f"layers.{i}.", f"model.layers.{i}."
        attn = h + "self_attn."
        state[p + "attention.wqkv.weight"] = torch.cat([tensor(attn + f"{x}_proj.weight") for x in "qkv"])
        if args.qkv_bias:
            state[p + "attention.wqkv.bias"] = torch.cat([tensor(attn + f"{x}_proj.bias") for x in "qkv"])
        state[p + "attention.wo.weight"] = tensor(attn + "o_proj.weight")
        if args.qk_norm:
            state[p + "attention.q_norm.weight"] = tensor(attn + "q_norm.weight", torch.float32)
            state[p + "attention.k_norm.weight"] = tensor(attn + "k_norm.weight", torch.float32)
        state[p + "feed_forward.w13.weight"] = torch.cat(
            (tensor(h + "mlp.gate_proj.weight"), tensor(h + "mlp.up_proj.weight"))
        )
        state[p + "feed_forward.w2.weight"] = tensor(h + "mlp.down_proj.weight")
        state[p + "attention_norm.weight"] = tensor(h + "input_layernorm.weight", torch.float32)
        state[p + "ffn_norm.weight"] = tensor(h + "post_attention_layernorm.weight", torch.float32)
    handles.clear()

    # inv_freq is a non-persistent buffer, not in the state dict: built here on the real device.
    model = Transformer.empty(args, rope_frequencies(args).to(device))
    model.load_state_dict(state, assign=True, strict=True)
    return model.eval().requires_grad_(False)
