"""The inspector's engine side: attention weights for one query position (engine/runtime/inspect.py)
against transformers' eager `output_attentions`, and the per-token probabilities generation
records (engine/runtime/probs.py) against softmax of the logits the engine produced.

Tolerance 1e-5 on weights in [0, 1]: both float32, the rest is summation order (observed ~1e-7)."""

from __future__ import annotations

import pytest
import torch
from hf_models import HFTiny, build_hf_model, save_hf_model
from tiny_models import TinyConfig, write_tiny_llama

from engine.errors import RequestError
from engine.model.load_hf import load_hf_weights, read_hf_config
from engine.runtime import LlamaCppModel, NativeModel
from engine.runtime.inspect import attention_row

SEQ = 20
WINDOW = 6
SPECS = {
    "llama-gqa": HFTiny("llama", seed=11),  # 4 query heads over 2 KV heads
    "mistral-window": HFTiny("mistral", n_layers=2, extra={"sliding_window": WINDOW}, seed=12),
    "qwen2-window": HFTiny("qwen2", n_layers=3, seed=13, extra={
        "use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
    "qwen3-qk-norm": HFTiny("qwen3", seed=14),
    "smollm3-no-rope": HFTiny("smollm3", n_layers=4, seed=15, extra={"no_rope_layer_interval": 2}),
}


@pytest.fixture(scope="module", params=list(SPECS))
def pair(request, tmp_path_factory):
    hf = build_hf_model(SPECS[request.param])
    folder = save_hf_model(hf, tmp_path_factory.mktemp(request.param))
    args = read_hf_config(folder)
    ours = load_hf_weights(folder, args, dtype=torch.float32, device="cpu")
    ids = torch.randint(0, args.vocab_size, (1, SEQ), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        reference = hf(ids, output_attentions=True).attentions  # per layer (1, heads, SEQ, SEQ)
    return request.param, ours, ids[0].tolist(), reference


@pytest.mark.parametrize("position", [0, 4, SEQ - 1])
def test_attention_row_equals_transformers_eager_attentions(pair, position):
    name, ours, ids, reference = pair
    row = attention_row(ours, ids, position, device=torch.device("cpu"))
    n_heads = ours.args.n_heads
    assert row.dtype == torch.float32 and row.shape == (ours.args.n_layers, n_heads, position + 1)
    expected = torch.stack([layer[0, :, position, : position + 1] for layer in reference])
    assert (row - expected).abs().max().item() < 1e-5, name
    torch.testing.assert_close(row.sum(-1), torch.ones(ours.args.n_layers, n_heads), atol=1e-5, rtol=0)
    if "window" in name and position == SEQ - 1:
        windowed = [i for i, w in enumerate(ours._layer_windows) if w is not None]
        assert windowed and (row[windowed, :, : position + 1 - WINDOW] == 0).all()  # outside the window
    if name == "llama-gqa" and position > 0:
        assert not torch.allclose(row[:, 0], row[:, 1])  # one KV head, two queries, two rows


# --- recorded probabilities ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("probs") / "tiny.gguf", TinyConfig(seed=3, weight_scale=0.1))


def _check_against_logits(model, result, prompt_ids, top):
    rows = result.token_probs
    assert len(rows) == result.completion_tokens > 1
    chosen = [r.id for r in rows]
    logits = model.logits(prompt_ids + chosen[:-1])[len(prompt_ids) - 1 :]  # the logits each step saw
    probs = torch.softmax(logits[:, : model.tokenizer.vocab_size].float(), dim=-1)
    for step, row in enumerate(rows):
        assert row.prob == pytest.approx(probs[step, row.id].item(), abs=1e-4)
        values, ids = probs[step].topk(top)
        assert [i for i, _, _ in row.top] == ids.tolist()
        assert [p for _, _, p in row.top] == pytest.approx(values.tolist(), abs=1e-4)
        assert row.top[0][1] == model.tokenizer.token_bytes(row.top[0][0]).decode("utf-8", "replace")


@pytest.mark.parametrize("decode", ["static", "plain"])
def test_native_records_softmax_of_its_logits(tiny_gguf, decode):
    model = NativeModel(tiny_gguf, device="cpu", dtype="float32", decode=decode)
    prompt = list(range(5, 17))
    result = list(model.generate(prompt, max_tokens=12, temperature=0.9, seed=4, token_probs=10))[-1]
    _check_against_logits(model, result, prompt, 10)
    plain = list(model.generate(prompt, max_tokens=12, temperature=0.9, seed=4))[-1]
    assert plain.token_probs == () and plain.text == result.text  # recording changes nothing sampled


def test_llamacpp_records_softmax_of_its_logits(tiny_gguf):
    model = LlamaCppModel(tiny_gguf)
    prompt = list(range(5, 17))
    result = list(model.generate(prompt, max_tokens=12, temperature=0.9, seed=4, token_probs=3))[-1]
    _check_against_logits(model, result, prompt, 3)


def test_llamacpp_attention_says_it_needs_the_native_engine(tiny_gguf):
    with pytest.raises(RequestError, match="needs the native engine"):
        LlamaCppModel(tiny_gguf).attention([1, 2, 3], 2)


def test_native_attention_and_bad_requests(tiny_gguf):
    model = NativeModel(tiny_gguf, device="cpu", dtype="float32")
    row = model.attention([5, 6, 7, 8], 2)
    assert row.shape == (model.args.n_layers, model.args.n_heads, 3)
    with pytest.raises(RequestError, match="outside"):
        model.attention([5, 6], 2)
    with pytest.raises(ValueError, match="token_probs"):
        list(model.generate([5, 6], max_tokens=2, token_probs=-1))
