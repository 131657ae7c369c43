"""`python -m engine bench --shape NAME`: a random-weight model of a named shape, on CPU here.

No timing assertions (CI is noisy); the byte counts behind the roofline are deterministic.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from engine.measure.bench_shape import SHAPE_NAMES, shape_args

ROOT = Path(__file__).resolve().parents[3]
FIELDS = ("build_seconds", "ttft_cold_seconds", "ttft_warm_seconds", "reply_cold_seconds", "reply_warm_seconds",
          "decode_tokens_per_second", "mb_read_per_token",
          "stream_gb_per_s", "roofline_tokens_per_second", "roofline_fraction", "peak_rss_mib")


@pytest.fixture(scope="module")
def quantizer_path(tmp_path_factory) -> str:
    """A folder holding the "engine.model_quantizers" entry point exactly as pyproject.toml
    declares it, for processes started with it on PYTHONPATH: an installed copy of the project
    registers it there (pip install -e .), a checkout run from PYTHONPATH does not."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["engine.model_quantizers"]
    dist = tmp_path_factory.mktemp("entry") / "chatapp_quantizers-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: chatapp-quantizers\nVersion: 0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in declared.items())
    (dist / "entry_points.txt").write_text(f"[engine.model_quantizers]\n{lines}")
    return str(dist.parent)


def bench(*args: str, extra_path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "engine", "bench", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)


def shape_report(*extra: str, repeats: int = 2, extra_path: str | None = None) -> dict:
    out = bench("--shape", "smollm2-135m", "--device", "cpu", "--prompt-tokens", "16", "--gen-tokens", "4",
                "--repeats", str(repeats), "--threads", "2", "--json", *extra, extra_path=extra_path)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_shape_bench_on_cpu_reports_ttft_decode_and_roofline():
    report = shape_report()
    s, r = report["settings"], report["result"]
    assert s["shape"] == "smollm2-135m" and s["scheme"] == "bfloat16" and s["prompt_tokens"] == 16
    assert r["device"] == "cpu" and r["cuda_max_allocated_mib"] is None
    for key in FIELDS:
        assert r[key] > 0, (key, r[key])
    assert len(r["decode_runs"]) == 2 and r["decode_tokens_per_second"] == max(r["decode_runs"])
    # The default model's 134.5 M weights (30 layers and the tied 49152 x 576 head) in bfloat16,
    # plus norms and a 20-token cache.
    assert 269 < r["mb_read_per_token"] < 272, r
    assert r["roofline_tokens_per_second"] == pytest.approx(r["stream_gb_per_s"] * 1000 / r["mb_read_per_token"], rel=0.01)
    assert r["roofline_fraction"] == pytest.approx(r["decode_tokens_per_second"] / r["roofline_tokens_per_second"], rel=1e-3)
    assert r["ttft_cold_vs_warm"] == pytest.approx(r["ttft_cold_seconds"] / r["ttft_warm_seconds"], rel=1e-3)
    assert r["reply_cold_vs_warm"] == pytest.approx(r["reply_cold_seconds"] / r["reply_warm_seconds"], rel=1e-3)
    assert r["reply_cold_seconds"] > r["ttft_cold_seconds"]  # the reply holds its first token and 3 more
    assert s["decode"] == "auto" and r["decode_path"] == "plain"  # what generation uses on a CPU


def test_shape_bench_runs_the_static_path_on_request():
    report = shape_report("--decode", "static", repeats=1)
    assert report["settings"]["decode"] == report["result"]["decode_path"] == "static"
    assert all(report["result"][key] > 0 for key in FIELDS)


