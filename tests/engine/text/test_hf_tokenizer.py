"""engine.text.hf_text: the text side of Hugging Face checkpoint folders, against transformers.

Three folders made here: a byte-level BPE tokenizer.json (GPT-2/Qwen style, BOS added by its
post-processor) trained with `tokenizers`; a Llama 2-style tokenizer.json (SentencePiece pieces,
"▁" for spaces, byte fallback) made from the SentencePiece model of test_spm; and that
SentencePiece model alone (tokenizer.model, no tokenizer.json).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_spm import TEXTS, train_sentencepiece, write_llama2_tokenizer_json

from engine.errors import ModelFormatError
from engine.text.hf_text import HFTokenizer, load_hf_text_side, sentencepiece_metadata
from engine.text.spm import SPMTokenizer
from engine.text.tokenizer import StreamingDetokenizer

transformers = pytest.importorskip("transformers")

SPECIALS = ["<|endoftext|>", "<|begin|>", "<|im_start|>", "<|im_end|>", "<|end|>"]
CHATML = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
          "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
          "{% endif %}")
HF_TEXTS = {**TEXTS,
            "chatml": "<|im_start|>user\nHi <tool_call>{}</tool_call><|im_end|>\n",
            "chatml-glued": "x<|im_end|><|im_start|>  y<|endoftext|>"}


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


def added_tokens_decoder(specials: dict[int, str], plain: dict[int, str]) -> dict:
    def entry(text: str, special: bool) -> dict:
        return {"content": text, "special": special, "lstrip": False, "rstrip": False,
                "normalized": False, "single_word": False}

    return {**{str(i): entry(t, True) for i, t in specials.items()},
            **{str(i): entry(t, False) for i, t in plain.items()}}


@pytest.fixture(scope="module")
def byte_level_folder(tmp_path_factory, english_text) -> Path:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    corpus = [english_text, *TEXTS.values()]
    hf.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                   AddedToken("</tool_call>", special=False, normalized=False)])
    hf.post_processor = processors.TemplateProcessing(
        single="<|begin|> $A", pair="<|begin|> $A <|begin|> $B",
        special_tokens=[("<|begin|>", SPECIALS.index("<|begin|>"))])
    folder = tmp_path_factory.mktemp("hf-byte-level")
    hf.save(str(folder / "tokenizer.json"))
    n = hf.get_vocab_size()
    write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": {"__type": "AddedToken", "content": "<|begin|>", "special": True},
        "eos_token": "<|endoftext|>",
        "add_bos_token": True,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added_tokens_decoder(dict(enumerate(SPECIALS)),
                                                     {n - 2: "<tool_call>", n - 1: "</tool_call>"}),
        "chat_template": [{"name": "tool_use", "template": "tools: {{ tools }}"},
                          {"name": "default", "template": CHATML}],
    })
    write_json(folder / "generation_config.json", {"bos_token_id": 1, "eos_token_id": [3, 4]})
    return folder


@pytest.fixture(scope="module")
def spm_folder(tmp_path_factory) -> Path:
    folder = train_sentencepiece(tmp_path_factory.mktemp("hf-spm"))
    write_json(folder / "generation_config.json", {"eos_token_id": 2})
    return folder


@pytest.fixture(scope="module")
def llama2_folder(spm_folder, tmp_path_factory) -> Path:
    """A Llama 2-style tokenizer.json for the SentencePiece model, as on the Hub."""
    bos = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    folder = write_llama2_tokenizer_json(spm_folder, tmp_path_factory.mktemp("hf-llama2"), post_processor=bos)
    shutil.copy(spm_folder / "generation_config.json", folder)
    return folder


@pytest.fixture(scope="module", params=["byte_level_folder", "llama2_folder"])
def tokenizer_json(request):
    """(folder, our tokenizer, transformers' tokenizer) for each tokenizer.json folder."""
    from transformers import AutoTokenizer

    folder = request.getfixturevalue(request.param)
    side = load_hf_text_side(folder)
    assert isinstance(side.tokenizer, HFTokenizer)
    return folder, side.tokenizer, AutoTokenizer.from_pretrained(folder)


# --- tokenizer.json -------------------------------------------------------------------------


@pytest.mark.parametrize("name", HF_TEXTS)
def test_ids_match_transformers(tokenizer_json, name):
    _, tok, hf = tokenizer_json
    text = HF_TEXTS[name]
    assert tok.encode(text, parse_special=True) == hf.encode(text)
    assert tok.encode(text, add_special=False, parse_special=True) == hf.encode(
        text, add_special_tokens=False)
    assert tok.encode(text) == hf.encode(text, split_special_tokens=True)


@pytest.mark.parametrize("name", HF_TEXTS)
def test_decode_and_streaming_match_transformers(tokenizer_json, name):
    _, tok, hf = tokenizer_json
    ids = tok.encode(HF_TEXTS[name], parse_special=True)
    for skip in (False, True):
        text = hf.decode(ids, skip_special_tokens=skip)
        assert tok.decode(ids, skip_special=skip) == text
        stream = StreamingDetokenizer(tok, skip_special=skip)
        chunks = [stream.add(i) for i in ids] + [stream.flush()]
        if not (skip and tok.add_space_prefix):
            # (Hugging Face strips the leading space after dropping a leading BOS; a stream,
            # like llama.cpp, strips only the very first token.)
            assert "".join(chunks) == text, skip
        assert all("\ufffd" not in chunk for chunk in chunks)


def test_byte_level_special_tokens(byte_level_folder):
    side = load_hf_text_side(byte_level_folder)
    tok = side.tokenizer
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == (1, 0, True, False)
    assert tok.add_space_prefix is False
    # generation_config's ids, plus the ones llama.cpp finds by their text.
    assert tok.eos_ids == {0, 3, 4}
    assert [tok.is_special(i) for i in range(5)] == [True] * 5
    tool_call = tok.token_to_id("<tool_call>")
    assert not tok.is_special(tool_call)
    assert tool_call in tok.encode("<tool_call>")  # non-special added tokens always match
    assert tok.encode("<|im_end|>", add_special=False) != [3]
    assert tok.encode("<|im_end|>", add_special=False, parse_special=True) == [3]
    ids = tok.encode(" é 😀", add_special=False)
    assert b"".join(tok.token_bytes(i) for i in ids) == " é 😀".encode()


def test_byte_level_chat_template_is_the_default_one(byte_level_folder):
    template = load_hf_text_side(byte_level_folder).template
    assert not template.is_fallback
    assert (template.bos_token, template.eos_token) == ("<|begin|>", "<|endoftext|>")
    assert template.render([{"role": "user", "content": "Hi"}]) == \
        "<|begin|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_llama2_tokenizer_json_equals_the_sentencepiece_path(llama2_folder, spm_folder):
    hf_side, spm_side = load_hf_text_side(llama2_folder), load_hf_text_side(spm_folder)
    assert isinstance(spm_side.tokenizer, SPMTokenizer)
    for name, text in TEXTS.items():
        for parse_special in (False, True):
            assert hf_side.tokenizer.encode(text, parse_special=parse_special) == \
                spm_side.tokenizer.encode(text, parse_special=parse_special), name
    tok = hf_side.tokenizer
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.add_space_prefix) == (1, 2, True, True)
    assert tok.eos_ids == spm_side.tokenizer.eos_ids == {2}
    for i in range(tok.vocab_size):
        assert tok.token_bytes(i) == spm_side.tokenizer.token_bytes(i), i


