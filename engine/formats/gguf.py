"""A validated GGUF reader: metadata, tensor directory, and dequantized tensors.

File layout (GGUF v2/v3, little-endian; see ggml's docs/gguf.md):

    header        magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
    kv_count x    key string | value_type u32 | value
    tensor_count x name string | n_dims u32 | dims u64[n_dims] (innermost first) | type u32 |
                  offset u64 (relative to the data section, a multiple of the alignment)
    padding       to `general.alignment` (default 32)
    data section  tensor bytes

A string is a u64 byte length and UTF-8 bytes; an array is an element type u32, a u64 count and
the elements. Every count and length is checked against the bytes left in the file before
anything proportional to it is allocated, so a corrupt or hostile file fails at once with one
`GGUFError` that names the file and the problem.
"""

from __future__ import annotations

import enum
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import GGUFError, ModelNotFoundError
from .ggml_quants import BLOCK_LAYOUT, DEQUANTIZABLE, GGMLType, dequantize

__all__ = ["GGMLType", "GGUFFile", "TensorInfo", "read_gguf"]

_MAGIC = b"GGUF"
_SUPPORTED_VERSIONS = (2, 3)  # v1 used 32-bit counts and lengths; v3 only added big-endian files
_HEADER = struct.Struct("<4sIQQ")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_ARRAY_NESTING = 8
_INT64_MAX = 2**63 - 1


