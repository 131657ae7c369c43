"""Hugging Face checkpoint folders: config.json and safetensors weights, validated, into our Transformer.

A folder holds `config.json` and either one `model.safetensors` or shards listed by
`model.safetensors.index.json` ({"weight_map": {tensor name: shard file name}}).

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
({name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}), then
the data section; offsets are relative to its start. Every header is checked here before
`safetensors.safe_open` maps the file: the length fits the file, the JSON is an object without
duplicate names, every dtype is known, every tensor's bytes lie inside the data section, match
prod(shape) * itemsize, and overlap no other tensor's. A failure is one ModelFormatError naming
the file and the tensor.

Pickle checkpoints (`pytorch_model.bin`, `*.pt`, `*.pth`, `*.ckpt`) are never opened: unpickling
can run arbitrary code.

Tensor names map onto `engine.model.Transformer` without any row permutation (Hugging Face's
rotary layout is ours); Q/K/V rows (and Qwen2's biases) are concatenated into `wqkv`, gate and
up into `w13`. Tokenizers are not read here.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ModelArgs
from ..errors import ModelFormatError, ModelNotFoundError
from ..hf_files import _read_json
from ..model import Transformer, rope_frequencies

__all__ = ["SafetensorsTensor", "hf_weight_files", "load_hf_weights", "read_hf_config", "read_safetensors_header"]

CONFIG, SINGLE, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit

# safetensors dtype -> bytes per element. Only the float ones can be weights.
_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
# Saved by some older checkpoints and recomputed by every loader, ours included.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class SafetensorsTensor:
    name: str
    dtype: str  # safetensors' name: "F32", "BF16", ...
    shape: tuple[int, ...]
    begin: int  # byte offsets in the data section
    end: int


def read_hf_config(folder: str | Path) -> ModelArgs:
    """The folder's config.json as ModelArgs."""
    folder = _folder(folder)
    _refuse_pickle_only(folder)  # before the config: that is the problem to report
    path = folder / CONFIG
    if not path.is_file():
        raise ModelFormatError(f"{folder}: no {CONFIG}, so this is not a Hugging Face model folder")
    config = _read_json(path, required=True)
    try:
        return ModelArgs.from_hf_config(config)
    except ModelFormatError as e:
        raise ModelFormatError(f"{path}: {str(e).removeprefix(CONFIG + ': ')}") from None


def _folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"{folder} is not a folder")
    return folder


