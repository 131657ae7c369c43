"""Export a float model of our engine to a GGUF file that llama.cpp loads, as Q8_0 or Q4_0.

This is `engine.model.load_gguf` run backwards: the fused projections are split into llama.cpp's
tensors again, the Q/K rows go back into the converter's adjacent-pair layout, and the RoPE
setup travels the way llama.cpp reads it (linear scaling as metadata keys; per-frequency
divisors, which is how llama.cpp runs Llama 3.1-style scaling, as the `rope_freqs.weight`
tensor).

Tensor types (the policy, also returned in the report):

    blk.*  linear layers        `kind`: Q8_0 or Q4_0, blocks of 32 along the input width
    token_embd, output          Q8_0 for either kind
    norms, rope_freqs           F32

The embedding and the head stay at Q8_0 because the head's error lands on every logit with no
norm after it to absorb it, and a tied model uses one matrix for both. llama.cpp's own
quantizer also keeps the head above Q4_0 (Q6_K in its Q4_0 files); Q8_0 rather than Q6_K
because gguf's Python quantizer cannot write K-quants. For the default model that costs
14 MB over Q4_0 (49152 x 576 values at 8.5 instead of 4.5 bits). Norms and RoPE divisors are
1-D and tiny, and llama.cpp expects them in F32.

The file is written next to `out_path` under a temporary name, fsynced, and renamed over
`out_path`, so a failure at any point leaves either the old file or none, never a partial one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np
import torch
from torch import nn

from engine import RequestError
from engine.model import plain_frequencies

from .checkpoint import umask_mode

if TYPE_CHECKING:
    from engine.model import ModelArgs, Transformer

KINDS = ("q8_0", "q4_0")
QUANT_BLOCK = 32  # values per Q8_0 / Q4_0 block along a row
EMBEDDING_TYPE = "Q8_0"

_OWN_GENERAL_KEYS = {"general.architecture", "general.quantized_by"}  # written by the export itself

POLICY = {
    "layers": "the requested kind for every linear layer in blk.*",
    "token_embd.weight": "Q8_0 whatever the kind: a tied model also uses it as the output head",
    "output.weight": "Q8_0 whatever the kind: its error lands on every logit (llama.cpp keeps it above Q4_0 too)",
    "norms": "F32: 1-D and tiny, and llama.cpp expects them in F32",
    "rope_freqs.weight": "F32, written only when the model has per-frequency RoPE divisors",
}


def permute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder Q/K rows from Hugging Face's halves layout to llama.cpp's adjacent pairs.

    The inverse of `engine.model.load_gguf.unpermute_rope_rows`, and what llama.cpp's converter does:
    each head's row s*hd/2 + j moves to row 2*j + s, (n_heads, 2, hd/2, dim) -> (n_heads, hd/2, 2, dim).
    """
    rows, dim = w.shape
    head_dim = rows // n_heads
    if head_dim * n_heads != rows or head_dim % 2:
        raise RequestError(f"{rows} rows do not split into {n_heads} heads of an even size")
    return w.reshape(n_heads, 2, head_dim // 2, dim).transpose(1, 2).reshape(rows, dim)


@dataclass(frozen=True)
class _Planned:
    """One tensor of the output file: its GGUF name, its source values and its type."""

    name: str
    source: torch.Tensor  # float, PyTorch order [out, in] (or 1-D); a view into the model
    ggml_type: str  # a GGMLQuantizationType name: F32, Q8_0 or Q4_0
    rope_heads: int = 0  # Q/K rows: reorder for llama.cpp's RoPE in this many heads

    def values(self) -> np.ndarray:
        w = self.source.detach().to(device="cpu", dtype=torch.float32)
        if self.rope_heads:
            w = permute_rope_rows(w, self.rope_heads)
        return w.contiguous().numpy()


def export_gguf(
    model: Transformer, metadata: dict, out_path: Path, kind: str, *, progress: Callable[[int, int], Any] | None = None
) -> dict:
    """Write `model` (plain nn.Linear layers, float weights) to `out_path` as a llama.cpp GGUF file.

    metadata: the source GGUF's metadata, for the tokenizer (`tokenizer.*`) and the model's
    description (string `general.*` keys: name, license, ...).
    kind: "q8_0" or "q4_0", the type of the layer linears (see the module docstring for the rest).
    progress: called as progress(done, total) after each tensor is written.
    Returns {"path", "kind", "bytes", "tensor_types": {name: type}, "policy": {...}}.
    Raises ValueError for anything about the model, metadata or kind that cannot be exported
    (found before any file is created, except NaN/infinite weights, found while writing);
    OSError if the output folder cannot be written. out_path is replaced only on success.
    """
    if kind not in KINDS:
        raise RequestError(f"unknown GGUF export kind {kind!r}: choose one of {', '.join(KINDS)}")
    out_path = Path(out_path)
    if out_path.is_dir():
        raise RequestError(f"{out_path} is a folder: give the path of the .gguf file to write")
    plan = _plan_tensors(model, kind.upper())
    _check_block_widths(plan)
    copied_keys = _copied_keys(metadata, model.args.vocab_size)

    def write(path: Path) -> None:
        w = gguf.GGUFWriter(path, "llama")
        try:
            _add_hyperparameters(w, model.args, kind)
            for key, (value, vtype, sub_type) in copied_keys.items():
                w.add_key_value(key, value, vtype, sub_type)
            for t in plan:
                _add_tensor_info(w, t)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            # One tensor at a time: only one quantized copy is ever in memory.
            for done, t in enumerate(plan, 1):
                values = t.values()
                if not np.isfinite(values).all():
                    raise RequestError(f"{t.name} holds NaN or infinite values: this model cannot be exported")
                w.write_tensor_data(gguf.quants.quantize(values, gguf.GGMLQuantizationType[t.ggml_type]))
                if progress is not None:
                    progress(done, len(plan))
        finally:
            w.close()

    _write_atomically(out_path, write)
    return {
        "path": str(out_path),
        "kind": kind,
        "bytes": out_path.stat().st_size,
        "tensor_types": {t.name: t.ggml_type for t in plan},
        "policy": dict(POLICY),
    }


def _add_tensor_info(w: gguf.GGUFWriter, t: _Planned) -> None:
    # The header holds every tensor's type, shape and size before any data is written.
    qtype = gguf.GGMLQuantizationType[t.ggml_type]
    block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    nbytes = t.source.numel() // block * block_bytes
    if qtype == gguf.GGMLQuantizationType.F32:
        w.add_tensor_info(t.name, tuple(t.source.shape), np.dtype(np.float32), nbytes)
    else:
        rows, width = t.source.shape
        w.add_tensor_info(t.name, (rows, width // block * block_bytes), np.dtype(np.uint8), nbytes, raw_dtype=qtype)


def _linear_weight(module: object, what: str) -> torch.Tensor:
    # Prepacked (engine.model.packing) or quantized (quant.linear) modules hide or change their
    # weights; exporting needs the float matrix itself.
    if type(module) is not nn.Linear or module.bias is not None:
        raise RequestError(
            f"{what} is a {type(module).__name__}, not a plain bias-free nn.Linear: export a float model "
            f"loaded with NativeModel(path, dtype='float32', pack_weights=False), before any quantization"
        )
    if not module.weight.is_floating_point() or module.weight.is_meta:
        raise RequestError(f"{what} has no float weights ({module.weight.dtype}, {module.weight.device})")
    return module.weight


def _plan_tensors(model: Transformer, layer_type: str) -> list[_Planned]:
    """The tensors to write, in file order, as views into the model: nothing is copied yet."""
    args = model.args
    if args.rope_dim != args.head_dim:
        # The loader refuses partial RoPE too; the row permutation would have to skip the
        # unrotated dimensions of each head.
        raise RequestError(f"partial RoPE ({args.rope_dim} of {args.head_dim} dims) cannot be exported")
    if args.qkv_bias or args.sliding_window is not None:
        # The export writes arch 'llama', which llama.cpp runs without biases or a window.
        raise RequestError("Q/K/V biases (Qwen2) and sliding-window attention (Mistral) cannot be exported to a 'llama' GGUF")
    if args.qk_norm or args.no_rope_layers:
        raise RequestError("Q/K norms (Qwen3) and layers without RoPE (SmolLM3) cannot be exported to a 'llama' GGUF")
    q_size, kv_size = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    plan = [_Planned("token_embd.weight", model.tok_embeddings.weight, EMBEDDING_TYPE)]
    freq_factors = _rope_freq_factors(model)
    if freq_factors is not None:
        plan.append(_Planned("rope_freqs.weight", freq_factors, "F32"))
    for i, layer in enumerate(model.layers):
        b = f"blk.{i}."
        wqkv = _linear_weight(layer.attention.wqkv, f"layers.{i}.attention.wqkv")
        w13 = _linear_weight(layer.feed_forward.w13, f"layers.{i}.feed_forward.w13")
        plan += [
            _Planned(b + "attn_norm.weight", layer.attention_norm.weight, "F32"),
            _Planned(b + "attn_q.weight", wqkv[:q_size], layer_type, rope_heads=args.n_heads),
            _Planned(b + "attn_k.weight", wqkv[q_size : q_size + kv_size], layer_type, rope_heads=args.n_kv_heads),
            _Planned(b + "attn_v.weight", wqkv[q_size + kv_size :], layer_type),
            _Planned(b + "attn_output.weight", _linear_weight(layer.attention.wo, f"layers.{i}.attention.wo"), layer_type),
            _Planned(b + "ffn_norm.weight", layer.ffn_norm.weight, "F32"),
            _Planned(b + "ffn_gate.weight", w13[: args.ffn_dim], layer_type),
            _Planned(b + "ffn_up.weight", w13[args.ffn_dim :], layer_type),
            _Planned(b + "ffn_down.weight", _linear_weight(layer.feed_forward.w2, f"layers.{i}.feed_forward.w2"), layer_type),
        ]
    plan.append(_Planned("output_norm.weight", model.norm.weight, "F32"))
    if model.output is not None:
        plan.append(_Planned("output.weight", _linear_weight(model.output, "output"), EMBEDDING_TYPE))
    _check_shapes(plan, args)
    return plan


def _check_shapes(plan: list[_Planned], args: ModelArgs) -> None:
    # llama.cpp sizes every tensor from the metadata written from `args`: a model whose
    # weights disagree with its args would load as garbage, or not at all.
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    expected = {
        "token_embd": (args.vocab_size, args.dim), "output": (args.vocab_size, args.dim),
        "rope_freqs": (args.rope_dim // 2,), "output_norm": (args.dim,),
        "attn_norm": (args.dim,), "ffn_norm": (args.dim,),
        "attn_q": (q, args.dim), "attn_k": (kv, args.dim), "attn_v": (kv, args.dim), "attn_output": (args.dim, q),
        "ffn_gate": (args.ffn_dim, args.dim), "ffn_up": (args.ffn_dim, args.dim), "ffn_down": (args.dim, args.ffn_dim),
    }
    for t in plan:
        shape = expected[t.name.split(".")[-2]]
        if tuple(t.source.shape) != shape:
            raise RequestError(f"{t.name} has shape {tuple(t.source.shape)}, but the model args say {shape}")
    n_layers = sum(t.name.endswith("attn_q.weight") for t in plan)
    if n_layers != args.n_layers:
        raise RequestError(f"the model has {n_layers} layers, but its args say {args.n_layers}")


def _check_block_widths(plan: list[_Planned]) -> None:
    bad = [f"{t.name} ({t.source.shape[-1]})" for t in plan if t.ggml_type != "F32" and t.source.shape[-1] % QUANT_BLOCK]
    if bad:
        raise RequestError(
            f"Q8_0/Q4_0 need row widths that are multiples of {QUANT_BLOCK}; these are not: "
            f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}"
        )


def _rope_freq_factors(model: Transformer) -> torch.Tensor | None:
    """Per-frequency RoPE divisors for `rope_freqs.weight`, shape (rope_dim // 2,), or None.

    The model keeps only its final inverse frequencies, so the divisors are recovered against
    what llama.cpp computes itself: base^(-2i/d), divided by the linear factor when there is
    one (that travels as metadata). Whatever is left is a per-frequency divisor: Llama 3.1's
    rope_freqs tensor carried through, or llama3 scaling from a Hugging Face config, which
    llama.cpp only runs through this tensor.
    """
    args = model.args
    inv_freq = model.inv_freq.detach().to("cpu", torch.float64)
    if inv_freq.shape != (args.rope_dim // 2,):
        raise RequestError(f"model.inv_freq has shape {tuple(inv_freq.shape)}, expected ({args.rope_dim // 2},)")
    plain = plain_frequencies(args.rope_base, args.rope_dim)
    scaling = args.rope_scaling
    if scaling is not None and scaling.kind == "linear":
        plain = plain / scaling.factor
    elif scaling is not None and scaling.kind != "llama3":
        raise RequestError(f"RoPE scaling {scaling.kind!r} cannot be exported (linear and llama3 can)")
    factors = plain / inv_freq
    if not (torch.isfinite(factors).all() and (factors > 0).all()):
        raise RequestError("model.inv_freq holds zero or non-finite frequencies: RoPE cannot be exported")
    # float32 inverse frequencies are good to ~1e-7 relative: below that, there are no divisors.
    if (factors - 1).abs().max() < 1e-6:
        return None
    return factors.float()


def _add_hyperparameters(w: gguf.GGUFWriter, args: ModelArgs, kind: str) -> None:
    w.add_file_type({"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[kind])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_string("general.quantized_by", "chatapp quant (quant.gguf_export)")
    w.add_vocab_size(args.vocab_size)
    w.add_context_length(args.context_length)
    w.add_embedding_length(args.dim)
    w.add_block_count(args.n_layers)
    w.add_feed_forward_length(args.ffn_dim)
    w.add_head_count(args.n_heads)
    w.add_head_count_kv(args.n_kv_heads)
    w.add_key_length(args.head_dim)
    w.add_value_length(args.head_dim)
    w.add_layer_norm_rms_eps(args.norm_eps)
    w.add_rope_freq_base(args.rope_base)
    w.add_rope_dimension_count(args.rope_dim)
    scaling = args.rope_scaling
    if scaling is not None and scaling.kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(scaling.factor)
        if scaling.original_context:
            w.add_rope_scaling_orig_ctx_len(scaling.original_context)
    # llama3 scaling has no keys: it is the rope_freqs.weight tensor (_rope_freq_factors).


def _copied_keys(metadata: dict, vocab_size: int) -> dict[str, tuple[Any, Any, Any]]:
    """The source entries to carry, as key -> (value, GGUF value type, array element type).

    All of `tokenizer.*`, and the strings of `general.*` that describe the model (name,
    license, languages, ...); numbers there (file type, alignment) describe the source file.
    The metadata dict has lost the stored types, and llama.cpp checks them strictly (a token
    id must be UINT32, token types INT32), so they are rebuilt from the values and the keys.
    """
    V = gguf.GGUFValueType

    tokens = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(metadata.get("tokenizer.ggml.model"), str) or not isinstance(tokens, list):
        raise RequestError("the source metadata has no tokenizer (tokenizer.ggml.model and tokenizer.ggml.tokens)")
    if len(tokens) != vocab_size:
        raise RequestError(f"the tokenizer has {len(tokens)} tokens but the model's vocabulary is {vocab_size}")

    def scalar_type(key: str, value: Any) -> Any:
        if isinstance(value, bool):
            return V.BOOL
        if isinstance(value, str):
            return V.STRING
        if isinstance(value, float):
            return V.FLOAT32
        if isinstance(value, int):
            return V.UINT32 if value >= 0 else V.INT32  # token ids and counts: uint32 in llama.cpp
        raise RequestError(f"metadata {key!r} has a value of type {type(value).__name__} that cannot be written")

    out: dict[str, tuple[Any, Any, Any]] = {}
    for key, value in metadata.items():
        if key.startswith("general.") and key not in _OWN_GENERAL_KEYS:
            strings = value if isinstance(value, list) else [value]
            if strings and all(isinstance(v, str) for v in strings):
                out[key] = (value, V.ARRAY, V.STRING) if isinstance(value, list) else (value, V.STRING, None)
            continue
        if not key.startswith("tokenizer."):
            continue
        if not isinstance(value, list):
            out[key] = (value, scalar_type(key, value), None)
        elif not value:
            raise RequestError(f"metadata {key!r} is an empty array, which the gguf writer cannot write")
        else:
            if key == "tokenizer.ggml.precompiled_charsmap":
                element = V.UINT8  # raw bytes of a SentencePiece normalizer
            else:
                element = scalar_type(key, value[0])
                if element is V.UINT32:
                    element = V.INT32  # token types and other integer arrays are int32
            if len({type(v) for v in value}) != 1:
                raise RequestError(f"metadata {key!r} is an array of mixed values that cannot be written")
            out[key] = (value, V.ARRAY, element)
    return out


def _write_atomically(out_path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) into a temporary file beside out_path, fsync it, rename it over out_path."""
    folder = out_path.parent
    try:
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{out_path.name}.", suffix=".tmp")
    except OSError as e:
        raise type(e)(e.errno, f"cannot write {out_path.name} into {folder}: {e.strerror}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, umask_mode(0o666))  # mkstemp makes 0600; an exported model is an ordinary file
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except BaseException:  # Ctrl-C included: never leave the temporary file behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder for this.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
