"""Our Transformer against llama.cpp on tiny random F32 GGUF models, and the KV cache against a full pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from llamacpp_ref import llama_logits, open_llama
from tiny_models import TinyConfig, write_tiny_llama

import engine
from engine.errors import ContextOverflowError, ModelFormatError
from engine.model.cache import KVCache
from engine.model.config import ModelArgs

# F32 weights, F32 KV cache on both sides: differences are float32 rounding in a different
# order of operations. 1e-3 absolute on logits of magnitude ~10-30.
ATOL = 1e-3

TEXT = "the cat sat on the mat, then in a warm place, and then on another mat. " * 3

CONFIGS = {
    "gqa-tied": TinyConfig(),
    "gqa-untied": TinyConfig(tied=False, seed=1),
    "mha-untied-3-layers": TinyConfig(n_kv_heads=4, n_layers=3, tied=False, seed=2),
    "gqa-4to1": TinyConfig(n_heads=8, n_kv_heads=2, dim=128, seed=3),
    "rope-linear-scaling": TinyConfig(linear_rope_factor=4.0, seed=4),
    "rope-freq-factors": TinyConfig(rope_freq_factors=True, rope_base=500000.0, seed=5),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def tiny(request, tmp_path_factory):
    path = write_tiny_llama(tmp_path_factory.mktemp("tiny") / f"{request.param}.gguf", CONFIGS[request.param])
    return path, engine.load(path, backend="native", device="cpu", dtype="float32")


def test_logits_match_llama_cpp(tiny):
    path, model = tiny
    ids = model.tokenizer.encode(TEXT)
    assert len(ids) > 100
    ours = model.logits(ids).numpy()
    llm = open_llama(path, n_ctx=256)
    ref = llama_logits(llm, ids)
    assert ours.shape == ref.shape == (len(ids), model.args.vocab_size)
    assert np.abs(ours - ref).max() < ATOL


def test_model_args_from_metadata(tiny):
    path, model = tiny
    cfg = CONFIGS[path.stem]
    args = model.args
    assert (args.dim, args.n_layers, args.n_heads, args.n_kv_heads) == (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads)
    assert args.head_dim == cfg.dim // cfg.n_heads and args.ffn_dim == cfg.ffn_dim
    assert args.tied_output == cfg.tied
    assert args.context_length == cfg.context_length
    assert (args.rope_scaling is not None) == (cfg.linear_rope_factor is not None)


def test_kv_cache_decode_equals_full_forward(tiny):
    _, model = tiny
    ids = model.tokenizer.encode(TEXT)[:60]
    full = model.logits(ids)
    cache = model.new_cache(len(ids))
    with torch.inference_mode():
        # A prefill of 20, a chunk of 15, then one token at a time.
        steps = [model.runner.forward(ids[:20], cache, last_only=False), model.runner.forward(ids[20:35], cache, last_only=False)]
        steps += [model.runner.forward([t], cache, last_only=False) for t in ids[35:]]
    incremental = torch.cat(steps).float()
    assert cache.offset == len(ids)
    torch.testing.assert_close(incremental, full, atol=1e-4, rtol=0)


def test_cache_trim_then_refill_reproduces_logits(tiny):
    _, model = tiny
    ids = model.tokenizer.encode(TEXT)[:40]
    full = model.logits(ids)
    cache = model.new_cache(len(ids))
    with torch.inference_mode():
        model.runner.forward(ids[:30], cache, last_only=False)
        assert cache.trim(10) == 10 and cache.offset == 20
        again = model.runner.forward(ids[20:], cache, last_only=False)
    torch.testing.assert_close(again.float(), full[20:], atol=1e-4, rtol=0)


def test_cache_overflow_is_a_typed_error(tiny):
    _, model = tiny
    cache = model.new_cache(8)
    with torch.inference_mode(), pytest.raises(ContextOverflowError):
        model.runner.forward(list(range(9)), cache, last_only=True)
    with pytest.raises(ContextOverflowError):
        KVCache(model.args, model.args.context_length + 1)


def test_prompt_over_context_window_is_a_clear_error(tiny):
    _, model = tiny
    ids = [5] * (model.context_length + 3)
    with pytest.raises(ContextOverflowError, match="context window"):
        model.logits(ids)
    with pytest.raises(ContextOverflowError, match="context window"):
        next(iter(model.generate(ids, max_tokens=4)))


def test_bfloat16_logits_stay_close_to_float32(tiny):
    path, model = tiny
    ids = model.tokenizer.encode(TEXT)[:50]
    bf16 = engine.load(path, backend="native", device="cpu", dtype="bfloat16")
    assert bf16.model.tok_embeddings.weight.dtype == torch.bfloat16
    a, b = model.logits(ids), bf16.logits(ids)
    assert b.dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa: the argmax agrees almost everywhere.
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


def test_unsupported_architecture_is_rejected():
    meta = {"general.architecture": "mamba"}
    with pytest.raises(ModelFormatError, match="mamba"):
        ModelArgs.from_gguf(meta, frozenset())


def test_gqa_head_counts_must_divide():
    meta = {
        "general.architecture": "llama",
        "llama.embedding_length": 64,
        "llama.block_count": 1,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 3,
        "llama.feed_forward_length": 16,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.context_length": 32,
        "llama.vocab_size": 10,
    }
    with pytest.raises(ModelFormatError, match="KV heads"):
        ModelArgs.from_gguf(meta, frozenset())


def test_float16_overflow_is_detected_not_sampled(tmp_path):
    from engine.errors import NumericalError

    # Weights this large push activations past float16's 65504: the logits become Inf/NaN.
    path = write_tiny_llama(tmp_path / "huge.gguf", TinyConfig(weight_scale=300.0))
    fp16 = engine.load(path, backend="native", device="cpu", dtype="float16")
    fp16.retry_in_bfloat16 = False  # (on by default: tests/engine/runtime/test_non_finite.py)
    ids = fp16.tokenizer.encode(TEXT)[:20]
    assert not torch.isfinite(fp16.logits(ids)).all()
    with pytest.raises(NumericalError, match="float16"):
        list(fp16.generate(ids, max_tokens=3, temperature=0))
    fp32 = engine.load(path, backend="native", device="cpu", dtype="float32")
    assert torch.isfinite(fp32.logits(ids)).all()
