"""engine.text.spm (GGUF `llama` vocabularies) against llama.cpp, SentencePiece and Hugging Face.

A small SentencePiece BPE model is trained here with Llama 2's trainer settings, converted to
GGUF metadata as llama.cpp's convert_hf_to_gguf.py does (`engine.text.hf_text.sentencepiece_metadata`)
and written into a tiny random-weight llama GGUF. Our ids must equal llama.cpp's on that file
(the reference), SentencePiece's own on text without special tokens, and Hugging Face's on a
Llama 2-style tokenizer.json made from the same model.
"""

from __future__ import annotations

import ctypes
import io
import json
import random
import time
from pathlib import Path

import pytest

from engine.errors import ModelFormatError
from engine.text.hf_text import sentencepiece_metadata
from engine.text.spm import SPMTokenizer
from engine.text.tokenizer import StreamingDetokenizer, load_tokenizer

spm = pytest.importorskip("sentencepiece")
llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

DATA = Path(__file__).resolve().parents[2] / "data"

# The control and user-defined tokens of the trained vocabulary (ids 3, 4 and 5).
CONTROL_TOKENS = ["[INST]", "[/INST]"]
USER_TOKENS = ["<tool_call>"]

EXTRA_CORPUS = [
    "日本語のテキストです。東京は日本の首都です。",
    "café naïve résumé Ångström Ελληνικά Кириллица",
    "Numbers: 0 1 12 123 1234 3.14159 1,000,000 2024-01-31",
    "def greet(name):\n    return f\"Hello, {name}!\"  # comment",
    "\tindented\twith tabs and  double  spaces    and four",
]

TEXTS = {
    "prose": "The lighthouse keeper woke before dawn, as he had every morning for thirty years.",
    "leading-space": " lead",
    "leading-spaces": "   three spaces first",
    "trailing-spaces": "trail  ",
    "only-spaces": "    ",
    "one-space": " ",
    "whitespace": "a  b   c\t\td\n\ne \n \n  f   \t \r\n\r\n   end",
    "newlines": "\n\n\n",
    "code": "def f(x):\n    return x * 2  # twice\n\n\nprint(f(21))\n",
    "digits": "1234567 3.14159 1,000,000 -42 0x1F 007 ²³ ½",
    "emoji": "I ❤️ it 😀😃 👍🏽 👨‍👩‍👧‍👦 🇺🇸 done",
    "cjk": "日本語のテキストです。中文字符，汉语。한국어",
    "accents": "café naïve résumé e\u0301 a\u0308 Ελληνικά",
    "rare": "x\u200by \u00a0nbsp ǅ ﬁ Ω \x01\x7f",
    "empty": "",
    "special-texts": "[INST] hi [/INST] <s>x</s> <unk> <tool_call>{\"a\": 1}</tool_call>",
    "special-glued": "[INST]hi[/INST]ok<tool_call>x",
    "special-spaced": "x [INST]  y \n[/INST]\tz",
    "byte-token-text": "<0x0A> <0x41>",
}
TEXTS["long"] = "\n".join(TEXTS.values()) * 3
# Text that holds none of the vocabulary's special token texts (SentencePiece parses none).
PLAIN = [name for name, text in TEXTS.items()
         if not any(t in text for t in ["<s>", "</s>", "<unk>", *CONTROL_TOKENS, *USER_TOKENS])]
MULTIBYTE = ["emoji", "cjk", "accents", "rare"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] "
                 "{{ m.content }} [/INST]{% else %}{{ m.content }}{{ eos_token }}{% endif %}"
                 "{% endfor %}")


