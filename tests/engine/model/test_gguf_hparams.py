"""Hyperparameters llama.cpp aborts on (GGML_ASSERT, exit 134) are refused first, by name."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from engine.errors import ModelFormatError
from engine.model.gguf_hparams import check_gguf_hparams
from tiny_models import write_tiny_llama

# Each of these aborted the process inside llama.cpp (load or first decode) before the check.
ABORTING = [
    ({"llama.block_count": 513}, "llama.block_count"),
    ({"llama.block_count": 10**6}, "llama.block_count"),
    ({"llama.block_count": 0}, "llama.block_count"),
    ({"llama.attention.layer_norm_rms_epsilon": math.nan}, "llama.attention.layer_norm_rms_epsilon"),
    ({"llama.attention.layer_norm_rms_epsilon": -1.0}, "llama.attention.layer_norm_rms_epsilon"),
    ({"llama.rope.scaling.type": "weird"}, "llama.rope.scaling.type"),
    ({"llama.expert_count": 4, "llama.expert_used_count": 0}, "llama.expert_count"),
    ({"llama.expert_used_count": 2}, "llama.expert_used_count"),
]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=os.environ)


@pytest.mark.parametrize("metadata, field", ABORTING)
def test_chatapp_ask_refuses_what_llamacpp_aborts_on(tmp_path, metadata, field):
    path = write_tiny_llama(tmp_path / "x.gguf", metadata=metadata)
    out = run("chatapp", "ask", "--model", str(path), "hi")
    assert out.returncode == 1, (out.returncode, out.stderr[-500:])
    assert field in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize("backend", ["gguf", "native"])
def test_engine_load_refuses_by_name_on_both_backends(tmp_path, backend):
    # In a subprocess: without the check, llama.cpp takes the whole interpreter down.
    path = write_tiny_llama(tmp_path / "x.gguf", metadata={"llama.block_count": 513})
    code = (
        "import engine, sys\n"
        f"try: engine.load({str(path)!r}, backend={backend!r})\n"
        "except engine.ModelFormatError as e: print(e); sys.exit(3)\n"
    )
    out = run(sys.executable, "-c", code)
    assert out.returncode == 3, (out.returncode, out.stderr[-500:])
    assert "'llama.block_count' is 513" in out.stdout


def test_a_valid_file_passes_and_odd_shapes_are_named(tmp_path):
    from engine.formats.gguf import read_gguf

    with read_gguf(write_tiny_llama(tmp_path / "ok.gguf")) as f:
        metadata = dict(f.metadata)
    check_gguf_hparams(metadata)
    for bad, field in [
        ({"llama.attention.head_count_kv": 3}, "llama.attention.head_count"),
        ({"llama.embedding_length": 63}, "llama.embedding_length"),
        ({"llama.rope.dimension_count": 17}, "llama.rope.dimension_count"),
        ({"llama.rope.freq_base": math.inf}, "llama.rope.freq_base"),
        ({"llama.attention.head_count": [4, "x"]}, "llama.attention.head_count"),
    ]:
        with pytest.raises(ModelFormatError, match=field.replace(".", r"\.")):
            check_gguf_hparams({**metadata, **bad})
