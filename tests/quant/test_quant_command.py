"""The `quant` command and its checkpoint folder: write, load back with engine.load(DIR), refuse bad input.

Bounds: a folder loaded back computes exactly what the in-memory quantized model computed (the
same tensors and kernels: logits equal to 1e-5); against the float model the tiny random models
keep the bounds of tests/test_quant_core.py.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tiny_models import TinyConfig, write_tiny_llama

import engine
from engine.errors import ModelFormatError
from engine.runtime.native import NativeModel
from quant.__main__ import main as quant_main
from quant.checkpoint import QUANTIZATION, WEIGHTS, sha256_of
from quant.cpu_kernel import CPUQuantLinear
from quant.linear import Int4Linear, Int8Embedding, Int8Linear, quantize_model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("src") / "tiny.gguf", TinyConfig(seed=7, ffn_dim=128))


def quant(*argv: str) -> int:
    return quant_main([str(a) for a in argv])


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("scheme, extra", [("int8", ()), ("int4", ("--group-size", "32")), ("int4", ("--group-size", "64"))])
def test_written_folder_loads_and_matches_the_in_memory_model(tiny_gguf, tmp_path, scheme, extra):
    out = tmp_path / "q"
    assert quant(tiny_gguf, "--scheme", scheme, *extra, "--out", out) == 0
    assert {p.name for p in out.iterdir()} == {WEIGHTS, QUANTIZATION, "model_args.json", "tokenizer_metadata.json"}
    info = json.loads((out / QUANTIZATION).read_text())
    assert info["scheme"] == scheme and info["source"]["sha256"] == sha256_of(tiny_gguf)
    assert info["tool"]["name"] == "quant" and info["tool"]["version"] and info["torch"] == torch.__version__
    assert set(info["kept_float"]) == {"norm.weight", "layers.0.attention_norm.weight", "layers.0.ffn_norm.weight",
                                       "layers.1.attention_norm.weight", "layers.1.ffn_norm.weight"}
    assert info["quantized"]["tok_embeddings.weight"]["scheme"] == "int8"

    loaded = engine.load(out, device="cpu", dtype="float32")
    assert loaded.backend == "native" and isinstance(loaded.model.tok_embeddings, Int8Embedding)
    layer_type = Int8Linear if scheme == "int8" else Int4Linear
    assert isinstance(loaded.model.layers[1].feed_forward.w2, layer_type)

    ref = NativeModel(tiny_gguf, dtype="float32", pack_weights=False)
    ids = list(range(3, 80))
    float_logits = ref.logits(ids)
    quantize_model(ref.model, scheme, int(extra[1]) if extra else 32)
    torch.testing.assert_close(loaded.logits(ids), ref.logits(ids), atol=1e-5, rtol=1e-5)
    agree = (loaded.logits(ids).argmax(-1) == float_logits.argmax(-1)).float().mean()
    assert agree >= (0.9 if scheme == "int8" else 0.6)
    result = list(loaded.generate(ids[:10], max_tokens=6, temperature=0))[-1]
    assert result.completion_tokens == 6
    assert loaded.tokenizer.encode("hello world") == ref.tokenizer.encode("hello world")


@pytest.mark.parametrize("sequential", [False, True])
def test_calibrate_rounds_with_gptq_and_records_it(tiny_gguf, tmp_path, sequential):
    """--calibrate: every layer linear is GPTQ-rounded, the metadata names the text, and the
    folder runs. Closer to float than plain rounding on the calibration text itself (the
    held-out quality claim is tests/test_gptq.py's, on the default model)."""
    ref = NativeModel(tiny_gguf, dtype="float32", pack_weights=False)
    ids = [int(t) for t in torch.randint(3, ref.args.vocab_size, (600,), generator=torch.Generator().manual_seed(3))]
    text = tmp_path / "calib.txt"
    text.write_text(ref.tokenizer.decode(ids))
    plain, gptq = tmp_path / "plain", tmp_path / "gptq"
    assert quant(tiny_gguf, "--scheme", "int4", "--group-size", "64", "--out", plain) == 0
    argv = ["--calibrate", text] + (["--sequential"] if sequential else [])
    assert quant(tiny_gguf, "--scheme", "int4", "--group-size", "64", *argv, "--out", gptq) == 0

    info = json.loads((gptq / QUANTIZATION).read_text())
    layers = {k: v for k, v in info["quantized"].items() if k.startswith("layers.")}
    assert layers and all(v["rounding"] == "gptq" for v in layers.values())
    calibration = info["calibration"]
    assert calibration["method"] == "gptq" and calibration["sha256"] == sha256_of(text)
    assert calibration["hessians"] == ("sequential" if sequential else "float model")
    assert calibration["tokens"] == len(ref.tokenizer.encode(text.read_text()))
    assert json.loads((plain / QUANTIZATION).read_text())["calibration"] is None

    probe = ref.tokenizer.encode(text.read_text())[:200]
    target = torch.log_softmax(ref.logits(probe), -1)
    def kl(folder):
        lp = torch.log_softmax(engine.load(folder, device="cpu", dtype="float32").logits(probe), -1)
        return float((target.exp() * (target - lp)).sum(-1).mean())
    assert kl(gptq) < 0.9 * kl(plain)


def test_bad_requests_are_refused_before_anything_is_written(tiny_gguf, tmp_path, capsys):
    out = tmp_path / "q"
    cases = [
        (("--scheme", "int3"), "unknown scheme 'int3'"),
        (("--scheme", "int4", "--group-size", "48"), "--group-size must be one of 32, 64, 128"),
        (("--scheme", "int8", "--group-size", "16"), "--group-size must be one of 32, 64, 128"),
        (("--scheme", "int4", "--eval", tmp_path / "missing.txt"), "no such file"),
        (("--scheme", "int4", "--group-size", "64", "--format", "gguf"), "Q4_0, whose groups are 32 wide"),
        (("--scheme", "int8", "--calibrate", tiny_gguf), "--calibrate applies to int4 only"),
        (("--scheme", "int4", "--calibrate", tmp_path / "missing.txt"), "no such file"),
        (("--scheme", "int4", "--sequential"), "--sequential needs --calibrate FILE"),
    ]
    for argv, message in cases:
        assert quant(tiny_gguf, *argv, "--out", out) == 2  # argparse's status for a usage error
        assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_needs_force(tiny_gguf, tmp_path, capsys):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert quant(tiny_gguf, "--scheme", "int8", "--out", out) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    # --force replaces only quant's own output (issue 16, item 7): this folder is the user's.
    assert quant(tiny_gguf, "--scheme", "int8", "--out", out, "--force") == 1
    assert "was not written by quant" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (out / "keep.txt").unlink()
    out.rmdir()
    assert quant(tiny_gguf, "--scheme", "int4", "--out", out) == 0
    assert quant(tiny_gguf, "--scheme", "int8", "--out", out, "--force") == 0
    assert json.loads((out / QUANTIZATION).read_text())["scheme"] == "int8"
    assert leftovers(tmp_path) == []


def test_a_source_that_is_not_a_model_leaves_nothing(tmp_path, capsys):
    fake = tmp_path / "notes.gguf"
    fake.write_text("this is not a model\n" * 10)
    assert quant(fake, "--scheme", "int8", "--out", tmp_path / "q") == 1
    assert "notes.gguf" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.gguf"]
    (tmp_path / "file").write_text("x")
    assert quant(fake, "--scheme", "int8", "--out", tmp_path / "file" / "q") == 1  # parent is not a folder
    assert "does not exist" in capsys.readouterr().err


def test_an_interrupted_write_leaves_nothing_that_looks_like_a_model(tiny_gguf, tmp_path, monkeypatch):
    import safetensors.torch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    assert quant(tiny_gguf, "--scheme", "int4", "--out", tmp_path / "q") == 130
    assert list(tmp_path.iterdir()) == []


def test_tampered_folders_are_refused_by_name(tiny_gguf, tmp_path):
    good = tmp_path / "good"
    assert quant(tiny_gguf, "--scheme", "int4", "--out", good) == 0

    def variant(name, edit):
        folder = tmp_path / name
        shutil.copytree(good, folder)
        edit(folder)
        return folder

    def set_scheme(folder):
        info = json.loads((folder / QUANTIZATION).read_text())
        info["quantized"]["layers.0.attention.wo.weight"]["scheme"] = "int3"
        (folder / QUANTIZATION).write_text(json.dumps(info))

    def truncate(folder):
        data = (folder / WEIGHTS).read_bytes()
        (folder / WEIGHTS).write_bytes(data[: len(data) // 2])

    def drop_tensor(folder):
        from safetensors.torch import load_file, save_file

        state = load_file(str(folder / WEIGHTS))
        del state["layers.1.feed_forward.w2.minimum"]
        save_file(state, str(folder / WEIGHTS))

    def wrong_group(folder):
        info = json.loads((folder / QUANTIZATION).read_text())
        info["quantized"]["layers.0.feed_forward.w2.weight"]["group_size"] = 64  # the stored scales are for 32
        (folder / QUANTIZATION).write_text(json.dumps(info))

    cases = [
        (set_scheme, "unknown scheme 'int3'"),
        (truncate, "not a readable safetensors file"),
        (drop_tensor, "'layers.1.feed_forward.w2.minimum' is missing"),
        (wrong_group, "layers.0.feed_forward.w2.scale"),
        (lambda f: (f / QUANTIZATION).write_text("{"), "cannot read it"),
        (lambda f: (f / "model_args.json").write_text('{"architecture": "llama", "dim": -1}'), "not a valid model config"),
    ]
    for i, (edit, message) in enumerate(cases):
        with pytest.raises(ModelFormatError, match=message):
            engine.load(variant(f"bad{i}", edit))
    # A folder named like another scheme is still read by its metadata.
    renamed = good.rename(tmp_path / "model-int8")
    wo = engine.load(renamed).model.layers[0].attention.wo  # bfloat16 on CPU: packed for the INT4 kernel
    assert isinstance(wo, CPUQuantLinear) and wo.scheme == "int4"
    (renamed / QUANTIZATION).unlink()
    with pytest.raises(ModelFormatError, match="no config.json or quantization.json"):
        engine.load(renamed)


def test_gguf_export_runs_on_llama_cpp(tiny_gguf, tmp_path):
    out = tmp_path / "q"
    assert quant(tiny_gguf, "--scheme", "int8", "--format", "gguf", "--out", out) == 0
    gguf_file = out / "model-Q8_0.gguf"
    assert gguf_file.is_file() and leftovers(tmp_path) == []
    fast = engine.load(gguf_file, backend="gguf")
    ours = engine.load(gguf_file, backend="native", dtype="float32")
    ids = list(range(3, 60))
    # llama.cpp rounds activations to 8 bits for Q8_0 products; ours are float: compare argmax.
    agree = (fast.logits(ids).argmax(-1) == ours.logits(ids).argmax(-1)).float().mean()
    assert agree >= 0.9


def test_eval_prints_one_table(tiny_gguf, tmp_path, capsys):
    text = tmp_path / "eval.txt"
    text.write_text(" ".join(f"word{i % 37} and more text {i}" for i in range(120)))
    assert quant(tiny_gguf, "--scheme", "int8", "--out", tmp_path / "q", "--eval", text, "--ctx", "64") == 0
    table = capsys.readouterr().out
    lines = [line for line in table.splitlines() if line.startswith(("source", "q "))]
    assert len(lines) == 3, table
    assert "perplexity" in table and "mean KL" in table and "decode tok/s" in table
    int8_row = lines[-1].split()
    kl, top1 = float(int8_row[-3]), float(int8_row[-2].rstrip("%"))
    assert 0 <= kl < 0.05 and top1 >= 80


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_output_folder_and_files_get_the_usual_permissions(tiny_gguf, tmp_path, umask):
    """tempfile makes 0700 folders and 0600 files; the finished model follows the umask like
    any file the user writes (0755 / 0644 under 022)."""
    import os
    import stat

    old = os.umask(umask)
    try:
        out = tmp_path / "q"
        assert quant(tiny_gguf, "--scheme", "int8", "--format", "gguf", "--out", out) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert "model-Q8_0.gguf" in modes and set(modes.values()) == {0o666 & ~umask}, modes
