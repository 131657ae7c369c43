"""Llama, Llama 3, Mistral and Qwen2 from Hugging Face safetensors folders, against transformers.

Tiny random models of each family (tests/hf_models.py) are saved with `save_pretrained`,
loaded by `engine.formats.hf`, and compared with transformers' own float32 forward pass on
the same weights (eager attention). Tolerance: 1e-4 max absolute difference on logits of
magnitude ~15-30, both float32: what is left is rounding in a different order of operations
(observed 7e-6 to 3e-5). The same models converted to GGUF as llama.cpp's converter does must
give the same logits through our GGUF loader, and llama.cpp itself agrees within 1e-3 (its F32
path, as in test_model.py; observed up to 4e-5).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_models import HFTiny, build_hf_model, save_hf_model, write_gguf_from_hf, write_raw_safetensors

import engine
from engine.errors import ModelFormatError, ModelNotFoundError
from engine.formats.gguf import read_gguf
from engine.formats.hf import hf_weight_files, read_safetensors_header
from engine.model.cache import KVCache
from engine.model.config import ModelArgs, RopeScaling
from engine.model.decoder import Transformer
from engine.model.load_gguf import load_gguf_model
from engine.model.load_hf import load_hf_weights, read_hf_config
from engine.model.rope import dynamic_ntk_frequencies, rope_frequencies

ATOL = 1e-4
LLAMA_CPP_ATOL = 1e-3
SEQ = 24  # longer than the sliding windows (8) and the dynamic-NTK model's trained length (16)
WINDOW = 8

SPECS = {
    "llama-untied": HFTiny("llama", seed=0),
    "llama-tied": HFTiny("llama", tied=True, seed=1),
    "llama3-rope": HFTiny("llama", rope_theta=500000.0, seed=2, rope={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }),
    "rope-linear": HFTiny("llama", rope={"type": "linear", "factor": 4.0}, seed=3),
    "rope-dynamic": HFTiny("llama", rope={"rope_type": "dynamic", "factor": 2.0}, max_positions=16, seed=4),
    "rope-yarn": HFTiny("llama", rope={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
                        seed=5),
    "qwen2-untied": HFTiny("qwen2", seed=6),
    "qwen2-tied": HFTiny("qwen2", tied=True, seed=7),
    "qwen2-window": HFTiny("qwen2", n_layers=3, seed=8, extra={
        "use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1,  # layer 0 full, 1-2 windowed
    }),
    "mistral-window": HFTiny("mistral", n_layers=3, extra={"sliding_window": WINDOW}, seed=9),
}
SHARDED = {"llama-untied": "40KB"}  # several shards and an index
# llama.cpp has no dynamic NTK and runs neither arch with a sliding window: no GGUF form.
NO_GGUF = {"rope-dynamic", "qwen2-window", "mistral-window"}
# Prefill 7, chunks of 6 and 5, then single-token decode steps to SEQ.
STEPS = [7, 6, 5] + [1] * (SEQ - 18)


@dataclasses.dataclass
class Family:
    name: str
    hf: torch.nn.Module
    folder: Path
    args: ModelArgs
    ours: Transformer
    ids: torch.Tensor  # (1, SEQ)
    reference: torch.Tensor  # transformers' logits, (SEQ, vocab)


_BUILT: dict[str, Family] = {}


@pytest.fixture(scope="module", params=list(SPECS))
def family(request, tmp_path_factory) -> Family:
    return _family(request.param, tmp_path_factory)


def _family(name: str, tmp_path_factory) -> Family:
    if name in _BUILT:
        return _BUILT[name]
    hf = build_hf_model(SPECS[name])
    folder = save_hf_model(hf, tmp_path_factory.mktemp(name), max_shard_size=SHARDED.get(name))
    args = read_hf_config(folder)
    ours = load_hf_weights(folder, args, dtype=torch.float32, device="cpu")
    ids = torch.randint(0, args.vocab_size, (1, SEQ), generator=torch.Generator().manual_seed(100))
    with torch.inference_mode():
        reference = hf(ids).logits[0]
    _BUILT[name] = Family(name, hf, folder, args, ours, ids, reference)
    return _BUILT[name]


def run_in_steps(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    cache = KVCache(model.args, ids.shape[1])
    out, start = [], 0
    with torch.inference_mode():
        for n in STEPS:
            out.append(model(ids[:, start : start + n], cache)[0])
            start += n
    assert cache.offset == ids.shape[1]
    return torch.cat(out)


def hf_in_steps(hf, ids: torch.Tensor) -> torch.Tensor:
    out, start, past = [], 0, None
    with torch.inference_mode():
        for n in STEPS:
            result = hf(ids[:, start : start + n], past_key_values=past, use_cache=True)
            out.append(result.logits[0])
            past, start = result.past_key_values, start + n
    return torch.cat(out)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# --- against transformers --------------------------------------------------------------------


def test_prefill_matches_transformers(family):
    with torch.inference_mode():
        logits = family.ours(family.ids)[0]
    assert logits.shape == family.reference.shape == (SEQ, family.args.vocab_size)
    assert family.reference.abs().max() > 1  # weights large enough that the comparison means something
    assert max_diff(logits, family.reference) < ATOL


def test_kv_cache_prefill_chunks_and_decode_match_transformers(family):
    ours = run_in_steps(family.ours, family.ids)
    if family.name == "rope-dynamic":
        # Past the trained length each pass rotates its new keys with frequencies for its own
        # end, and cached keys keep theirs: transformers does the same step by step, so
        # stepwise logits differ from one full pass, in both implementations alike.
        reference = hf_in_steps(family.hf, family.ids)
        assert max_diff(reference, family.reference) > 1e-3
    else:
        reference = family.reference
    assert max_diff(ours, reference) < ATOL


def test_cache_trim_then_refill_matches_transformers(family):
    """The cache keeps every position, windowed or not, so a trimmed cache refills exactly."""
    if family.name == "rope-dynamic":
        return  # stepwise logits there depend on the steps, checked above
    cache = KVCache(family.args, SEQ)
    with torch.inference_mode():
        family.ours(family.ids[:, :20], cache)
        assert cache.trim(8) == 8
        again = family.ours(family.ids[:, 12:], cache)[0]
    assert max_diff(again, family.reference[12:]) < ATOL


SWITCHED_OFF = {
    "llama3-rope": {"rope_scaling": None},
    "rope-linear": {"rope_scaling": None},
    "rope-dynamic": {"rope_scaling": None},
    "rope-yarn": {"rope_scaling": None},
    "qwen2-window": {"sliding_window": None, "full_attention_layers": ()},
    "mistral-window": {"sliding_window": None},
}


@pytest.mark.parametrize("name", list(SWITCHED_OFF))
def test_each_switch_changes_the_logits(name, tmp_path):
    """Without its RoPE scaling or window the same weights give other logits: the tests above
    compare something that matters."""
    hf = build_hf_model(SPECS[name])
    args = read_hf_config(save_hf_model(hf, tmp_path))
    ours = load_hf_weights(tmp_path, args, dtype=torch.float32, device="cpu")
    plain = Transformer(dataclasses.replace(args, **SWITCHED_OFF[name]))
    plain.load_state_dict(ours.state_dict())
    ids = torch.randint(0, args.vocab_size, (1, SEQ), generator=torch.Generator().manual_seed(100))
    with torch.inference_mode():
        assert max_diff(ours(ids), plain(ids)) > 1e-2


def test_sharded_checkpoint_reads_through_its_index(family):
    if family.name not in SHARDED:
        return
    shards = sorted(p.name for p in family.folder.glob("*.safetensors"))
    assert len(shards) > 1 and (family.folder / "model.safetensors.index.json").is_file()
    files = hf_weight_files(family.folder)
    assert {path.name for path, _ in files.values()} == set(shards)


def test_qwen2_and_window_switches_come_from_the_config(family):
    args = family.args
    assert args.qkv_bias == family.name.startswith("qwen2")
    assert args.tied_output == SPECS[family.name].tied
    expected_window = {"qwen2-window": WINDOW, "mistral-window": WINDOW}.get(family.name)
    assert args.sliding_window == expected_window
    windows = [layer.attention.window for layer in family.ours.layers]
    assert windows == {"qwen2-window": [None, WINDOW, WINDOW], "mistral-window": [WINDOW] * 3}.get(
        family.name, [None] * args.n_layers
    )


# --- GGUF conversions of the same weights ----------------------------------------------------


@pytest.fixture(scope="module", params=[name for name in SPECS if name not in NO_GGUF])
def gguf_family(request, tmp_path_factory) -> Family:
    """The families llama.cpp has a GGUF form for (not dynamic RoPE or sliding windows: NO_GGUF)."""
    return _family(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def converted(gguf_family, tmp_path_factory) -> Path:
    return write_gguf_from_hf(gguf_family.hf, tmp_path_factory.mktemp("gguf") / f"{gguf_family.name}.gguf")


def test_gguf_conversion_matches_transformers(gguf_family, converted):
    family = gguf_family
    with read_gguf(converted) as f:
        args = ModelArgs.from_gguf(f.metadata, frozenset(f.tensors))
        model = load_gguf_model(f, args, dtype=torch.float32, device=torch.device("cpu"))
    assert args.qkv_bias == family.args.qkv_bias and args.tied_output == family.args.tied_output
    with torch.inference_mode():
        full = model(family.ids)[0]
    assert max_diff(full, family.reference) < ATOL
    assert max_diff(run_in_steps(model, family.ids), family.reference) < ATOL


def test_llama_cpp_agrees_on_the_converted_gguf(gguf_family, converted):
    """llama.cpp on the converted file: qwen2 rows are not permuted, and its YaRN is transformers'."""
    family = gguf_family
    from llamacpp_ref import llama_logits, open_llama

    llm = open_llama(converted, n_ctx=64)
    ref = llama_logits(llm, family.ids[0].tolist())
    assert np.abs(ref - family.reference.numpy()).max() < LLAMA_CPP_ATOL


