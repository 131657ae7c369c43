"""GGUF reader: dequantization against the `gguf` package, round trips, the real default model,
and corrupt files that must fail with one GGUFError and no large allocation."""

from __future__ import annotations

import collections
import struct
import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize as reference_dequantize
from gguf.quants import quantize as reference_quantize

from engine.errors import GGUFError, ModelNotFoundError
from engine.formats import ggml_quants
from engine.formats.gguf import GGMLType, GGUFFile, TensorInfo, read_gguf

# --- dequantization against gguf.quants ---------------------------------------------------------

# Byte offsets of the f16 scale fields in each block: random bytes there could be NaN or Inf.
F16_FIELDS = {
    GGMLType.Q4_0: [0], GGMLType.Q4_1: [0, 2], GGMLType.Q5_0: [0], GGMLType.Q5_1: [0, 2],
    GGMLType.Q8_0: [0], GGMLType.Q2_K: [80, 82], GGMLType.Q3_K: [108], GGMLType.Q4_K: [0, 2],
    GGMLType.Q5_K: [0, 2], GGMLType.Q6_K: [208],
}
PLAIN = {GGMLType.F32: np.float32, GGMLType.F16: np.float16}


def random_tensor_bytes(ggml_type: GGMLType, rows: int, cols: int, rng) -> np.ndarray:
    """(rows, bytes per row) uint8 of valid random data for a (rows, cols) tensor."""
    if ggml_type in PLAIN:
        values = rng.standard_normal((rows, cols)).astype(PLAIN[ggml_type])
        return values.view(np.uint8)
    if ggml_type is GGMLType.BF16:
        values = rng.standard_normal((rows, cols)).astype(np.float32)
        return (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    block_elements, block_bytes = ggml_quants.BLOCK_LAYOUT[ggml_type]
    blocks = rng.integers(0, 256, size=(rows * cols // block_elements, block_bytes), dtype=np.uint8)
    for start in F16_FIELDS[ggml_type]:
        scales = rng.uniform(-2, 2, size=(blocks.shape[0], 1)).astype(np.float16)
        blocks[:, start : start + 2] = scales.view(np.uint8)
    return blocks.reshape(rows, -1)


DEQUANT_TYPES = [GGMLType.F32, GGMLType.F16, GGMLType.BF16, *F16_FIELDS]


@pytest.fixture(scope="module")
def random_quant_file(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A GGUF with one (3, 512) tensor of random bytes per type, and the reference values."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("gguf") / "random.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    expected = {}
    for ggml_type in DEQUANT_TYPES:
        data = random_tensor_bytes(ggml_type, 3, 512, rng)
        qtype = GGMLQuantizationType(int(ggml_type))
        writer.add_tensor(ggml_type.name, data, raw_dtype=qtype)
        expected[ggml_type.name] = reference_dequantize(data, qtype).reshape(3, 512)
    write(writer)
    return path, expected


def write(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("ggml_type", DEQUANT_TYPES, ids=lambda t: t.name)
def test_dequantize_matches_gguf_reference(random_quant_file, ggml_type):
    path, expected = random_quant_file
    with read_gguf(path) as f:
        got = f.load(ggml_type.name)
    assert got.dtype == torch.float32 and got.shape == (3, 512)
    want = expected[ggml_type.name]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_dequantize_in_several_chunks(random_quant_file, monkeypatch):
    path, expected = random_quant_file
    monkeypatch.setattr(ggml_quants, "_CHUNK_ELEMENTS", 3 * 256)  # 6 chunks, the last one short
    with read_gguf(path) as f:
        for name in ("Q4_1", "Q6_K"):
            np.testing.assert_allclose(f.load(name).numpy(), expected[name], rtol=1e-6, atol=1e-6)


def test_load_dtype_and_device(random_quant_file):
    path, expected = random_quant_file
    with read_gguf(path) as f:
        got = f.load("Q8_0", dtype=torch.bfloat16, device=torch.device("cpu"))
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, torch.from_numpy(expected["Q8_0"]).to(torch.bfloat16))


# --- round trip through gguf.GGUFWriter ----------------------------------------------------------


@pytest.fixture
def roundtrip_file(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    originals = {
        "f32": rng.standard_normal((2, 3, 8)).astype(np.float32),
        "f16": rng.standard_normal((5, 32)).astype(np.float16),
        "norm": rng.standard_normal(7).astype(np.float32),
        "q8_0": rng.standard_normal((4, 64)).astype(np.float32),
        "q4_0": rng.standard_normal((2, 96)).astype(np.float32),
        "q5_1": rng.standard_normal((3, 32)).astype(np.float32),
    }
    path = tmp_path / "roundtrip.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_uint32("llama.block_count", 2)
    writer.add_int64("test.int64", -(2**40))
    writer.add_float32("test.float", 0.5)
    writer.add_bool("test.flag", True)
    writer.add_string("test.text", "héllo ✓")
    writer.add_array("test.tokens", ["<s>", "", "Ġworld", "日本"])
    writer.add_array("test.ints", [3, -1, 7])
    writer.add_array("test.floats", [0.25, -1.5])
    writer.add_array("test.flags", [True, False])
    writer.add_key_value("test.nested", [[1, 2], [3]], GGUFValueType.ARRAY)
    writer.add_custom_alignment(64)
    for name, values in originals.items():
        if name.startswith("q"):
            qtype = GGMLQuantizationType[name.upper()]
            writer.add_tensor(name, reference_quantize(values, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, values)
    write(writer)
    return path, originals


def test_roundtrip_metadata(roundtrip_file):
    path, _ = roundtrip_file
    with read_gguf(path) as f:
        assert f.version == 3
        assert f.alignment == 64
        assert f.metadata["general.architecture"] == "llama"
        assert f.metadata["llama.block_count"] == 2
        assert f.metadata["test.int64"] == -(2**40)
        assert f.metadata["test.float"] == 0.5
        assert f.metadata["test.flag"] is True
        assert f.metadata["test.text"] == "héllo ✓"
        assert f.metadata["test.tokens"] == ["<s>", "", "Ġworld", "日本"]
        assert f.metadata["test.ints"] == [3, -1, 7]
        assert f.metadata["test.floats"] == [0.25, -1.5]
        assert f.metadata["test.flags"] == [True, False]
        assert f.metadata["test.nested"] == [[1, 2], [3]]


def test_roundtrip_tensors(roundtrip_file):
    path, originals = roundtrip_file
    reference = {t.name: t for t in gguf.GGUFReader(path).tensors}
    with read_gguf(path) as f:
        assert list(f.tensors) == list(originals)  # file order
        for name, original in originals.items():
            info = f.tensors[name]
            assert isinstance(info, TensorInfo)
            assert info.shape == original.shape
            assert tuple(reference[name].shape) == original.shape[::-1]  # GGUF: innermost first
            assert info.offset % 64 == 0
            raw = f.raw(name)
            assert raw.dtype == np.uint8 and not raw.flags.writeable
            assert raw.tobytes() == reference[name].data.tobytes()
            got = f.load(name).numpy()
            assert got.shape == original.shape
            if name.startswith("q"):
                qtype = GGMLQuantizationType[name.upper()]
                want = reference_dequantize(reference[name].data, qtype).reshape(original.shape)
                np.testing.assert_array_equal(got, want)
                np.testing.assert_allclose(got, original, atol=0.5)  # coarse: it is quantized
            else:
                np.testing.assert_array_equal(got, original.astype(np.float32))
        assert f.tensors["q8_0"].ggml_type is GGMLType.Q8_0
        assert f.tensors["f16"].nbytes == 5 * 32 * 2
        with pytest.raises(KeyError, match="no tensor named 'missing'"):
            f.load("missing")


# --- the bundled default model ------------------------------------------------------------


@pytest.fixture(scope="module")
def default_model(default_gguf):
    with read_gguf(default_gguf) as f:
        yield f


def test_default_model_metadata(default_model):
    md = default_model.metadata
    assert md["general.architecture"] == "llama"
    assert md["llama.block_count"] == 30
    assert md["llama.embedding_length"] == 576
    assert md["llama.attention.head_count"] == 9
    assert md["llama.attention.head_count_kv"] == 3
    assert len(md["tokenizer.ggml.tokens"]) == 49152
    assert len(md["tokenizer.ggml.merges"]) == 48900
    assert md["tokenizer.ggml.tokens"][1] == "<|im_start|>"


def test_default_model_tensor_directory(default_model):
    embedding = default_model.tensors["token_embd.weight"]
    assert embedding.ggml_type is GGMLType.Q8_0
    assert embedding.shape == (49152, 576)
    types = collections.Counter(t.ggml_type for t in default_model.tensors.values())
    assert types == {GGMLType.Q4_1: 210, GGMLType.F32: 61, GGMLType.Q8_0: 1}


def test_default_model_matches_gguf_reader(default_model, default_gguf):
    reference = {t.name: t for t in gguf.GGUFReader(default_gguf).tensors}
    assert list(reference) == list(default_model.tensors)
    checked = collections.Counter()
    for name, info in default_model.tensors.items():
        ref = reference[name]
        assert info.shape == tuple(int(d) for d in reversed(ref.shape))
        assert info.offset == ref.data_offset and info.nbytes == ref.n_bytes
        values = default_model.load(name)
        assert values.shape == info.shape
        assert torch.isfinite(values).all(), name
        if checked[info.ggml_type] < 3:  # the reference is slow: a few tensors of each type,
            checked[info.ggml_type] += 1  # and at most 1024 rows of each
            rows = ref.data.reshape(info.shape[0], -1)[:1024]
            want = reference_dequantize(rows, ref.tensor_type).reshape(-1, *info.shape[1:])
            np.testing.assert_allclose(values[:1024].numpy(), want, rtol=1e-6, atol=1e-7)
    assert set(checked) == {GGMLType.Q4_1, GGMLType.F32, GGMLType.Q8_0}


# --- corrupt files ----------------------------------------------------------------------
# A tiny hand-rolled writer, so each test corrupts exactly one field. Sizes and counts are chosen
# so that a reader that trusted them would try to allocate terabytes.

U8, U32, BOOL, STR, ARR = 0, 4, 7, 8, 9  # GGUF value types


def gstr(s: str | bytes, length: int | None = None) -> bytes:
    data = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(data) if length is None else length) + data


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def tensor_info(name: str, dims: tuple[int, ...], ggml_type: int = 0, offset: int = 0) -> bytes:
    return (
        gstr(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


ARCH = kv("general.architecture", STR, gstr("llama"))
# Two F32 tensors: 'a' of 8 floats at 0 and 'b' of 2x8 floats at 32.
TENSORS = [tensor_info("a", (8,)), tensor_info("b", (8, 2), offset=32)]


def build(kvs=(ARCH,), infos=TENSORS, data=bytes(96), *, magic=b"GGUF", version=3,
          n_tensors=None, n_kv=None) -> bytes:
    """A GGUF file; the counts in the header default to the real ones, data is padded to 32."""
    header = magic + struct.pack(
        "<IQQ", version, len(infos) if n_tensors is None else n_tensors,
        len(kvs) if n_kv is None else n_kv,
    )
    body = header + b"".join(kvs) + b"".join(infos)
    return body + bytes(-len(body) % 32) + data


def assert_rejected(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(content)
    tracemalloc.start()
    try:
        with pytest.raises(GGUFError, match=match) as caught:
            read_gguf(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(caught.value)
    assert peak < 4 * 2**20, f"{peak} bytes allocated while rejecting a tiny file"


def test_hand_built_file_is_valid(tmp_path):
    path = tmp_path / "ok.gguf"
    path.write_bytes(build(data=np.arange(24, dtype=np.float32).tobytes()))
    with read_gguf(path) as f:
        assert f.tensors["b"].shape == (2, 8)
        assert f.load("b")[1, 0].item() == 16.0


def case(id: str, content: bytes, match: str):
    return pytest.param(content, match, id=id)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        case("bad-magic", build(magic=b"GGML"), "not a GGUF file"),
        case("version-1", build(version=1), "unsupported GGUF version 1"),
        case("version-4", build(version=4), "unsupported GGUF version 4"),
        case("big-endian", build(version=3 << 24), "big-endian"),
        case("huge-tensor-count", build(n_tensors=2**60), "claims 1152921504606846976 tensors"),
        case("huge-kv-count", build(n_kv=2**60), "claims 1152921504606846976 metadata entries"),
        case("huge-key-length", build(kvs=[gstr("general.name", length=2**62)]),
             "truncated: key of metadata entry #0"),
        case("huge-string-length", build(kvs=[kv("k", STR, gstr("x", length=2**62))]),
             "truncated: metadata 'k'"),
        case("huge-array-length", build(kvs=[kv("k", ARR, struct.pack("<IQ", U8, 2**40))]),
             "claims 1099511627776 elements"),
        case("huge-string-array", build(kvs=[kv("k", ARR, struct.pack("<IQ", STR, 2**40))]),
             "claims 1099511627776 elements"),
        case("huge-nested-array", build(kvs=[kv("k", ARR, struct.pack("<IQ", ARR, 2**40))]),
             "claims 1099511627776 elements"),
        case("deep-nested-array",
             build(kvs=[kv("k", ARR, struct.pack("<IQ", ARR, 1) * 9 + struct.pack("<IQ", U8, 0))]),
             "nests arrays"),
        case("unknown-value-type", build(kvs=[kv("k", 13, b"\0" * 8)]),
             "'k' has unknown value type 13"),
        case("unknown-element-type", build(kvs=[kv("k", ARR, struct.pack("<IQ", 99, 1))]),
             "unknown value type 99"),
        case("bool-not-0-or-1", build(kvs=[kv("k", BOOL, b"\2")]), "bool"),
        case("bool-array-not-0-or-1",
             build(kvs=[kv("k", ARR, struct.pack("<IQ", BOOL, 3) + b"\1\0\2")]),
             "'k' holds a bool that is neither 0 nor 1"),
        case("duplicate-key", build(kvs=[ARCH, ARCH]),
             "duplicate metadata key 'general.architecture'"),
        case("non-utf8-key", build(kvs=[kv(b"\xff\xfekey", U8, b"\0")]),
             "key of metadata entry #0 .* not valid UTF-8"),
        case("non-utf8-value", build(kvs=[kv("k", STR, gstr(b"ab\xc3"))]),
             "metadata 'k' .* not valid UTF-8"),
        case("non-utf8-array-item",
             build(kvs=[kv("k", ARR, struct.pack("<IQ", STR, 2) + gstr("ok") + gstr(b"\x80"))]),
             r"metadata 'k'\[1\] .* not valid UTF-8"),
        case("alignment-0", build(kvs=[kv("general.alignment", U32, struct.pack("<I", 0))]),
             "power of two, not 0"),
        case("alignment-3", build(kvs=[kv("general.alignment", U32, struct.pack("<I", 3))]),
             "power of two, not 3"),
        case("alignment-string", build(kvs=[kv("general.alignment", STR, gstr("32"))]),
             "must be an integer"),
        case("unknown-tensor-type", build(infos=[tensor_info("a", (32,), ggml_type=99)]),
             "'a' has unknown ggml type 99"),
        case("removed-tensor-type", build(infos=[tensor_info("a", (32,), ggml_type=4)]),
             "unknown ggml type 4"),
        case("scratch-tensor-type", build(infos=[tensor_info("a", (32,), ggml_type=9)]),
             "Q8_1, which model files do not use"),
        case("n-dims-0", build(infos=[tensor_info("a", ())]), "'a' has 0 dimensions"),
        case("n-dims-9", build(infos=[tensor_info("a", (1,) * 9)]), "'a' has 9 dimensions"),
        case("zero-dim", build(infos=[tensor_info("a", (8, 0))]), "'a' has an empty dimension"),
        case("element-count-overflow", build(infos=[tensor_info("a", (2**32, 2**32, 2**32, 1))]),
             "'a' has too many elements"),
        case("huge-tensor", build(infos=[tensor_info("a", (2**31, 2**31))]),
             "truncated: tensor 'a' data ends"),
        case("misaligned-offset", build(infos=[TENSORS[0], tensor_info("b", (8, 2), offset=36)]),
             "'b' data offset 36 is not a multiple of the alignment 32"),
        case("offset-past-eof", build(infos=[TENSORS[0], tensor_info("b", (8, 2), offset=2**40)]),
             "truncated: tensor 'b' data ends at byte 10995116"),
        case("overlapping-tensors",
             build(infos=[tensor_info("a", (16,)), tensor_info("b", (8, 2), offset=32)]),
             "tensors 'a' .* and 'b' .* overlap"),
        case("duplicate-tensor-name", build(infos=[TENSORS[0], tensor_info("a", (8,), offset=32)]),
             "duplicate tensor name 'a'"),
        case("non-utf8-tensor-name",
             build(infos=[gstr(b"bad\xff") + struct.pack("<IQIQ", 1, 8, 0, 0)]),
             "name of tensor #0 .* not valid UTF-8"),
        case("empty-key", build(kvs=[ARCH, kv("", U8, b"\x01")]), "metadata entry #1 has an empty key"),
        case("empty-tensor-name", build(infos=[tensor_info("", (8,))]), "tensor #0 has an empty name"),
        case("tensor-name-past-ggml-max-name", build(infos=[tensor_info("n" * 64, (8,))]),
             "tensor #0 has a name of 64 bytes .* at most 63"),
        case("gap-between-tensors",
             build(infos=[tensor_info("a", (8,)), tensor_info("b", (8, 2), offset=64)], data=bytes(128)),
             "tensor 'b' data starts at byte .* but the layout puts it at byte .* without gaps"),
        case("partial-block-q8_0", build(infos=[tensor_info("q", (48,), ggml_type=GGMLType.Q8_0)]),
             "innermost dimension of 48, not a multiple of the block size 32"),
        case("partial-block-q4_k",
             build(infos=[tensor_info("q", (40, 256), ggml_type=GGMLType.Q4_K)]),
             "innermost dimension of 40, not a multiple of the block size 256"),
    ],
)
def test_corrupt_header(tmp_path, content, match):
    assert_rejected(tmp_path, content, match)


# Cut points: byte counts inside the fixed header and the first entries, fractions of the file,
# and "last-tensor" for the middle of the last tensor's data (the file ends in padding).
CUTS = [0, 3, 4, 12, 23, 24, 30, 60, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.85, "last-tensor"]


@pytest.mark.parametrize("cut", CUTS)
def test_truncated_file(roundtrip_file, tmp_path, cut):
    path, _ = roundtrip_file
    content = path.read_bytes()
    if cut == "last-tensor":
        with read_gguf(path) as f:
            last = f.tensors["q5_1"]
        end = last.offset + last.nbytes // 2
    else:
        end = int(len(content) * cut) if isinstance(cut, float) else cut
    assert_rejected(tmp_path, content[:end], "truncated|has room for at most")


def test_missing_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such file"):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(ModelNotFoundError, match="is a directory"):
        read_gguf(tmp_path)


def test_unsupported_type_loads_fail_cleanly(tmp_path):
    path = tmp_path / "iq.gguf"
    iq_tensor = tensor_info("w", (256,), ggml_type=GGMLType.IQ2_XXS)
    path.write_bytes(build(infos=[iq_tensor], data=bytes(66)))
    with read_gguf(path) as f:  # opens: the directory is valid; only dequantization is missing
        assert f.raw("w").nbytes == 66
        with pytest.raises(GGUFError, match="IQ2_XXS, which this engine cannot dequantize"):
            f.load("w")


def test_close(roundtrip_file):
    f = GGUFFile(roundtrip_file[0])
    raw = f.raw("f32")
    f.close()
    f.close()
    assert raw.nbytes == 2 * 3 * 8 * 4  # a view taken before close stays valid
    with pytest.raises(ValueError, match="closed"):
        f.load("f32")
