"""A Hugging Face checkpoint folder end to end: `engine.load(FOLDER)` and a models.toml name that
resolves to one, against `transformers` on the same folder.

The folder is what `save_pretrained` writes for a tiny random model (tests/hf_models.py) plus
the tokenizer files a Hub repo carries: `tokenizer.json` (byte-level BPE over the tiny GGUF
vocabulary), `tokenizer_config.json` with a ChatML template and `generation_config.json` with
two end-of-generation ids. Tolerance: logits within 1e-4 (max abs) of transformers in float32;
greedy continuations identical, token for token, with the same finish reason.
"""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

import pytest
import torch
from hf_models import (
    HFTiny,
    build_hf_model,
    save_hf_model,
    write_tokenizer_files,
)
from hub_cache import add_to_cache, folder_files, use_offline_cache

import engine
from engine.runtime.native import NativeModel
from engine.text.hf_text import HFTokenizer

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the weather in a town"}]


@pytest.fixture(scope="module", params=[HFTiny("qwen2", tied=True, seed=5), HFTiny("llama", seed=6)],
                ids=["qwen2-tied", "llama"])
def checkpoint(request, tmp_path_factory):
    reference = build_hf_model(request.param)
    folder = save_hf_model(reference, tmp_path_factory.mktemp(request.param.family))
    return reference, write_tokenizer_files(folder)


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return engine.load(checkpoint[1], device="cpu", dtype="float32")


def test_load_picks_the_native_backend_and_the_folder_tokenizer(checkpoint, loaded):
    assert isinstance(loaded, NativeModel) and isinstance(loaded.tokenizer, HFTokenizer)
    assert loaded.context_length == 256 and loaded.name == checkpoint[1].name
    assert loaded.tokenizer.eos_ids == {loaded.tokenizer.token_to_id("<|im_end|>"),
                                        loaded.tokenizer.token_to_id("<|endoftext|>")}
    with pytest.raises(ValueError, match="Hugging Face checkpoint"):
        engine.load(checkpoint[1], backend="gguf")


def test_chat_prompt_and_logits_match_transformers(checkpoint, loaded):
    from transformers import AutoTokenizer

    reference, folder = checkpoint
    hf_tok = AutoTokenizer.from_pretrained(folder)
    expected = hf_tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    ids = loaded.encode_chat(MESSAGES)
    assert ids == list(expected)
    with torch.no_grad():
        want = reference(torch.tensor([ids])).logits[0]
    assert (loaded.logits(ids) - want).abs().max() < 1e-4


def test_greedy_chat_matches_transformers_generate(checkpoint, loaded):
    reference, _ = checkpoint
    ids = loaded.encode_chat(MESSAGES)
    with torch.no_grad():
        out = reference.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, num_beams=1)[0, len(ids):]
    new = out.tolist()
    eos = loaded.tokenizer.eos_ids
    stopped = bool(new) and new[-1] in eos
    result = list(loaded.chat(MESSAGES, max_tokens=24, temperature=0))[-1]
    assert result.completion_tokens == len(new)
    assert result.finish_reason == ("stop" if stopped else "length")
    assert result.text == loaded.tokenizer.decode(new[:-1] if stopped else new, skip_special=True)


def test_a_models_toml_entry_resolves_to_the_cached_folder(checkpoint, tmp_path, monkeypatch):
    """A `format = "safetensors"` Hub entry, offline, from a cache laid out as huggingface_hub's."""
    _, folder = checkpoint
    cache = tmp_path / "hub"
    commit = "00112233445566778899aabbccddeeff00112233"
    add_to_cache(cache, "test-org/Tiny-HF", commit, folder_files(folder))
    use_offline_cache(monkeypatch, cache, tmp_path / "xdg-cache")
    registry = tmp_path / "models.toml"
    registry.write_text(textwrap.dedent(f"""
        [models.tiny-hf]
        source = "hf"
        format = "safetensors"
        repo = "test-org/Tiny-HF"
        revision = "{commit}"
    """))
    monkeypatch.setenv("CHATAPP_MODELS_TOML", str(registry))
    model = engine.load("tiny-hf", device="cpu", dtype="float32")
    assert model.name == "tiny-hf" and model.path.parts[-2:] == ("snapshots", commit)
    ids = model.encode_chat(MESSAGES)
    assert torch.equal(model.logits(ids), engine.load(folder, device="cpu", dtype="float32").logits(ids))


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quant_writes_a_folder_from_a_hugging_face_checkpoint(checkpoint, loaded, tmp_path, scheme):
    """`quant FOLDER`: the tokenizer files travel with the weights, and the result chats like the
    source quantized in memory (logits within 1e-5)."""
    from quant.__main__ import main as quant_main
    from quant.checkpoint import QUANTIZATION
    from quant.linear import quantize_model

    _, folder = checkpoint
    out = tmp_path / "q"
    sigterm = signal.getsignal(signal.SIGTERM)
    assert quant_main([str(folder), "--scheme", scheme, "--out", str(out)]) == 0
    assert signal.getsignal(signal.SIGTERM) is sigterm  # run in-process, quant puts its handler back
    info = json.loads((out / QUANTIZATION).read_text())
    assert info["text_side"] == "hugging face tokenizer files"
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= set(info["files"])
    assert set(info["source"]["sha256"]) >= {"config.json", "model.safetensors"}

    quantized = engine.load(out, device="cpu", dtype="float32")
    ids = quantized.encode_chat(MESSAGES)
    assert ids == loaded.encode_chat(MESSAGES) and quantized.tokenizer.eos_ids == loaded.tokenizer.eos_ids
    in_memory = NativeModel.from_hf_folder(folder, device="cpu", dtype="float32", pack_weights=False)
    quantize_model(in_memory.model, scheme)
    assert (quantized.logits(ids) - in_memory.logits(ids)).abs().max() < 1e-5
    assert list(quantized.chat(MESSAGES, max_tokens=4, temperature=0))[-1].completion_tokens >= 1


