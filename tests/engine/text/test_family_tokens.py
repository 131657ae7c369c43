"""Qwen3's and SmolLM3's special tokens through our tokenizer.json reader, against transformers.

Each family's tokenizer folder is modelled here with the `tokenizers` library: a small byte-level
BPE with the family's added tokens. Qwen3 marks <|endoftext|>, <|im_start|> and <|im_end|>
special and <think>, </think>, <tool_call>, </tool_call> as plain added tokens (so they are
always matched, never skipped on decode); the SmolLM3 folder here marks its think markers special
too, to cover the other case. Each marker must be one token, whole, in both directions and when
streamed: reasoning is split from the answer on those tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_hf_tokenizer import added_tokens_decoder, write_json

from engine.text.hf_text import load_hf_text_side
from engine.text.tokenizer import StreamingDetokenizer

transformers = pytest.importorskip("transformers")

FAMILIES = {
    # name: (special added tokens, plain added tokens, bos, eos)
    "qwen3": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              ["<tool_call>", "</tool_call>", "<think>", "</think>"], None, "<|im_end|>"),
    "smollm3": (["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
                ["<tool_call>", "</tool_call>"], "<|begin_of_text|>", "<|im_end|>"),
}
MARKERS = ["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>"]
TEXTS = {
    "thinking-reply": "<|im_start|>assistant\n<think>\nThe user greets me.\n</think>\n\nHello!<|im_end|>\n",
    "glued": "x<think>y</think>z<|im_start|>user\n<tool_call>{}</tool_call><|im_end|>",
    "empty-think": "<|im_start|>assistant\n<think>\n\n</think>\n\nHi",
    "literal-text": "a </ think> and <thinking> are not markers",
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory, english_text) -> tuple[str, Path]:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    name = request.param
    specials, plain, bos, eos = FAMILIES[name]
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator([english_text, *TEXTS.values()], trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    folder = tmp_path_factory.mktemp(f"{name}-tokenizer")
    hf.save(str(folder / "tokenizer.json"))
    n = hf.get_vocab_size()
    write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos, "eos_token": eos, "pad_token": specials[0],
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added_tokens_decoder(
            dict(enumerate(specials)), {n - len(plain) + i: t for i, t in enumerate(plain)}),
    })
    return name, folder


@pytest.mark.parametrize("text", list(TEXTS))
def test_ids_and_decoding_match_transformers(family, text):
    from transformers import AutoTokenizer

    _, folder = family
    tok, hf = load_hf_text_side(folder).tokenizer, AutoTokenizer.from_pretrained(folder)
    ids = tok.encode(TEXTS[text], add_special=False, parse_special=True)
    assert ids == hf.encode(TEXTS[text], add_special_tokens=False)
    for skip in (False, True):
        assert tok.decode(ids, skip_special=skip) == hf.decode(ids, skip_special_tokens=skip)


def test_each_marker_is_one_token_whole_when_streamed(family):
    name, folder = family
    specials, plain, _, eos = FAMILIES[name]
    tok = load_hf_text_side(folder).tokenizer
    for marker in MARKERS:
        (marker_id,) = tok.encode(marker, add_special=False, parse_special=True)
        assert tok.token_to_id(marker) == marker_id and tok.token_bytes(marker_id) == marker.encode()
        assert tok.is_special(marker_id) == (marker in specials), marker
    assert tok.eos_id == tok.token_to_id(eos) and tok.eos_id in tok.eos_ids
    # Plain added tokens match even where special tokens are not parsed (user text); special ones do not.
    think_ids = tok.encode("<think>", add_special=False)
    assert (think_ids == [tok.token_to_id("<think>")]) == ("<think>" in plain)
    ids = tok.encode(TEXTS["thinking-reply"], add_special=False, parse_special=True)
    stream = StreamingDetokenizer(tok, skip_special=False)
    chunks = [stream.add(i) for i in ids] + [stream.flush()]
    assert "".join(chunks) == TEXTS["thinking-reply"]
    assert "<think>" in chunks and "</think>" in chunks  # each marker arrives as one whole delta
