"""Hugging Face checkpoint folders: the safetensors files, read and validated (engine/model/load_hf.py
builds our Transformer from them).

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
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError, ModelNotFoundError
from .hf_files import read_json

__all__ = ["SafetensorsTensor", "hf_weight_files", "read_safetensors_header"]

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
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
# Saved by some older checkpoints and recomputed by every loader, ours included.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class SafetensorsTensor:
    name: str
    dtype: str  # safetensors' name: "F32", "BF16", ...
    shape: tuple[int, ...]
    begin: int  # byte offsets in the data section
    end: int


def checkpoint_folder(folder: str | Path) -> Path:
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
    folder = checkpoint_folder(folder)
    if (folder / SINGLE).is_file():
        path = folder / SINGLE
        return {name: (path, t) for name, t in read_safetensors_header(path).items()}
    if (folder / INDEX).is_file():
        return _sharded(folder / INDEX)
    refuse_pickle_only(folder)
    raise ModelFormatError(f"{folder}: no {SINGLE} or {INDEX}")


def refuse_pickle_only(folder: Path) -> None:
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
    index = read_json(index_path, required=True)
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