# --- tokenizer.model alone ------------------------------------------------------------------


def test_sentencepiece_folder(spm_folder):
    import sentencepiece

    side = load_hf_text_side(spm_folder)
    tok = side.tokenizer
    assert isinstance(tok, SPMTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.eos_ids) == (1, 2, True, {2})
    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_folder / "tokenizer.model"))
    assert tok.encode("Hello  world\n\tcafé 😀") == [1, *sp.encode("Hello  world\n\tcafé 😀")]
    assert tok.encode("[INST] hi", parse_special=True)[:2] == [1, 3]
    assert not tok.is_special(tok.token_to_id("<tool_call>"))
    assert side.template.render([{"role": "user", "content": "Hi"}]) == "<s>[INST] Hi [/INST]"


def test_sentencepiece_metadata_follows_the_converter(spm_folder):
    metadata = sentencepiece_metadata(spm_folder)
    types = metadata["tokenizer.ggml.token_type"]
    # tokenizer_config.json's special added tokens (<unk> too) become control tokens, the
    # others user-defined, whatever SentencePiece says.
    assert types[:6] == [3, 3, 3, 3, 3, 4]
    assert types[6:262] == [6] * 256  # <0x00>..<0xFF>
    assert metadata["tokenizer.ggml.scores"][5] == -1000.0
    assert metadata["tokenizer.ggml.add_space_prefix"] is True
    assert metadata["tokenizer.ggml.add_bos_token"] is True


