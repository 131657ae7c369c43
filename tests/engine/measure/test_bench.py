"""`python -m engine bench`: every configuration reports its figures, the ratios and the chat turns.

No timing assertions: CI machines are too noisy for them. Token counts are deterministic (greedy).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CONFIGS = ["native-f32", "native-bf16", "gguf", "llama.cpp"]
CHAT_CONFIGS = ("native-bf16", "gguf")
POSITIVE = ("load_seconds", "ttft_seconds", "prefill_tokens_per_second", "prefill_vs_ref",
            "decode_tokens_per_second", "decode_vs_ref", "peak_rss_mib")


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "bench", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_bench_json_has_every_config_with_ratios_and_chat_turns():
    out = bench("--json", "--prompt-tokens", "32", "--gen-tokens", "8", "--repeats", "1", "--threads", "2")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["reference"] == "llama.cpp"
    assert report["settings"]["prompt_tokens"] == 32 and report["settings"]["threads"] == 2
    assert report["machine"]["cpu"] and report["machine"]["torch"] and report["machine"]["llama_cpp_python"]
    assert list(report["configs"]) == CONFIGS
    for name, row in report["configs"].items():
        for key in POSITIVE:
            assert row[key] > 0, (name, key, row[key])
        assert 2 <= row["generated_tokens"] <= 8, name
        assert row["cuda_max_allocated_mib"] is None  # tests run on CPU
    ref = report["configs"]["llama.cpp"]
    assert ref["prefill_vs_ref"] == ref["decode_vs_ref"] == 1.0
    # The native decode step, split: the default model's 30 layers have 4 matrix products each,
    # plus the head; with those no-ops, the rest of the step is left, and it costs something.
    for name, weight_bytes in (("native-f32", 4), ("native-bf16", 2)):
        step = report["configs"][name]["step"]
        assert step["linears"] == 4 * 30 + 1, step
        assert 0 < step["outside_matmuls_ms"] < step["step_ms"], step
        # The roofline's bytes: 134.5 M weights (layers and the 49152 x 576 head) at 2 or 4 bytes,
        # plus a few MB of norms and cache; the stream bandwidth is whatever this machine gives.
        assert 134.5 * weight_bytes < step["mb_read_per_token"] < 134.5 * weight_bytes + 10, step
        assert step["stream_gb_per_s"] > 0 and step["roofline_tokens_per_second"] > 0, step
        assert step["gb_per_s"] == pytest.approx(step["mb_read_per_token"] / step["step_ms"], rel=0.02)
    assert "step" not in report["configs"]["gguf"] and "step" not in ref

    for name in CONFIGS:
        chat = report["configs"][name]["chat"]
        if name not in CHAT_CONFIGS:
            assert chat is None
            continue
        first, last = chat["turn1"], chat["turn8"]
        assert first["ttft_seconds"] > 0 and last["ttft_seconds"] > 0 and chat["turn8_vs_turn1"] > 0
        assert first["prefilled_tokens"] == first["prompt_tokens"] > 0
        # Turn 8 reuses the cached conversation: it prefills only a small part of a longer prompt.
        assert last["prompt_tokens"] > first["prompt_tokens"]
        assert 0 < last["prefilled_tokens"] < last["prompt_tokens"] // 2, (name, last)

    # Decode under a JSON-schema grammar, beside the unconstrained rate of the same worker: the
    # schema keeps the reply open, so every one of the 8 tokens is drawn under the mask.
    for name in CONFIGS:
        grammar = report["configs"][name]["grammar"]
        if name not in CHAT_CONFIGS:
            assert grammar is None
            continue
        assert grammar["generated_tokens"] == 8 and grammar["decode_tokens_per_second"] > 0, (name, grammar)
        (ratio,) = grammar["vs_unconstrained_runs"]
        assert ratio == grammar["vs_unconstrained"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (("--model", "no-such-model"), "unknown model 'no-such-model'"),
        (("--configs", "gguf,vulkan"), "unknown config(s) 'vulkan'"),
        (("--gen-tokens", "1"), "--gen-tokens must be at least 2"),
        (("--device", "tpu"), "unknown device 'tpu'"),
    ],
)
def test_bench_user_errors_print_one_line(args, message):
    out = bench(*args)
    assert out.returncode == 2 and "Traceback" not in out.stderr  # argument errors, before anything loads
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_bench_adds_a_row_per_quantized_folder(tmp_path):
    from quant.__main__ import main as quant_main
    from tiny_models import TinyConfig, write_tiny_llama

    source = write_tiny_llama(tmp_path / "tiny.gguf", TinyConfig(seed=3, context_length=128))
    out = tmp_path / "smol-int8"
    assert quant_main([str(source), "--scheme", "int8", "--out", str(out)]) == 0
    run = bench("--json", "--model", str(source), "--configs", "native-bf16,llama.cpp", "--quantized", str(out), "--prompt-tokens", "32",
                "--gen-tokens", "8", "--repeats", "2", "--threads", "2")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert list(report["configs"]) == ["native-bf16", "native smol-int8", "llama.cpp"]
    row = report["configs"]["native smol-int8"]
    assert row["backend"] == "native" and row["dtype"] == "bfloat16"
    assert all(row[key] > 0 for key in POSITIVE) and 2 <= row["generated_tokens"] <= 8
    assert 0 < row["chat"]["turn8"]["prefilled_tokens"] < row["chat"]["turn8"]["prompt_tokens"]  # quantized chats reuse the cache
    # Two rounds: every config ran once in each, the best round is the headline figure, and the
    # per-round ratios to the reference's run in the same round give a median.
    for name, r in report["configs"].items():
        assert len(r["decode_runs"]) == 2 and r["decode_tokens_per_second"] == max(r["decode_runs"]), name
        assert r["decode_vs_ref_median"] > 0, name
    assert report["configs"]["llama.cpp"]["decode_vs_ref_median"] == 1.0
    table = bench("--model", str(source), "--configs", "native-bf16,llama.cpp", "--prompt-tokens", "16",
                  "--gen-tokens", "4", "--repeats", "2", "--threads", "2")
    assert table.returncode == 0, table.stderr
    assert "best of 2 round(s)" in table.stdout and "median x ref 1.00" in table.stdout
    bad = bench("--quantized", str(tmp_path))
    assert bad.returncode == 1 and "not a folder written by `quant`" in bad.stderr