@pytest.mark.parametrize("scheme, lo, hi", [("int8", 160, 175), ("int4", 95, 110)])
def test_shape_bench_quantizes_through_quants_entry_point(quantizer_path, scheme, lo, hi):
    report = shape_report("--scheme", scheme, repeats=1, extra_path=quantizer_path)
    assert report["settings"]["scheme"] == scheme and report["settings"]["group_size"] == 32
    r = report["result"]
    assert all(r[key] > 0 for key in FIELDS)
    # Fewer bytes a step than bfloat16's 270 MB: in the CPU kernel's layout (quant/cpu_kernel.py)
    # INT8 g32 takes 1.25 bytes a weight, INT4 0.625, and the tied 28.3 M-weight head is INT8.
    assert lo < r["mb_read_per_token"] < hi, r


def test_table_output_names_every_figure():
    out = bench("--shape", "smollm2-135m", "--device", "cpu", "--prompt-tokens", "8", "--gen-tokens", "2",
                "--repeats", "1", "--threads", "2")
    assert out.returncode == 0, out.stderr
    assert "TTFT cold" in out.stdout and "warm" in out.stdout and "roofline" in out.stdout and "tok/s" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("--shape", "llama-9b"), "unknown shape 'llama-9b'"),
        (("--shape", "smollm2-135m", "--configs", "gguf"), "does not combine with --model, --configs or --quantized"),
        (("--scheme", "int4"), "--scheme applies to --shape models"),
        (("--shape", "smollm2-135m", "--scheme", "int3"), "invalid choice: 'int3'"),
        (("--shape", "smollm2-135m", "--gen-tokens", "1"), "--gen-tokens must be at least 2"),
    ],
)
def test_shape_bench_user_errors_print_one_line(args, message):
    out = bench(*args)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize("name", SHAPE_NAMES)
def test_named_shapes(name):
    args = shape_args(name)
    params = args.n_layers * (args.dim * (args.n_heads + 2 * args.n_kv_heads) * args.head_dim
                              + args.n_heads * args.head_dim * args.dim + 3 * args.dim * args.ffn_dim)
    params += args.vocab_size * args.dim * (1 if args.tied_output else 2)
    # Parameter counts without the norms, as the model cards give them (1.24 B, 8.03 B, 134.5 M).
    want = {"llama-3.2-1b": 1.2358e9, "llama-3.1-8b": 8.0300e9, "smollm2-135m": 1.3451e8}[name]
    assert params == pytest.approx(want, rel=2e-3)
    if name.startswith("llama"):
        assert args.rope_scaling.kind == "llama3" and args.rope_base == 500000 and args.n_kv_heads == 8


def test_smollm2_shape_is_the_default_models():
    from engine.formats.gguf import read_gguf
    from engine.hub.registry import resolve
    from engine.model.config import ModelArgs

    _, path = resolve(None, download=False)
    with read_gguf(path) as gguf:
        args = ModelArgs.from_gguf(gguf.metadata, frozenset(gguf.tensors))
    assert args.norm_eps == pytest.approx(1e-5)  # GGUF holds it in float32; config.json says 1e-5
    assert dataclasses.replace(args, norm_eps=1e-5) == shape_args("smollm2-135m")


def test_random_model_runs_in_bfloat16():
    from engine.measure.bench_shape import random_model
    from engine.model.cache import KVCache
    from engine.runtime.runner import DecodeRunner

    args = shape_args("smollm2-135m")
    model = random_model(args, device=torch.device("cpu"), dtype=torch.bfloat16)
    assert model.layers[0].attention.wqkv.weight.dtype == torch.bfloat16
    assert model.norm.weight.dtype == torch.float32 and bool((model.norm.weight == 1).all())
    assert abs(float(model.tok_embeddings.weight.float().std()) - 0.02) < 1e-3
    runner = DecodeRunner(model, device=torch.device("cpu"), dtype=torch.bfloat16)
    cache = KVCache(args, 8, dtype=torch.bfloat16, device=torch.device("cpu"))
    logits = runner.prefill([1, 2, 3], cache)
    assert logits.shape == (1, args.vocab_size) and logits.isfinite().all()
    logits = runner.decode(logits.argmax(-1), cache)
    assert logits.shape == (1, args.vocab_size) and cache.offset == 4
