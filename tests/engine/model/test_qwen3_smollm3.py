"""Qwen3 and SmolLM3 against transformers and llama.cpp, as test_families does for the older families.

Qwen3: an RMSNorm (head_dim weights) over each query and key head before RoPE, no Q/K/V bias,
head_dim from the config (24 here, not hidden / heads = 16). SmolLM3: Llama-shaped, with the
layers its config lists (`no_rope_layers`, 1 = uses RoPE) rotating nothing. Tiny random models
are built with transformers and saved with `save_pretrained`; our float32 logits match its own
to 1e-4 (observed ~5e-6 and ~1.5e-5), in one pass and through the KV cache and the static
decoder. The same weights converted to GGUF as llama.cpp's converter does (arch 'qwen3'
unpermuted with attn_q_norm/attn_k_norm; arch 'smollm3' permuted like 'llama', every fourth
layer without RoPE, which llama.cpp hard-codes) load through our GGUF loader to the same
logits, and llama.cpp itself agrees within 1e-3 (observed ~2e-5).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_models import HFTiny, build_hf_model, save_hf_model, write_gguf_from_hf
from test_families import ATOL, LLAMA_CPP_ATOL, SEQ, hf_in_steps, max_diff, run_in_steps

import engine
from engine.errors import ModelFormatError, RequestError
from engine.formats.gguf import read_gguf
from engine.model.config import ModelArgs
from engine.model.decoder import Transformer
from engine.model.load_gguf import load_gguf_model
from engine.model.load_hf import load_hf_weights, read_hf_config
from engine.runtime.static import PREFILL_LENGTHS, StaticDecoder

WINDOW = 8

SPECS = {
    "qwen3-untied": HFTiny("qwen3", seed=20, extra={"head_dim": 24}),
    "qwen3-tied": HFTiny("qwen3", tied=True, seed=21),
    "smollm3": HFTiny("smollm3", n_layers=4, seed=22),  # its default: layer 3 without RoPE
    "smollm3-listed": HFTiny("smollm3", n_layers=3, seed=23, extra={"no_rope_layers": [0, 1, 0]}),
    # use_sliding_window: the layers without RoPE slide (transformers' default layer_types).
    "smollm3-window": HFTiny("smollm3", n_layers=4, seed=24, extra={"use_sliding_window": True, "sliding_window": WINDOW}),
}
# llama.cpp's smollm3 has no key for which layers skip RoPE (every fourth, hard-coded) and no window.
NO_GGUF = {"smollm3-listed", "smollm3-window"}
EXPECTED = {  # (qk_norm, head_dim, layers without RoPE, per-layer windows)
    "qwen3-untied": (True, 24, (), [None, None]),
    "qwen3-tied": (True, 16, (), [None, None]),
    "smollm3": (False, 16, (3,), [None] * 4),
    "smollm3-listed": (False, 16, (0, 2), [None] * 3),
    "smollm3-window": (False, 16, (3,), [None, None, None, WINDOW]),
}


@dataclasses.dataclass
class Built:
    name: str
    hf: torch.nn.Module
    folder: Path
    args: ModelArgs
    ours: Transformer
    ids: torch.Tensor  # (1, SEQ)
    reference: torch.Tensor  # transformers' logits, (SEQ, vocab)


_BUILT: dict[str, Built] = {}


def _build(name: str, tmp_path_factory) -> Built:
    if name not in _BUILT:
        hf = build_hf_model(SPECS[name])
        folder = save_hf_model(hf, tmp_path_factory.mktemp(name))
        args = read_hf_config(folder)
        ours = load_hf_weights(folder, args, dtype=torch.float32, device="cpu")
        ids = torch.randint(0, args.vocab_size, (1, SEQ), generator=torch.Generator().manual_seed(100))
        with torch.inference_mode():
            reference = hf(ids).logits[0]
        _BUILT[name] = Built(name, hf, folder, args, ours, ids, reference)
    return _BUILT[name]


@pytest.fixture(scope="module", params=list(SPECS))
def family(request, tmp_path_factory) -> Built:
    return _build(request.param, tmp_path_factory)


# --- against transformers --------------------------------------------------------------------


def test_config_switches(family):
    qk_norm, head_dim, no_rope, windows = EXPECTED[family.name]
    args = family.args
    assert (args.qk_norm, args.head_dim, args.no_rope_layers, args.qkv_bias) == (qk_norm, head_dim, no_rope, False)
    assert args.tied_output == SPECS[family.name].tied
    assert [layer.attention.uses_rope for layer in family.ours.layers] == [
        i not in no_rope for i in range(args.n_layers)]
    assert [layer.attention.window for layer in family.ours.layers] == windows
    assert all(hasattr(layer.attention, "q_norm") == qk_norm for layer in family.ours.layers)


def test_prefill_matches_transformers(family):
    with torch.inference_mode():
        logits = family.ours(family.ids)[0]
    assert family.reference.abs().max() > 1  # weights large enough that the comparison means something
    assert max_diff(logits, family.reference) < ATOL


def test_kv_cache_chunks_and_decode_match_transformers(family):
    assert max_diff(run_in_steps(family.ours, family.ids), family.reference) < ATOL
    # transformers' own cache agrees with its full pass: the reference is one thing.
    assert max_diff(hf_in_steps(family.hf, family.ids), family.reference) < ATOL


def test_static_decoder_matches_transformers(family):
    """The static path calls each layer with cos/sin for its bucket: a layer without RoPE
    ignores them, and the Q/K norms run inside the captured step like any other module."""
    static = StaticDecoder(family.ours, min_bucket=16, prefill_lengths=PREFILL_LENGTHS, keep_buckets=True)
    ids = family.ids[0].tolist()
    rows = [static.prefill(ids[:7])]
    rows += [static.decode(token) for token in ids[7:]]  # through buckets 16 and 32
    assert static.offset == SEQ
    assert max_diff(torch.cat(rows), family.reference[6:]) < ATOL


SWITCHED_OFF = {"qwen3-untied": {"qk_norm": False}, "smollm3": {"no_rope_layers": ()},
                "smollm3-listed": {"no_rope_layers": ()}}


@pytest.mark.parametrize("name", list(SWITCHED_OFF))
def test_each_switch_changes_the_logits(name, tmp_path_factory):
    """Without Q/K norms or with RoPE everywhere the same weights give other logits: the tests
    above compare something that matters."""
    family = _build(name, tmp_path_factory)
    plain = Transformer(dataclasses.replace(family.args, **SWITCHED_OFF[name]))
    plain.load_state_dict(family.ours.state_dict(), strict=False)
    with torch.inference_mode():
        assert max_diff(plain(family.ids)[0], family.reference) > 1e-2


# --- GGUF conversions of the same weights ----------------------------------------------------


@pytest.fixture(scope="module", params=[name for name in SPECS if name not in NO_GGUF])
def converted(request, tmp_path_factory) -> tuple[Built, Path]:
    family = _build(request.param, tmp_path_factory)
    return family, write_gguf_from_hf(family.hf, tmp_path_factory.mktemp("gguf") / f"{family.name}.gguf")


def test_gguf_conversion_matches_transformers(converted):
    family, path = converted
    with read_gguf(path) as f:
        assert f.metadata["general.architecture"] == SPECS[family.name].family
        args = ModelArgs.from_gguf(f.metadata, frozenset(f.tensors))
        model = load_gguf_model(f, args, dtype=torch.float32, device=torch.device("cpu"))
    assert dataclasses.replace(args, norm_eps=family.args.norm_eps) == family.args  # eps stored as float32
    with torch.inference_mode():
        assert max_diff(model(family.ids)[0], family.reference) < ATOL
    assert max_diff(run_in_steps(model, family.ids), family.reference) < ATOL


def test_llama_cpp_agrees_on_the_converted_gguf(converted):
    family, path = converted
    from llamacpp_ref import llama_logits, open_llama

    ref = llama_logits(open_llama(path, n_ctx=64), family.ids[0].tolist())
    assert np.abs(ref - family.reference.numpy()).max() < LLAMA_CPP_ATOL


def test_both_backends_generate_alike_from_the_gguf(converted):
    """engine.load on the converted file: the native backend (static decode) and the GGUF fast
    path give the same greedy completion."""
    family, path = converted
    native = engine.load(path, backend="native", device="cpu", dtype="float32", decode="static")
    fast = engine.load(path, backend="gguf", threads=2)
    assert native.decode_path == "static"
    prompt = family.ids[0, :8].tolist()
    results = [list(m.generate(prompt, max_tokens=12, temperature=0.0))[-1] for m in (native, fast)]
    outcome = [(r.text, r.completion_tokens, r.finish_reason) for r in results]
    assert outcome[0][1] >= 4 and outcome[0] == outcome[1]


# --- config parsing and hostile input --------------------------------------------------------


def test_gguf_smollm3_skips_rope_in_every_fourth_layer():
    metadata = {"general.architecture": "smollm3", "smollm3.embedding_length": 64, "smollm3.block_count": 9,
                "smollm3.attention.head_count": 4, "smollm3.feed_forward_length": 96, "smollm3.vocab_size": 10,
                "smollm3.attention.layer_norm_rms_epsilon": 1e-6, "smollm3.context_length": 128}
    assert ModelArgs.from_gguf(metadata, frozenset()).no_rope_layers == (3, 7)
    qwen3 = {**{k.replace("smollm3", "qwen3"): v for k, v in metadata.items()}, "general.architecture": "qwen3"}
    args = ModelArgs.from_gguf({**qwen3, "qwen3.attention.key_length": 24, "qwen3.attention.value_length": 24}, frozenset())
    assert (args.qk_norm, args.head_dim, args.no_rope_layers) == (True, 24, ())
    with pytest.raises(ModelFormatError, match="value_length"):
        ModelArgs.from_gguf({**qwen3, "qwen3.attention.key_length": 24, "qwen3.attention.value_length": 16}, frozenset())


QWEN3 = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 96,
         "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
         "max_position_embeddings": 128}
SMOLLM3 = {**QWEN3, "architectures": ["SmolLM3ForCausalLM"], "model_type": "smollm3"}


def test_family_defaults_follow_transformers():
    import transformers

    for ours, theirs in ((QWEN3, transformers.Qwen3Config), (SMOLLM3, transformers.SmolLM3Config)):
        bare = {k: v for k, v in ours.items() if k not in ("architectures", "model_type")}
        config = theirs(**bare)
        args = ModelArgs.from_hf_config(ours)  # head_dim, rope_theta, no_rope_layers all absent
        assert args.head_dim == getattr(config, "head_dim", 16)
        assert args.rope_base == config.rope_parameters["rope_theta"]
        if ours is SMOLLM3:
            assert args.no_rope_layers == tuple(i for i, f in enumerate(config.no_rope_layers) if not f) == (3,)
    interval = ModelArgs.from_hf_config({**SMOLLM3, "no_rope_layer_interval": 2})
    assert interval.no_rope_layers == (1, 3)


@pytest.mark.parametrize("change, message", [
    ({"no_rope_layers": [1, 0, 1]}, "one 0/1 flag per layer"),
    ({"no_rope_layers": [1, 0, 1, 2]}, "one 0/1 flag per layer"),
    ({"no_rope_layers": "1011"}, "one 0/1 flag per layer"),
    ({"no_rope_layer_interval": 0}, "no_rope_layer_interval must be positive"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_bad_smollm3_configs_are_refused(change, message):
    with pytest.raises(ModelFormatError, match=message):
        ModelArgs.from_hf_config({**SMOLLM3, **change})


def test_model_args_validate_the_new_fields():
    args = ModelArgs.from_hf_config(SMOLLM3)
    with pytest.raises(ModelFormatError, match="no_rope_layers"):
        dataclasses.replace(args, no_rope_layers=(4,))
    with pytest.raises(ModelFormatError, match="no_rope_layers"):
        dataclasses.replace(args, no_rope_layers=[3])
    with pytest.raises(ModelFormatError, match="qk_norm"):
        dataclasses.replace(args, qk_norm=1)


def test_qwen3_folder_without_its_norms_is_refused(tmp_path, tmp_path_factory):
    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(_build("qwen3-tied", tmp_path_factory).folder, tmp_path / "model"))
    path = folder / "model.safetensors"
    state = load_file(str(path))
    del state["model.layers.1.self_attn.k_norm.weight"]
    save_file(state, str(path))
    with pytest.raises(ModelFormatError, match="'model.layers.1.self_attn.k_norm.weight' is missing"):
        load_hf_weights(folder, read_hf_config(folder), dtype=torch.float32, device="cpu")
    # Declared as Llama, the same folder's norms are tensors that model has no place for.
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    with pytest.raises(ModelFormatError, match="_norm.weight' is not part of"):
        load_hf_weights(folder, read_hf_config(folder), dtype=torch.float32, device="cpu")


# --- quantization keeps the new fields ---------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen3-untied", "smollm3"])
def test_quantized_checkpoint_round_trips_qk_norm_and_no_rope_layers(name, tmp_path, tmp_path_factory):
    from quant.checkpoint import load_checkpoint, save_checkpoint
    from quant.gguf_export import export_gguf
    from quant.linear import quantize_model

    family = _build(name, tmp_path_factory)
    model = load_hf_weights(family.folder, family.args, dtype=torch.float32, device="cpu")
    with read_gguf(write_gguf_from_hf(build_hf_model(SPECS["smollm3"]), tmp_path / "vocab.gguf")) as f:
        metadata = f.metadata  # only its tokenizer keys are kept
    out = save_checkpoint(tmp_path / "q", model, metadata, quantize_model(model, "int8"), {"name": "tiny"})
    loaded = load_checkpoint(out, device="cpu", dtype="float32")
    assert loaded.args == family.args  # no_rope_layers back as a tuple, qk_norm kept
    ids = family.ids[0].tolist()
    with torch.inference_mode():
        expected = model(family.ids)[0]
    torch.testing.assert_close(loaded.logits(ids), expected, atol=1e-5, rtol=1e-5)
    # The export writes arch 'llama', which has neither switch: refused before any file is made.
    with pytest.raises(RequestError, match="cannot be exported to a 'llama' GGUF"):
        export_gguf(family.ours, metadata, tmp_path / "out.gguf", "q8_0")
    assert not (tmp_path / "out.gguf").exists()