# --- RoPE and config parsing against transformers' own functions ------------------------------


def hf_rope(rope_type: str, max_positions: int = 4096, seq_len: int | None = None, **params):
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(
        hidden_size=2048, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=max_positions,
        rope_parameters={"rope_type": rope_type, "rope_theta": 500000.0, **params},
    )
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)
    return config.to_dict(), inv_freq, attention_factor


YARN_CASES = {
    "defaults": dict(factor=4.0, original_max_position_embeddings=1024),
    "betas-untruncated": dict(factor=8.0, original_max_position_embeddings=512, beta_fast=16, beta_slow=2,
                              truncate=False),
    "mscale": dict(factor=16.0, original_max_position_embeddings=256, mscale=0.707, mscale_all_dim=1.0),
    "attention-factor": dict(factor=4.0, original_max_position_embeddings=1024, attention_factor=1.3),
}


@pytest.mark.parametrize("case", list(YARN_CASES))
def test_yarn_matches_transformers(case):
    config, inv_freq, attention_factor = hf_rope("yarn", **YARN_CASES[case])
    args = ModelArgs.from_hf_config({**config, "architectures": ["LlamaForCausalLM"]})
    assert args.rope_scaling.kind == "yarn"
    assert args.rope_scaling.attention_factor == pytest.approx(attention_factor, rel=1e-12)
    torch.testing.assert_close(rope_frequencies(args), inv_freq.float(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("seq_len", [1000, 4096, 5000, 12000])
def test_dynamic_ntk_matches_transformers(seq_len):
    config, _, _ = hf_rope("dynamic", factor=4.0)
    args = ModelArgs.from_hf_config({**config, "architectures": ["LlamaForCausalLM"]})
    assert args.context_length == 4 * 4096  # dynamic NTK runs past the trained length
    _, inv_freq, _ = hf_rope("dynamic", factor=4.0, seq_len=seq_len)
    torch.testing.assert_close(dynamic_ntk_frequencies(args, seq_len), inv_freq.float(), rtol=1e-5, atol=0)
    if seq_len <= 4096:
        torch.testing.assert_close(rope_frequencies(args), inv_freq.float(), rtol=1e-6, atol=0)


LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
    "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
}


def test_transformers_4_and_5_config_layouts_read_alike():
    old = {**LLAMA_CONFIG, "rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    new = {**LLAMA_CONFIG, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}}
    del new["rope_theta"]
    assert ModelArgs.from_hf_config(old) == ModelArgs.from_hf_config(new)
    args = ModelArgs.from_hf_config(old)
    assert args.rope_base == 500000.0 and args.rope_scaling == RopeScaling("linear", 2.0)
    assert ModelArgs.from_hf_config({**LLAMA_CONFIG, "head_dim": 32}).head_dim == 32


def qwen2(**extra) -> dict:
    return {**LLAMA_CONFIG, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **extra}


@pytest.mark.parametrize("config, window, full_layers", [
    (qwen2(sliding_window=32, use_sliding_window=False, max_window_layers=2), None, ()),
    (qwen2(sliding_window=32, use_sliding_window=True, max_window_layers=2), 32, (0, 1)),
    (qwen2(sliding_window=32, use_sliding_window=True, max_window_layers=28), None, ()),  # no layer slides
    (qwen2(sliding_window=32, use_sliding_window=True,
           layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"]), 32, (1, 3)),
    (qwen2(sliding_window=None, use_sliding_window=True), None, ()),
    ({**LLAMA_CONFIG, "architectures": ["MistralForCausalLM"], "model_type": "mistral", "sliding_window": 16}, 16, ()),
    ({**LLAMA_CONFIG, "architectures": ["MistralForCausalLM"], "model_type": "mistral", "sliding_window": None}, None, ()),
    ({**LLAMA_CONFIG, "architectures": ["MistralForCausalLM"], "model_type": "mistral"}, 4096, ()),  # its default
    ({**LLAMA_CONFIG, "sliding_window": 16}, None, ()),  # Llama has none
], ids=["qwen2-off", "qwen2-max-window-layers", "qwen2-none-slide", "qwen2-layer-types", "qwen2-null-window",
        "mistral", "mistral-null", "mistral-default", "llama-ignores"])
def test_sliding_window_follows_transformers(config, window, full_layers):
    args = ModelArgs.from_hf_config(config)
    assert (args.sliding_window, args.full_attention_layers) == (window, full_layers)


@pytest.mark.parametrize("change, message", [
    ({"architectures": ["GemmaForCausalLM"]}, "GemmaForCausalLM"),
    ({"architectures": None, "model_type": "phi3"}, "phi3"),
    ({"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}}, "longrope"),
    ({"rope_scaling": {"type": "su", "factor": 2.0}}, "'su'"),
    ({"rope_scaling": {"rope_type": "mystery", "factor": 2.0}}, "mystery"),
    ({"partial_rotary_factor": 0.5}, "partial"),
    ({"hidden_act": "gelu"}, "gelu"),
    ({"attention_bias": True}, "attention_bias"),
    ({"quantization_config": {"quant_method": "awq"}}, "awq"),
    ({"hidden_size": "64"}, "hidden_size"),
    ({"num_key_value_heads": 3}, "KV heads"),
])
def test_unsupported_configs_are_refused_by_name(change, message):
    config = {k: v for k, v in {**LLAMA_CONFIG, **change}.items() if v is not None}
    with pytest.raises(ModelFormatError, match=message):
        ModelArgs.from_hf_config(config)


def test_gguf_with_a_sliding_window_or_unknown_scaling_is_refused():
    meta = {"general.architecture": "llama", "llama.embedding_length": 64, "llama.block_count": 1,
            "llama.attention.head_count": 4, "llama.feed_forward_length": 16, "llama.context_length": 32,
            "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": 10}
    ModelArgs.from_gguf(meta, frozenset())
    with pytest.raises(ModelFormatError, match="sliding_window"):
        ModelArgs.from_gguf({**meta, "llama.attention.sliding_window": 8}, frozenset())
    with pytest.raises(ModelFormatError, match="longrope"):
        ModelArgs.from_gguf({**meta, "llama.rope.scaling.type": "longrope", "llama.rope.scaling.factor": 2.0}, frozenset())


# --- quantization keeps the new fields and the Q/K/V bias -------------------------------------


def test_quantized_checkpoint_round_trips_bias_and_window(tmp_path):
    from quant.checkpoint import load_checkpoint, save_checkpoint
    from quant.linear import Int8Linear, quantize_model

    spec = dataclasses.replace(SPECS["qwen2-window"], rope={"rope_type": "yarn", "factor": 2.0,
                                                              "original_max_position_embeddings": 64})
    hf = build_hf_model(spec)
    folder = save_hf_model(hf, tmp_path / "hf")
    args = read_hf_config(folder)
    model = load_hf_weights(folder, args, dtype=torch.float32, device="cpu")
    with read_gguf(write_gguf_from_hf(build_hf_model(SPECS["qwen2-tied"]), tmp_path / "vocab.gguf")) as f:
        metadata = f.metadata  # only its tokenizer keys are kept
    report = quantize_model(model, "int8")
    assert isinstance(model.layers[0].attention.wqkv, Int8Linear) and model.layers[0].attention.wqkv.bias is not None
    out = save_checkpoint(tmp_path / "q", model, metadata, report, {"name": "tiny"})
    loaded = load_checkpoint(out, device="cpu", dtype="float32")
    assert loaded.args == args
    ids = list(range(3, 3 + SEQ))
    with torch.inference_mode():
        expected = model(torch.tensor([ids]))[0]
    torch.testing.assert_close(loaded.logits(ids), expected, atol=1e-5, rtol=1e-5)


# --- hostile and unsupported folders ---------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A small valid Llama folder to copy and damage."""
    return save_hf_model(build_hf_model(HFTiny("llama", seed=11)), tmp_path_factory.mktemp("valid"))


@pytest.fixture(scope="module")
def saved_sharded(tmp_path_factory) -> Path:
    return save_hf_model(build_hf_model(HFTiny("llama", seed=12)), tmp_path_factory.mktemp("sharded"), max_shard_size="40KB")


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "model"))


def load(folder: Path) -> Transformer:
    args = read_hf_config(folder)
    return load_hf_weights(folder, args, dtype=torch.float32, device="cpu")


def header_of(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def test_pickle_only_folder_is_refused_with_the_reason(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelFormatError, match="pickle.*arbitrary code.*safetensors"):
        load(folder)
    # Even when the config would be refused too, the pickle is the problem reported.
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    with pytest.raises(ModelFormatError, match="pickle.*arbitrary code"):
        engine.load(folder)


def test_folder_without_weights_or_config(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="no model.safetensors"):
        load(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelFormatError, match="no config.json"):
        read_hf_config(folder)
    with pytest.raises(ModelNotFoundError):
        read_hf_config(tmp_path / "absent")


def test_truncated_safetensors_is_refused(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    with pytest.raises(ModelFormatError, match="model.safetensors: tensor .* outside the data section"):
        load(folder)
    path.write_bytes(raw[:1000])  # inside the header
    with pytest.raises(ModelFormatError, match="header length .* does not fit"):
        load(folder)
    path.write_bytes(raw[:5])
    with pytest.raises(ModelFormatError, match="truncated"):
        load(folder)


def bad_header(path: Path, entries: dict, data: bytes = bytes(64)) -> Path:
    return write_raw_safetensors(path, entries, data)


@pytest.mark.parametrize("entries, message", [
    ({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 640]}}, "outside the data section"),
    ({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [32, 16]}}, "outside the data section"),
    ({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 32]}}, "32 bytes for F32 \\(4, 4\\), which needs 64"),
    ({"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 2]}}, "unknown dtype 'Q4'"),
    ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, "shape"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      "v": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, "overlap"),
    ({"w": {"dtype": "F32", "shape": [4]}}, "exactly dtype, shape and data_offsets"),
    ([1, 2], "not a JSON object"),
])
def test_bad_safetensors_headers_are_refused(tmp_path, entries, message):
    path = bad_header(tmp_path / "bad.safetensors", entries)
    with pytest.raises(ModelFormatError, match=message):
        read_safetensors_header(path)


def test_header_lengths_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(ModelFormatError, match="header length"):
        read_safetensors_header(path)
    path.write_bytes(struct.pack("<Q", 2) + b"{]")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        read_safetensors_header(path)
    raw = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
    with pytest.raises(ModelFormatError, match="twice"):
        read_safetensors_header(path)


def rewrite(path: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    change(state)
    save_file(state, str(path))


def test_tensor_shape_or_dtype_that_disagrees_with_the_config_is_refused(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    with pytest.raises(ModelFormatError, match="model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight' has shape"):
        load(folder)
    (folder / "config.json").write_text(json.dumps(config))

    def to_int(state):
        state["model.norm.weight"] = state["model.norm.weight"].to(torch.int32)

    rewrite(folder / "model.safetensors", to_int)
    with pytest.raises(ModelFormatError, match="'model.norm.weight' is I32, not a float type"):
        load(folder)


def test_missing_and_unknown_tensors_are_refused(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    path = folder / "model.safetensors"
    rewrite(path, lambda state: state.update({"model.layers.0.self_attn.o_proj.bias": torch.zeros(64)}))
    with pytest.raises(ModelFormatError, match="'model.layers.0.self_attn.o_proj.bias' is not part of"):
        load(folder)
    rewrite(path, lambda state: [state.pop("model.layers.0.self_attn.o_proj.bias"), state.pop("lm_head.weight")])
    with pytest.raises(ModelFormatError, match="'lm_head.weight' is missing"):
        load(folder)


def test_index_naming_a_missing_shard_is_refused(saved_sharded, tmp_path):
    folder = copy_of(saved_sharded, tmp_path)
    load(folder)  # intact, it loads
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.norm.weight"]
    (folder / shard).unlink()
    with pytest.raises(ModelFormatError, match=f"is in {shard}, which is missing"):
        load(folder)


@pytest.mark.parametrize("target, message", [
    ("../escape.safetensors", "not a .safetensors file name"),
    ("model.bin", "not a .safetensors file name"),
    ("OTHER", "that file lacks it"),
])
def test_index_entries_must_name_real_shards_holding_the_tensor(saved_sharded, tmp_path, target, message):
    folder = copy_of(saved_sharded, tmp_path)
    path = folder / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    own = index["weight_map"]["model.norm.weight"]
    index["weight_map"]["model.norm.weight"] = next(s for s in shards if s != own) if target == "OTHER" else target
    path.write_text(json.dumps(index))
    with pytest.raises(ModelFormatError, match=message):
        load(folder)
