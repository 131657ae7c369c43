"""Memory needed to load a model, against what the device has: refused first, typed either way."""

from __future__ import annotations

import os
import resource
import subprocess

import pytest
import torch

import engine
from engine.errors import OutOfMemoryError
from engine.model import memory
from engine.runtime import native
from engine.runtime.native import NativeModel
from tiny_models import TinyConfig, write_tiny_llama


@pytest.mark.parametrize("tied", [True, False])
def test_the_estimate_counts_what_a_load_allocates(tmp_path, tied):
    path = write_tiny_llama(tmp_path / "m.gguf", TinyConfig(tied=tied))
    model = NativeModel(path, device="cpu", dtype="float32", pack_weights=False)
    params = sum(p.numel() for p in model.model.parameters())
    assert memory.parameter_count(model.args) == params
    cache = model.new_cache(100)
    assert memory.kv_cache_bytes(model.args, 100, 4) == cache.keys.nbytes + cache.values.nbytes
    est = memory.estimate(model.args, dtype_bytes=2, context=100)
    assert est.weights == params * 2 and est.total > est.weights + est.kv_cache


def test_refusal_names_the_numbers_and_what_would_fit(tmp_path, monkeypatch):
    path = write_tiny_llama(tmp_path / "m.gguf", TinyConfig(context_length=4096))
    args = NativeModel(path, device="cpu", dtype="float32").args
    need = memory.estimate(args, dtype_bytes=4, context=4096)
    # Room for the float32 weights and a quarter of the context's KV cache: the hint says --ctx 1024
    # (too short a window to choose on the caller's behalf: refused, with or without --ctx).
    monkeypatch.setattr(memory, "available_bytes", lambda device: need.total - need.kv_cache * 3 // 4)
    for context in (None, 4096):
        with pytest.raises(OutOfMemoryError, match=r"needs about .* but only .* available; try .*--ctx 1024") as err:
            engine.load(path, backend="native", device="cpu", dtype="float32", context_length=context)
        assert "KV cache for 4096 tokens" in str(err.value)
    # Enough for all of it with a shorter context: the same load goes through.
    assert engine.load(path, backend="native", device="cpu", dtype="float32", context_length=1024).context_length == 1024


@pytest.mark.parametrize("source", ["gguf", "hf"])
def test_the_models_own_window_is_shortened_to_fit_and_said(tmp_path, monkeypatch, source):
    """llama.cpp's --fit: where the model's full window does not fit but a useful one does, the
    load gets the longest that fits, with a note; a window the caller chose is never shortened."""
    from hf_models import HFTiny, build_hf_model, save_hf_model, write_tokenizer_files

    if source == "gguf":
        path = write_tiny_llama(tmp_path / "m.gguf", TinyConfig(context_length=16384))
    else:
        path = write_tokenizer_files(save_hf_model(build_hf_model(HFTiny("llama", max_positions=16384)), tmp_path / "hf"))
    args = engine.load(path, backend="native", device="cpu", dtype="float32").args
    need = memory.estimate(args, dtype_bytes=4, context=16384)
    monkeypatch.setattr(memory, "available_bytes", lambda device: need.total - need.kv_cache * 3 // 4)
    model = engine.load(path, backend="native", device="cpu", dtype="float32")
    assert model.context_length == 4096  # a quarter of the KV cache fits
    assert model.load_notes == (f"{model.name}: context window set to 4096 of the model's 16384 tokens, the most "
                                f"whose KV cache fits in the {memory._size(need.total - need.kv_cache * 3 // 4)} "
                                "available on cpu (--ctx N chooses another)",)
    assert memory.estimate(args, dtype_bytes=4, context=4096).total <= need.total - need.kv_cache * 3 // 4
    with pytest.raises(OutOfMemoryError, match="KV cache for 16384 tokens"):
        engine.load(path, backend="native", device="cpu", dtype="float32", context_length=16384)
    monkeypatch.undo()
    assert engine.load(path, backend="native", device="cpu", dtype="float32").load_notes == ()


@pytest.mark.parametrize("failure", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"),
    MemoryError(),
])
def test_allocation_failures_while_loading_are_typed(tmp_path, monkeypatch, failure):
    path = write_tiny_llama(tmp_path / "m.gguf")

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(native, "load_gguf_model", fail)
    with pytest.raises(OutOfMemoryError, match="m.gguf: ran out of memory while loading"):
        engine.load(path, backend="native", device="cpu", dtype="float32")


def test_other_runtime_errors_are_not_mistaken_for_memory(tmp_path, monkeypatch):
    path = write_tiny_llama(tmp_path / "m.gguf")
    monkeypatch.setattr(native, "load_gguf_model", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("shape bug")))
    with pytest.raises(RuntimeError, match="shape bug"):
        engine.load(path, backend="native", device="cpu", dtype="float32")


@pytest.mark.slow
def test_ask_under_an_address_space_limit_fails_in_one_line(default_gguf):
    # The case: 1.5 GB of address space, the bundled model natively in float32.
    limit = int(1.5 * 1024**3)
    out = subprocess.run(
        ["chatapp", "ask", "--model", "smollm2-135m", "--backend", "native", "--dtype", "float32", "hi"],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
        capture_output=True, text=True, timeout=120, env=os.environ,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-1000:]
    assert "loading needs about" in out.stderr and "available" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