def train_sentencepiece(folder: Path) -> Path:
    """Train a ~400-piece SentencePiece BPE model with Llama 2's settings into `folder`, with a
    tokenizer_config.json that marks the added tokens as Hugging Face saves them."""
    lines = [line for line in (DATA / "english.txt").read_text().splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines + EXTRA_CORPUS * 3), model_writer=model,
        model_type="bpe", vocab_size=400, byte_fallback=True, split_digits=True,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        allow_whitespace_only_pieces=True, split_by_unicode_script=True, split_by_number=True,
        split_by_whitespace=True, max_sentencepiece_length=16, character_coverage=0.99995,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, control_symbols=CONTROL_TOKENS,
        user_defined_symbols=USER_TOKENS, minloglevel=2, num_threads=1)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    added = {str(i): {"content": text, "special": i < 5, "lstrip": False, "rstrip": False,
                      "normalized": False, "single_word": False}
             for i, text in enumerate(["<unk>", "<s>", "</s>", *CONTROL_TOKENS, *USER_TOKENS])}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "chat_template": CHAT_TEMPLATE}))
    return folder


def write_llama2_tokenizer_json(model_folder: Path, folder: Path, *, post_processor: dict | None = None) -> Path:
    """A tokenizer.json shaped like Llama 2's on the Hub, made by transformers from
    `model_folder`'s tokenizer.model: a Prepend("▁") + Replace(" ", "▁") normalizer, no
    pre-tokenizer, and `post_processor` (e.g. one that adds BOS) if given; with the model's
    tokenizer_config.json set to read tokenizer.json as it is."""
    pytest.importorskip("google.protobuf")  # transformers reads tokenizer.model with it
    from transformers import LlamaTokenizer

    converted = LlamaTokenizer.from_pretrained(model_folder, legacy=True)
    spec = json.loads(converted.backend_tokenizer.to_str())
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    spec["pre_tokenizer"] = None
    if post_processor is not None:
        spec["post_processor"] = post_processor
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    config = json.loads((model_folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # use tokenizer.json as it is
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def write_gguf(path: Path, metadata: dict, *, name: str = "tiny-spm-llama",
               weights: bool = True) -> Path:
    """`metadata`'s vocabulary in a GGUF file; with `weights`, a tiny random llama model."""
    import numpy as np

    tokens = metadata["tokenizer.ggml.tokens"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(metadata["tokenizer.ggml.scores"])
    w.add_token_types(metadata["tokenizer.ggml.token_type"])
    w.add_bos_token_id(metadata["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(metadata["tokenizer.ggml.eos_token_id"])
    w.add_unk_token_id(metadata["tokenizer.ggml.unknown_token_id"])
    w.add_add_bos_token(metadata["tokenizer.ggml.add_bos_token"])
    w.add_chat_template(metadata["tokenizer.chat_template"])
    if weights:
        dim, layers, heads, kv_heads, ffn = 32, 1, 4, 2, 48
        w.add_context_length(128)
        w.add_embedding_length(dim)
        w.add_block_count(layers)
        w.add_feed_forward_length(ffn)
        w.add_head_count(heads)
        w.add_head_count_kv(kv_heads)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_dimension_count(dim // heads)
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        rng = np.random.default_rng(0)

        def tensor(tensor_name: str, *shape: int) -> None:
            w.add_tensor(tensor_name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

        head = dim // heads
        tensor("token_embd.weight", len(tokens), dim)
        w.add_tensor("output_norm.weight", np.ones(dim, np.float32))
        for i in range(layers):
            w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(dim, np.float32))
            w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(dim, np.float32))
            tensor(f"blk.{i}.attn_q.weight", heads * head, dim)
            tensor(f"blk.{i}.attn_k.weight", kv_heads * head, dim)
            tensor(f"blk.{i}.attn_v.weight", kv_heads * head, dim)
            tensor(f"blk.{i}.attn_output.weight", dim, heads * head)
            tensor(f"blk.{i}.ffn_gate.weight", ffn, dim)
            tensor(f"blk.{i}.ffn_up.weight", ffn, dim)
            tensor(f"blk.{i}.ffn_down.weight", dim, ffn)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- asking llama.cpp -----------------------------------------------------------------------


def llama_ids(llm, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)


def llama_piece(llm, token_id: int) -> bytes:
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token_id, buf, len(buf), 0, True)
    return buf.raw[:n]


def llama_detokenize(llm, ids: list[int], *, special: bool) -> str:
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 16 * len(ids) + 16
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, special)
    assert n >= 0
    return buf.raw[:n].decode("utf-8", errors="replace")


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return train_sentencepiece(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def metadata(model_folder) -> dict:
    return sentencepiece_metadata(model_folder)


@pytest.fixture(scope="module")
def gguf_path(model_folder, metadata) -> Path:
    return write_gguf(model_folder / "tiny-spm.gguf", metadata)


@pytest.fixture(scope="module")
def tok(gguf_path) -> SPMTokenizer:
    from engine.formats.gguf import read_gguf

    with read_gguf(gguf_path) as model_file:
        tokenizer = load_tokenizer(model_file.metadata)
    assert isinstance(tokenizer, SPMTokenizer)
    return tokenizer


@pytest.fixture(scope="module")
def llm(gguf_path):
    return llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def sp(model_folder):
    return spm.SentencePieceProcessor(model_file=str(model_folder / "tokenizer.model"))


@pytest.fixture(scope="module")
def hf_llama2_style(model_folder, tmp_path_factory):
    """transformers on a tokenizer.json shaped like Llama 2's on the Hub (made from the same
    tokenizer.model): a Prepend("▁") + Replace(" ", "▁") normalizer, applied to every piece of
    text between added tokens."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        write_llama2_tokenizer_json(model_folder, tmp_path_factory.mktemp("hf-llama2")))


# --- ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEXTS)
def test_ids_match_llama_cpp(tok, llm, name):
    text = TEXTS[name]
    for parse_special in (False, True):
        assert tok.encode(text, add_special=False, parse_special=parse_special) == llama_ids(
            llm, text, special=parse_special), (name, parse_special)
        assert tok.encode(text, parse_special=parse_special) == llama_ids(
            llm, text, add_bos=True, special=parse_special), (name, parse_special)


@pytest.mark.parametrize("name", PLAIN)
def test_ids_match_sentencepiece(tok, sp, name):
    assert tok.encode(TEXTS[name], add_special=False) == sp.encode(TEXTS[name])


def test_special_texts_differ_from_sentencepiece_as_in_llama_cpp(tok, sp, llm):
    # llama.cpp (and so we) start a new "▁"-prefixed fragment after every special token, where
    # SentencePiece treats a user-defined token as a piece inside the text.
    text = "<tool_call>x"
    assert tok.encode(text, add_special=False) == llama_ids(llm, text)
    assert sp.encode(text, out_type=str) == ["▁", "<tool_call>", "x"]
    assert [tok.token_bytes(i) for i in tok.encode(text, add_special=False)][:2] == [
        b"<tool_call>", b" "]


@pytest.mark.parametrize("name", TEXTS)
def test_ids_match_hugging_face(tok, hf_llama2_style, name):
    text = TEXTS[name]
    assert tok.encode(text, parse_special=True) == hf_llama2_style.encode(text)
    assert tok.encode(text, add_special=False, parse_special=True) == hf_llama2_style.encode(
        text, add_special_tokens=False)
    assert tok.encode(text) == hf_llama2_style.encode(text, split_special_tokens=True)


def test_ids_match_transformers_llama_tokenizer_except_leading_spaces(tok, model_folder):
    """transformers 5's LlamaTokenizer built from tokenizer.model uses a Metaspace
    pre-tokenizer, which adds no "▁" to a piece of text that already starts with a space
    (SentencePiece and llama.cpp add one): the ids agree everywhere else."""
    pytest.importorskip("google.protobuf")
    from transformers import LlamaTokenizer

    hf = LlamaTokenizer.from_pretrained(model_folder, legacy=True, add_bos_token=True)
    specials = [*CONTROL_TOKENS, *USER_TOKENS, "<s>", "</s>", "<unk>"]
    for name, text in TEXTS.items():
        pieces = [text]
        for special in specials:
            pieces = [p for piece in pieces for p in piece.split(special)]
        if any(p.startswith(" ") for p in pieces):
            continue
        assert tok.encode(text, parse_special=True) == hf.encode(text), name


# --- special tokens -------------------------------------------------------------------------


def test_special_tokens_and_attributes_match_llama_cpp(tok, llm):
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0)
    assert (tok.add_bos, tok.add_eos, tok.add_space_prefix) == (True, False, True)
    assert tok.add_bos == llama_cpp.llama_vocab_get_add_bos(vocab)
    eog = {i for i in range(tok.vocab_size) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    assert tok.eos_ids == eog == {2}
    skippable = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    for i in range(tok.vocab_size):
        assert tok.is_special(i) == bool(llama_cpp.llama_vocab_get_attr(vocab, i) & skippable)
    assert [tok.token_to_id(t) for t in ["<unk>", "<s>", "</s>", *CONTROL_TOKENS, *USER_TOKENS]] \
        == [0, 1, 2, 3, 4, 5]
    assert tok.token_to_id("no such token") is None


def test_empty_text_gives_only_bos(tok):
    assert tok.encode("") == [1]
    assert tok.encode("", add_special=False) == []


def test_phi3_special_tokens_swallow_following_whitespace(metadata, tmp_path):
    # llama.cpp gives special tokens RSTRIP for models named Phi-3 (and needs <|endoftext|>).
    phi3 = {**metadata, "general.name": "Phi-3 mini",
            "tokenizer.ggml.tokens": [*metadata["tokenizer.ggml.tokens"], "<|endoftext|>"],
            "tokenizer.ggml.scores": [*metadata["tokenizer.ggml.scores"], 0.0],
            "tokenizer.ggml.token_type": [*metadata["tokenizer.ggml.token_type"], 3]}
    path = write_gguf(tmp_path / "phi3.gguf", phi3, name="Phi-3 mini", weights=False)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    tok = SPMTokenizer.from_gguf_metadata(phi3)
    for text in ("[INST]  \n hi [/INST] \tok", "x<tool_call>  y", "<s> a</s>  b", "[INST]",
                 "a<|endoftext|>  b"):
        for special in (False, True):
            assert tok.encode(text, parse_special=special) == llama_ids(
                llm, text, add_bos=True, special=special), (text, special)
    assert tok.encode("[INST]  hi", parse_special=True) != SPMTokenizer.from_gguf_metadata(
        metadata).encode("[INST]  hi", parse_special=True)


# --- decoding -------------------------------------------------------------------------------


def test_token_bytes_match_llama_cpp_for_every_token(tok, llm):
    for i in range(tok.vocab_size):
        assert tok.token_bytes(i) == llama_piece(llm, i), i
    with pytest.raises(ValueError):
        tok.token_bytes(tok.vocab_size)


@pytest.mark.parametrize("name", TEXTS)
def test_decode_round_trips_and_matches_llama_detokenize(tok, llm, name):
    text = TEXTS[name]
    ids = tok.encode(text, add_special=False)
    if not any(t in text for t in USER_TOKENS):  # after which a space is added in front again
        assert tok.decode(ids) == text  # the space added in front is dropped again
    assert tok.decode(ids) == llama_detokenize(llm, ids, special=True)
    with_specials = tok.encode(text, parse_special=True)
    for skip in (False, True):
        assert tok.decode(with_specials, skip_special=skip) == llama_detokenize(
            llm, with_specials, special=not skip), skip


def test_decode_rejects_unknown_ids_and_replaces_invalid_utf8(tok):
    with pytest.raises(ValueError):
        tok.decode([tok.vocab_size])
    first_byte = tok.encode("😀", add_special=False)[1]  # after the "▁" of the prefix space
    assert tok.token_bytes(first_byte) == b"\xf0"
    assert tok.decode([first_byte]) == "\ufffd"


@pytest.mark.parametrize("name", MULTIBYTE)
def test_streaming_never_emits_partial_characters(tok, name):
    ids = tok.encode(TEXTS[name], add_special=False)
    stream = StreamingDetokenizer(tok)
    chunks = [stream.add(i) for i in ids]
    chunks.append(stream.flush())
    assert "" in chunks[:-1]  # byte-fallback characters span several tokens
    for chunk in chunks:
        assert "\ufffd" not in chunk
    assert "".join(chunks) == stream.text == tok.decode(ids) == TEXTS[name]


def test_streaming_drops_the_first_space_and_special_tokens(tok):
    ids = tok.encode("[INST] Hi there [/INST] Sure! 😀", parse_special=True)
    stream = StreamingDetokenizer(tok)
    text = "".join(stream.add(i) for i in ids) + stream.flush()
    # Text after a special token gets a space in front, which decoding keeps (as llama.cpp).
    assert text == tok.decode(ids, skip_special=True) == "  Hi there   Sure! 😀"
    reply = tok.encode(" Sure", add_special=False)[1:]  # what a model generates: "▁Sure"
    stream = StreamingDetokenizer(tok)
    assert "".join(stream.add(i) for i in reply) == "Sure"
    shown = StreamingDetokenizer(tok, skip_special=False)
    assert "".join(shown.add(i) for i in ids) == tok.decode(ids) == \
        "<s>[INST]  Hi there [/INST]  Sure! 😀"


# --- speed ----------------------------------------------------------------------------------


def test_encoding_a_long_prompt_is_fast(metadata):
    rng = random.Random(0)
    words = (DATA / "english.txt").read_text().split()
    made_up = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
               for _ in range(300)]
    text = " ".join(rng.choice(words + made_up) for _ in range(900))
    best = float("inf")
    for _ in range(3):
        tok = SPMTokenizer.from_gguf_metadata(metadata)  # nothing remembered from before
        start = time.perf_counter()
        ids = tok.encode(text)
        best = min(best, time.perf_counter() - start)
    assert len(ids) >= 2000
    assert best < 0.1, f"encoding {len(ids)} tokens took {best * 1000:.1f} ms"


# --- the engine on a SentencePiece model ----------------------------------------------------


def test_native_engine_chats_with_a_sentencepiece_model(gguf_path):
    import engine
    from engine.results import GenerationResult

    model = engine.load(gguf_path, backend="native", device="cpu", dtype="float32")
    assert isinstance(model.tokenizer, SPMTokenizer)
    messages = [{"role": "user", "content": "Hi there"}]
    assert model.render_chat(messages) == "<s>[INST] Hi there [/INST]"
    # The template writes the BOS text and the vocabulary adds BOS: one BOS, as llama.cpp's chat.
    ids = model.encode_chat(messages)
    tok = model.tokenizer
    assert ids == [tok.bos_id] + tok.encode("[INST] Hi there [/INST]", add_special=False, parse_special=True)
    events = list(model.chat(messages, max_tokens=4, temperature=0.0))
    assert isinstance(events[-1], GenerationResult) and events[-1].prompt_tokens == len(ids)


# --- malformed metadata ---------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [
    ("tokenizer.ggml.tokens", [1, 2, 3]),
    ("tokenizer.ggml.tokens", []),
    ("tokenizer.ggml.scores", ["a"] * 400),
    ("tokenizer.ggml.scores", [0.0]),
    ("tokenizer.ggml.token_type", [1, 1]),
    ("tokenizer.ggml.bos_token_id", "1"),
    ("tokenizer.ggml.add_bos_token", "yes"),
    ("tokenizer.ggml.add_space_prefix", 1),
])
def test_malformed_metadata_is_rejected(metadata, key, value):
    with pytest.raises(ModelFormatError, match=key.rsplit(".", 1)[1]):
        load_tokenizer({**metadata, key: value})


def test_wrong_model_is_rejected(metadata):
    with pytest.raises(ModelFormatError, match="'gpt2'"):
        SPMTokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.model": "gpt2"})