class _ValueType(enum.IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# Fixed-size value types: struct for one value, numpy dtype for an array of them.
_SCALARS: dict[_ValueType, tuple[struct.Struct, np.dtype]] = {
    vt: (struct.Struct("<" + code), np.dtype("<" + code))
    for vt, code in [
        (_ValueType.UINT8, "B"), (_ValueType.INT8, "b"), (_ValueType.UINT16, "H"),
        (_ValueType.INT16, "h"), (_ValueType.UINT32, "I"), (_ValueType.INT32, "i"),
        (_ValueType.FLOAT32, "f"), (_ValueType.BOOL, "B"), (_ValueType.UINT64, "Q"),
        (_ValueType.INT64, "q"), (_ValueType.FLOAT64, "d"),
    ]
}
# The fewest bytes a value of each type can occupy: bounds array counts before reading them.
_MIN_VALUE_BYTES = {vt: s.size for vt, (s, _) in _SCALARS.items()}
_MIN_VALUE_BYTES[_ValueType.STRING] = 8  # the length of an empty string
_MIN_VALUE_BYTES[_ValueType.ARRAY] = 12  # element type and count of an empty array
GGML_MAX_NAME = 64  # ggml's tensor name buffer, NUL included
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, a one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # PyTorch order, outermost first (GGUF stores innermost first)
    ggml_type: GGMLType
    offset: int  # absolute byte offset in the file
    nbytes: int


class _HeaderParser:
    """A cursor over the file's bytes that checks every read against the bytes left."""

    def __init__(self, buf: memoryview, where: str) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.where = where  # the file, for messages

    def error(self, message: str) -> GGUFError:
        return GGUFError(f"{self.where}: {message}")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.error(
                f"truncated: {what} at byte {self.pos} needs {n} bytes "
                f"but the file has {self.size} bytes"
            )

    def unpack(self, fmt: struct.Struct, what: str) -> Any:
        self.need(fmt.size, what)
        (value,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return value

    def string(self, what: str) -> str:
        n = self.unpack(_U64, f"length of {what}")
        self.need(n, what)
        start = self.pos
        self.pos += n
        try:
            return str(self.buf[start : self.pos], "utf-8")
        except UnicodeDecodeError as e:
            raise self.error(f"{what} at byte {start} is not valid UTF-8 ({e.reason})") from None

    def value_type(self, what: str) -> _ValueType:
        code = self.unpack(_U32, f"type of {what}")
        try:
            return _ValueType(code)
        except ValueError:
            raise self.error(f"{what} has unknown value type {code}") from None

    def value(self, vtype: _ValueType, what: str, depth: int = 0) -> Any:
        if vtype is _ValueType.STRING:
            return self.string(what)
        if vtype is _ValueType.ARRAY:
            return self.array(what, depth)
        fmt, _ = _SCALARS[vtype]
        value = self.unpack(fmt, what)
        if vtype is _ValueType.BOOL:
            if value > 1:
                raise self.error(f"{what} is a bool stored as {value} (must be 0 or 1)")
            return bool(value)
        return value

    def array(self, what: str, depth: int) -> list[Any]:
        if depth >= _MAX_ARRAY_NESTING:
            raise self.error(f"{what} nests arrays more than {_MAX_ARRAY_NESTING} deep")
        etype = self.value_type(f"elements of {what}")
        count = self.unpack(_U64, f"length of {what}")
        min_bytes = _MIN_VALUE_BYTES[etype]
        if count > (self.size - self.pos) // min_bytes:
            raise self.error(
                f"{what} claims {count} elements of type {etype.name} (at least "
                f"{min_bytes} bytes each) but only {self.size - self.pos} bytes remain"
            )
        if etype is _ValueType.STRING:
            return self.string_array(count, what)
        if etype is _ValueType.ARRAY:
            return [self.array(f"{what}[{i}]", depth + 1) for i in range(count)]
        _, dtype = _SCALARS[etype]
        values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += count * dtype.itemsize
        if etype is _ValueType.BOOL:
            if count and values.max() > 1:
                raise self.error(f"{what} holds a bool that is neither 0 nor 1")
            return values.astype(bool).tolist()
        return values.tolist()

    def string_array(self, count: int, what: str) -> list[str]:
        # The hot loop of opening a model (vocabularies and merges: ~100k strings), kept tight.
        buf, size, pos = self.buf, self.size, self.pos
        unpack_u64 = _U64.unpack_from
        out: list[str] = []
        append = out.append
        for i in range(count):
            if size - pos < 8:
                self.pos = pos
                self.need(8, f"length of {what}[{i}]")
            (n,) = unpack_u64(buf, pos)
            pos += 8
            if n > size - pos:
                self.pos = pos
                self.need(n, f"{what}[{i}]")
            try:
                append(str(buf[pos : pos + n], "utf-8"))
            except UnicodeDecodeError as e:
                raise self.error(
                    f"{what}[{i}] at byte {pos} is not valid UTF-8 ({e.reason})"
                ) from None
            pos += n
        self.pos = pos
        return out


class GGUFFile:
    """An open GGUF file: metadata and tensor directory parsed and validated on open.

    Tensor bytes stay in a read-only memory map until `load` (dequantized copy) or `raw`
    (zero-copy view) asks for them.
    """

    path: Path
    version: int
    alignment: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            is_file = self.path.is_file()
            size = self.path.stat().st_size if is_file else 0
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot read: {e.strerror or e}") from None
        if not is_file:
            what = "is a directory, not a GGUF file" if self.path.is_dir() else "no such file"
            raise ModelNotFoundError(f"{self.path}: {what}")
        if size < _HEADER.size:
            raise GGUFError(
                f"{self.path}: truncated: the {_HEADER.size}-byte GGUF header needs "
                f"{_HEADER.size} bytes but the file has {size} bytes"
            )
        try:
            self._data: np.memmap | None = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as e:
            raise GGUFError(f"{self.path}: cannot map the file: {e}") from None
        self._buf: memoryview | None = memoryview(self._data)
        try:
            self._parse(_HeaderParser(self._buf, str(self.path)))
        except GGUFError:
            self.close()
            raise
        except (struct.error, ValueError, IndexError, OverflowError, MemoryError) as e:
            # Every read above is bounds-checked; this is a backstop so nothing else escapes.
            self.close()
            raise GGUFError(f"{self.path}: malformed GGUF file ({type(e).__name__}: {e})") from None

    # --- parsing -------------------------------------------------------------------------------

    def _parse(self, p: _HeaderParser) -> None:
        magic, version, n_tensors, n_kv = _HEADER.unpack_from(p.buf, 0)
        p.pos = _HEADER.size
        if magic != _MAGIC:
            raise p.error(f"not a GGUF file (magic bytes {magic!r}, expected {_MAGIC!r})")
        if version not in _SUPPORTED_VERSIONS:
            if version in (2 << 24, 3 << 24):  # 2 or 3 written big-endian
                raise p.error("big-endian GGUF files are not supported")
            hint = "; re-convert the model with a current llama.cpp" if version == 1 else ""
            raise p.error(f"unsupported GGUF version {version} (supported: 2, 3){hint}")
        remaining = p.size - p.pos
        if n_kv > remaining // _MIN_KV_BYTES:
            raise p.error(
                f"header claims {n_kv} metadata entries but the file has room for at most "
                f"{remaining // _MIN_KV_BYTES}"
            )
        if n_tensors > (remaining - n_kv * _MIN_KV_BYTES) // _MIN_TENSOR_INFO_BYTES:
            raise p.error(
                f"header claims {n_tensors} tensors but the file has room for at most "
                f"{(remaining - n_kv * _MIN_KV_BYTES) // _MIN_TENSOR_INFO_BYTES}"
            )
        self.version = version
        self.metadata = self._parse_metadata(p, n_kv)
        self.alignment = self._alignment(p)
        self.tensors = self._parse_tensor_infos(p, n_tensors)

    def _parse_metadata(self, p: _HeaderParser, n_kv: int) -> dict[str, Any]:
        metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = p.string(f"key of metadata entry #{i}")
            if not key:
                raise p.error(f"metadata entry #{i} has an empty key")
            if key in metadata:
                raise p.error(f"duplicate metadata key {key!r}")
            metadata[key] = p.value(p.value_type(f"metadata {key!r}"), f"metadata {key!r}")
        return metadata

    def _alignment(self, p: _HeaderParser) -> int:
        alignment = self.metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
        if isinstance(alignment, bool) or not isinstance(alignment, int):
            raise p.error(f"general.alignment must be an integer, not {alignment!r}")
        if alignment <= 0 or alignment & (alignment - 1):
            raise p.error(f"general.alignment must be a positive power of two, not {alignment}")
        return alignment

    def _parse_tensor_infos(self, p: _HeaderParser, n_tensors: int) -> dict[str, TensorInfo]:
        # (name, shape innermost first, type, relative offset) as read; checked once the data
        # section's start is known.
        entries: list[tuple[str, tuple[int, ...], GGMLType, int]] = []
        names: set[str] = set()
        for i in range(n_tensors):
            name = p.string(f"name of tensor #{i}")
            if not name:
                raise p.error(f"tensor #{i} has an empty name")
            if len(name.encode()) >= GGML_MAX_NAME:
                raise p.error(
                    f"tensor #{i} has a name of {len(name.encode())} bytes ({name[:40]!r}...); "
                    f"llama.cpp allows at most {GGML_MAX_NAME - 1}"
                )
            if name in names:
                raise p.error(f"duplicate tensor name {name!r}")
            names.add(name)
            n_dims = p.unpack(_U32, f"n_dims of tensor {name!r}")
            if not 1 <= n_dims <= _MAX_DIMS:
                raise p.error(f"tensor {name!r} has {n_dims} dimensions (must be 1 to {_MAX_DIMS})")
            dims = tuple(p.unpack(_U64, f"dimension {d} of tensor {name!r}") for d in range(n_dims))
            if min(dims) < 1:
                raise p.error(f"tensor {name!r} has an empty dimension: GGUF shape {list(dims)}")
            if math.prod(dims) > _INT64_MAX:
                raise p.error(f"tensor {name!r} has too many elements: GGUF shape {list(dims)}")
            code = p.unpack(_U32, f"type of tensor {name!r}")
            try:
                ggml_type = GGMLType(code)
            except ValueError:
                raise p.error(f"tensor {name!r} has unknown ggml type {code}") from None
            if ggml_type not in BLOCK_LAYOUT:
                raise p.error(
                    f"tensor {name!r} has type {ggml_type.name}, which model files do not use"
                )
            offset = p.unpack(_U64, f"data offset of tensor {name!r}")
            entries.append((name, dims, ggml_type, offset))

        data_start = -(-p.pos // self.alignment) * self.alignment
        tensors: dict[str, TensorInfo] = {}
        for name, dims, ggml_type, offset in entries:
            block_elements, block_bytes = BLOCK_LAYOUT[ggml_type]
            if dims[0] % block_elements:
                raise p.error(
                    f"tensor {name!r} ({ggml_type.name}) has an innermost dimension of {dims[0]}, "
                    f"not a multiple of the block size {block_elements}"
                )
            if offset % self.alignment:
                raise p.error(
                    f"tensor {name!r} data offset {offset} is not a multiple of the "
                    f"alignment {self.alignment}"
                )
            nbytes = math.prod(dims) // block_elements * block_bytes
            start = data_start + offset
            if start + nbytes > p.size:
                raise p.error(
                    f"truncated: tensor {name!r} data ends at byte {start + nbytes} "
                    f"but the file has {p.size} bytes"
                )
            tensors[name] = TensorInfo(name, dims[::-1], ggml_type, start, nbytes)

        # As llama.cpp (gguf_init_from_file): tensor data lies in directory order, each tensor
        # padded to the alignment, with no gaps and no overlaps; anything else is refused there.
        expected, before = data_start, None
        for info in tensors.values():
            if before is not None and info.offset < before.offset + before.nbytes:
                raise p.error(
                    f"tensors {before.name!r} (bytes {before.offset}-{before.offset + before.nbytes}) and "
                    f"{info.name!r} (from byte {info.offset}) overlap"
                )
            if info.offset != expected:
                raise p.error(
                    f"tensor {info.name!r} data starts at byte {info.offset} but the layout puts it at "
                    f"byte {expected}: tensor data must follow the directory order without gaps"
                )
            expected += -(-info.nbytes // self.alignment) * self.alignment
            before = info
        return tensors

    # --- tensor access -------------------------------------------------------------------------

    def _info(self, name: str) -> TensorInfo:
        if self._data is None:
            raise ValueError(f"{self.path}: the GGUF file is closed")
        info = self.tensors.get(name)
        if info is None:
            raise KeyError(
                f"{self.path}: no tensor named {name!r} ({len(self.tensors)} tensors in the file)"
            )
        return info

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view of the memory map (no copy)."""
        info = self._info(name)
        return self._data[info.offset : info.offset + info.nbytes]

    def load(
        self,
        name: str,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> torch.Tensor:
        """The tensor dequantized to float32, reshaped to `TensorInfo.shape`, then cast to
        `dtype` and moved to `device`."""
        info = self._info(name)
        if info.ggml_type not in DEQUANTIZABLE:
            raise GGUFError(
                f"{self.path}: tensor {name!r} has type {info.ggml_type.name}, which this engine "
                f"cannot dequantize (use the llama.cpp backend for this file)"
            )
        data = torch.from_numpy(np.array(self.raw(name)))  # an owned, writable, aligned copy
        values = dequantize(data, info.ggml_type).view(info.shape)
        return values.to(dtype=dtype).to(device=device)

    def close(self) -> None:
        """Release the memory map (arrays returned by `raw` keep it alive until dropped)."""
        # Dropping the references (rather than closing the map) cannot fail while numpy views
        # of it are alive; the map goes away with the last of them.
        self._buf = None
        self._data = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, version={self.version}, tensors={len(self.tensors)})"


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Open and validate a GGUF file; raise GGUFError (corrupt) or ModelNotFoundError (missing)."""
    return GGUFFile(path)