def test_quant_refuses_gguf_export_from_a_folder(checkpoint, tmp_path, capsys):
    from quant.__main__ import main as quant_main

    assert quant_main([str(checkpoint[1]), "--scheme", "int8", "--format", "gguf", "--out", str(tmp_path / "q")]) == 1
    assert "--format gguf needs a .gguf source" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_embedding_rows_past_the_tokenizer_are_never_sampled(tmp_path):
    """Checkpoints pad the embedding past the tokenizer (Qwen2.5: 151,936 rows, 151,665 tokens).
    Here the padded rows of the head win every argmax; generation must skip them, not crash."""
    from hf_models import VOCAB

    spec = HFTiny("qwen2", tied=False, seed=9)
    config = spec.config()
    config.vocab_size = VOCAB + 16
    reference = type(build_hf_model(spec))._from_config(config, dtype=torch.float32)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
        reference.lm_head.weight[VOCAB:] = 5.0  # padded rows: by far the largest logits
    folder = write_tokenizer_files(save_hf_model(reference.eval(), tmp_path / "padded"))
    model = engine.load(folder, device="cpu", dtype="float32")
    assert model.args.vocab_size == VOCAB + 16 and model.tokenizer.vocab_size == VOCAB
    ids = model.encode_chat(MESSAGES)
    assert int(model.logits(ids)[-1].argmax()) >= VOCAB  # the trap is real
    for temperature in (0, 1.0):
        result = list(model.chat(MESSAGES, max_tokens=8, temperature=temperature, seed=1))[-1]
        assert result.completion_tokens >= 1


def with_generation_config(folder: Path, tmp_path: Path, **fields) -> Path:
    """A copy of the checkpoint whose generation_config.json also holds `fields`."""
    import shutil

    copy = Path(shutil.copytree(folder, tmp_path / "checkpoint"))
    config = json.loads((copy / "generation_config.json").read_text())
    (copy / "generation_config.json").write_text(json.dumps({**config, **fields}))
    return copy


def test_generation_config_gives_the_sampling_defaults(checkpoint, tmp_path, monkeypatch, caplog):
    folder = with_generation_config(checkpoint[1], tmp_path, do_sample=True, temperature=0.6, top_p=0.9, top_k=20,
                                    repetition_penalty=1.05, min_p="lots", max_new_tokens=100)
    with caplog.at_level("WARNING"):
        model = engine.load(folder, device="cpu", dtype="float32")
    # the hostile min_p is skipped with a warning; max_new_tokens is not a sampling setting
    assert model.sampling_defaults == {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05}
    assert "min_p" in caplog.text and "generation_config.json" in caplog.text

    registry = tmp_path / "models.toml"  # models.toml wins, key by key
    registry.write_text(textwrap.dedent(f"""
        [models.tuned-hf]
        source = "path"
        format = "safetensors"
        path = "{folder}"
        [models.tuned-hf.sampling]
        temperature = 0.3
    """))
    monkeypatch.setenv("CHATAPP_MODELS_TOML", str(registry))
    tuned = engine.load("tuned-hf", device="cpu", dtype="float32")
    assert tuned.sampling_defaults == {"temperature": 0.3, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05}


@pytest.mark.parametrize("fields, expected", [
    # transformers decodes greedily here and ignores the sampling knobs; the penalty still applies
    ({"do_sample": False, "temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.2}, {"repetition_penalty": 1.2}),
    ({"temperature": -1, "top_p": 7, "top_k": 2.5, "repetition_penalty": None}, {}),
    ({"temperature": True, "top_k": [1], "min_p": float("nan"), "top_p": {"a": 1}}, {}),
])
def test_generation_config_fields_that_cannot_apply_are_dropped(checkpoint, tmp_path, fields, expected):
    folder = with_generation_config(checkpoint[1], tmp_path, **fields)
    assert engine.load(folder, device="cpu", dtype="float32").sampling_defaults == expected


def test_a_quantized_folder_keeps_the_checkpoints_sampling_defaults(checkpoint, tmp_path):
    from quant.__main__ import main as quant_main

    folder = with_generation_config(checkpoint[1], tmp_path, temperature=0.6, top_p=0.9)
    out = tmp_path / "q"
    assert quant_main([str(folder), "--scheme", "int8", "--out", str(out)]) == 0
    assert engine.load(out, device="cpu", dtype="float32").sampling_defaults == {"temperature": 0.6, "top_p": 0.9}