# --- errors ---------------------------------------------------------------------------------


def test_folder_without_tokenizer(tmp_path):
    with pytest.raises(ModelFormatError, match="no tokenizer"):
        load_hf_text_side(tmp_path)
    with pytest.raises(ModelFormatError, match="not a folder"):
        load_hf_text_side(tmp_path / "missing")


@pytest.mark.parametrize("name, content, match", [
    ("tokenizer_config.json", "{not json", "tokenizer_config.json is not valid JSON"),
    ("tokenizer_config.json", "[1, 2]", "tokenizer_config.json must hold a JSON object"),
    ("tokenizer_config.json", '{"chat_template": 5}', "chat_template must be a string"),
    ("tokenizer_config.json", '{"chat_template": [{"name": 1}]}', "chat_template entries"),
    ("tokenizer_config.json", '{"clean_up_tokenization_spaces": "yes"}', "true or false"),
    ("generation_config.json", '{"eos_token_id": "2"}', "generation_config.json: eos_token_id"),
    ("generation_config.json", "", "generation_config.json is not valid JSON"),
    ("tokenizer.json", '{"model": 1', "tokenizer.json is not a valid tokenizer.json"),
    ("tokenizer.json", '{"model": {"type": "Nope"}}', "tokenizer.json is not a valid"),
    ("tokenizer.json", b"\xff\xfe", "tokenizer.json is not UTF-8"),
])
def test_malformed_files_are_named(byte_level_folder, tmp_path, name, content, match):
    folder = tmp_path / "model"
    shutil.copytree(byte_level_folder, folder)
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ModelFormatError, match=match):
        load_hf_text_side(folder)


def test_malformed_sentencepiece_models(spm_folder, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(b"\x0a\xff\xff\xff")
    with pytest.raises(ModelFormatError, match="tokenizer.model"):
        load_hf_text_side(folder)
    (folder / "tokenizer.model").write_bytes(b"")  # no pieces, no spec: a Unigram default
    with pytest.raises(ModelFormatError, match="Unigram"):
        load_hf_text_side(folder)
    shutil.copy(spm_folder / "tokenizer.model", folder)
    write_json(folder / "tokenizer_config.json", {"added_tokens_decoder": {"x": {}}})
    with pytest.raises(ModelFormatError, match="added_tokens_decoder"):
        load_hf_text_side(folder)


def test_unigram_models_are_refused(tmp_path, english_text):
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(english_text.splitlines()), model_writer=model,
        model_type="unigram", vocab_size=120, minloglevel=2, num_threads=1)
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    with pytest.raises(ModelFormatError, match="Unigram SentencePiece model"):
        load_hf_text_side(tmp_path)