def read_safetensors_header(path: Path) -> dict[str, SafetensorsTensor]:
    """Parse and check one safetensors file's header; the data itself is not read."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ModelFormatError(f"{path}: truncated: {size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", prefix)
            if n > _MAX_HEADER_BYTES or n > size - 8:
                raise ModelFormatError(
                    f"{path}: header length {n} does not fit the file of {size} bytes (truncated or not safetensors)"
                )
            raw = f.read(n)
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read it ({e})") from None

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ModelFormatError(f"{path}: the header names a tensor twice")
        return dict(pairs)

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelFormatError(f"{path}: the header is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: the header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFormatError(f"{path}: __metadata__ must map names to strings")

    data_bytes = size - 8 - n
    tensors = {}
    for name, entry in header.items():
        tensors[name] = _check_entry(path, name, entry, data_bytes)
    spans = sorted(tensors.values(), key=lambda t: (t.begin, t.end))
    for before, after in zip(spans, spans[1:]):
        if after.begin < before.end:
            raise ModelFormatError(f"{path}: tensors {before.name!r} and {after.name!r} overlap in the file")
    return tensors


def _check_entry(path: Path, name: str, entry: Any, data_bytes: int) -> SafetensorsTensor:
    def bad(message: str) -> ModelFormatError:
        return ModelFormatError(f"{path}: tensor {name!r}: {message}")

    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise bad("the header entry needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _ITEMSIZE:
        raise bad(f"unknown dtype {dtype!r}")

    def is_index(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not (isinstance(shape, list) and all(is_index(d) for d in shape)):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_index(o) for o in offsets)):
        raise bad(f"data_offsets {offsets!r} are not two non-negative integers")
    begin, end = offsets
    if not begin <= end <= data_bytes:
        raise bad(f"data_offsets [{begin}, {end}] lie outside the data section of {data_bytes} bytes (truncated?)")
    expected = math.prod(shape) * _ITEMSIZE[dtype]
    if end - begin != expected:
        raise bad(f"{end - begin} bytes for {dtype} {tuple(shape)}, which needs {expected}")
    return SafetensorsTensor(name, dtype, tuple(shape), begin, end)


def hf_weight_files(folder: str | Path) -> dict[str, tuple[Path, SafetensorsTensor]]:
    """Every tensor of the checkpoint: name -> (its file, its checked header entry).

    `model.safetensors` if present, else the shards of `model.safetensors.index.json`; a folder
    with only pickle checkpoints is refused, with the reason.
    """
    folder = _folder(folder)
    if (folder / SINGLE).is_file():
        path = folder / SINGLE
        return {name: (path, t) for name, t in read_safetensors_header(path).items()}
    if (folder / INDEX).is_file():
        return _sharded(folder / INDEX)
    _refuse_pickle_only(folder)
    raise ModelFormatError(f"{folder}: no {SINGLE} or {INDEX}")


def _refuse_pickle_only(folder: Path) -> None:
    """A folder with pickle checkpoints and no safetensors: say why it will not be opened."""
    if (folder / SINGLE).is_file() or (folder / INDEX).is_file():
        return
    pickles = sorted({p.name for pattern in PICKLE_PATTERNS for p in folder.glob(pattern)})
    if pickles:
        raise ModelFormatError(
            f"{folder}: the weights are PyTorch pickle files ({', '.join(pickles[:3])}), which the engine does not "
            f"open: loading a pickle can run arbitrary code. Convert the checkpoint to safetensors where you trust "
            f"its source (transformers: save_pretrained(..., safe_serialization=True)), or use its safetensors release"
        )


def _sharded(index_path: Path) -> dict[str, tuple[Path, SafetensorsTensor]]:
    index = _read_json(index_path, required=True)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFormatError(f"{index_path}: no weight_map object")
    headers: dict[str, dict[str, SafetensorsTensor]] = {}
    out = {}
    for name, file_name in weight_map.items():
        # A shard is a plain file beside the index: no folders, no way out of this one.
        if not (isinstance(file_name, str) and file_name.endswith(".safetensors") and Path(file_name).name == file_name
                and "\\" not in file_name and not file_name.startswith(".")):
            raise ModelFormatError(f"{index_path}: tensor {name!r} maps to {file_name!r}, not a .safetensors file name")
        path = index_path.parent / file_name
        if file_name not in headers:
            if not path.is_file():
                raise ModelFormatError(f"{index_path}: tensor {name!r} is in {file_name}, which is missing")
            headers[file_name] = read_safetensors_header(path)
        entry = headers[file_name].get(name)
        if entry is None:
            raise ModelFormatError(f"{index_path}: tensor {name!r} is said to be in {file_name}, but that file lacks it")
        out[name] = (path, entry)
    return out


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
    return shapes


def load_hf_weights(folder: str | Path, args: ModelArgs, *, dtype: torch.dtype, device: torch.device | str) -> Transformer:
    """A Transformer with the folder's safetensors weights, in `dtype` on `device` (norms in float32).

    Every tensor the model needs must be present with its exact shape and a float dtype, and
    every tensor present must be one the model uses: an unknown one (an o_proj bias, say)
    would otherwise be dropped silently and the model run wrongly. With tied embeddings, a
    stored `lm_head.weight` is ignored, as transformers ignores it.
    """
    from safetensors import SafetensorError, safe_open

    folder = _folder(folder)
    files = hf_weight_files(folder)
    expected = _expected_tensors(args)
    for name, shape in expected.items():
        if name not in files:
            raise ModelFormatError(f"{folder}: tensor {name!r} is missing")
        path, entry = files[name]
        if entry.dtype not in _FLOAT_DTYPES:
            raise ModelFormatError(f"{path}: tensor {name!r} is {entry.dtype}, not a float type")
        if entry.shape != shape:
            raise ModelFormatError(f"{path}: tensor {name!r} has shape {entry.shape}, the config says {shape}")
    ignorable = {"lm_head.weight"} if args.tied_output else set()
    unknown = sorted(n for n in files if n not in expected and n not in ignorable and not n.endswith(_IGNORED_SUFFIXES))
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
