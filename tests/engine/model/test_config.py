"""RoPE scaling against Hugging Face transformers' own implementation, and device/dtype choice."""

from __future__ import annotations

import pytest
import torch

from engine.model.config import ModelArgs, RopeScaling
from engine.model.device import pick_device, pick_dtype
from engine.model.rope import rope_frequencies

LLAMA_3_2_1B = dict(
    dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64, ffn_dim=8192, vocab_size=128256,
    norm_eps=1e-5, rope_base=500000.0, rope_dim=64, context_length=131072, tied_output=True,
)


def hf_inv_freq(rope_type: str, **params) -> torch.Tensor:
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(
        hidden_size=2048, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rope_parameters={"rope_type": rope_type, "rope_theta": 500000.0, **params},
    )
    return ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")[0]


def test_llama3_rope_scaling_matches_transformers():
    scaling = RopeScaling(kind="llama3", factor=32.0, original_context=8192, low_freq_factor=1.0, high_freq_factor=4.0)
    ours = rope_frequencies(ModelArgs(**LLAMA_3_2_1B, rope_scaling=scaling))
    ref = hf_inv_freq(
        "llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
    )
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=0)


def test_linear_rope_scaling_matches_transformers():
    ours = rope_frequencies(ModelArgs(**LLAMA_3_2_1B, rope_scaling=RopeScaling(kind="linear", factor=4.0)))
    torch.testing.assert_close(ours, hf_inv_freq("linear", factor=4.0).float(), rtol=1e-6, atol=0)


def test_cpu_device_and_dtypes():
    cpu = torch.device("cpu")
    assert pick_device("cpu") == cpu
    assert pick_dtype("float32", cpu) == torch.float32
    assert pick_dtype("bf16", cpu) == torch.bfloat16
    assert pick_dtype("float16", cpu) == torch.float16
    assert pick_dtype("auto", cpu) in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="unknown dtype"):
        pick_dtype("float8", cpu)
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_a_missing_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        pick_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_prefers_cuda_and_a_half_dtype():
    device = pick_device("auto")
    assert device.type == "cuda"
    assert pick_dtype(None, device) in (torch.bfloat16, torch.float16)
