"""engine.text.tokenizer against llama.cpp (llama-cpp-python), the independent reference.

Two vocabularies: the bundled SmolLM2 model (pre-tokenizer `smollm`), and a small byte-level BPE
trained here on CORPUS and written as vocab-only GGUF files under other pre-tokenizer names, so
that each family of llama.cpp's pre-tokenizer regexes is checked, not only the default model's.
"""

from __future__ import annotations

import ctypes
import json
import time
from pathlib import Path

import pytest

from engine.errors import ModelFormatError
from engine.formats.gguf import read_gguf
from engine.text.tokenizer import BPETokenizer, StreamingDetokenizer, load_tokenizer

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")  # GGUFWriter, for the vocab-only files trained here

# --- the texts every vocabulary is checked on -----------------------------------------------

PROSE = (
    "The quick brown fox jumps over the lazy dog. It's a well-known pangram; typists have "
    "used it for decades. \"Really?\" she asked -- and he said: yes, (mostly) really!"
)
CODE = '''import os


class Greeter:
    """Say hello."""

    def __init__(self, name: str = "world") -> None:
        self.name = name  # trailing comment

    def greet(self):
\t\treturn f"Hello, {self.name}!" if self.name else None
'''
TEXTS = {
    "prose": PROSE,
    "code": CODE,
    "whitespace": "a  b   c\t\td\n\ne \n \n  f   \t \r\n\r\n   trailing   ",
    "only-spaces": "     ",
    "newlines": "\n\n\n",
    "numbers": "1234567 3.14159 1,000,000 -42 0x1F 2024-01-31 10:30pm 007 ²³ ½",
    "emoji": "I ❤️ it 😀😃 👍🏽 👨‍👩‍👧‍👦 🇺🇸🇯🇵 🏳️‍🌈 done",
    "cjk": "日本語のテキストです。中文字符，汉语。한국어 문장입니다.",
    "accents": "café naïve résumé Ångström e\u0301 a\u0308 Ελληνικά Кириллица",
    "arabic": "مرحبا بالعالم! هذا نص عربي ١٢٣",
    "contractions": "don't I'LL we've you're she'd they'RE it's 'S O'Neil",
    "empty": "",
    "special-as-text": "<|im_start|>user <|endoftext|> </s> <s>",
    "punctuation": "Wait... what?! $5+3=8 <html> a|b ~x^y `code` @user #tag 100% {[()]}",
    "mixed": "Email me at test@example.com — or call +1 (555) 123-4567. Ça va? 你好! 🚀",
}
TEXTS["long"] = "\n\n".join([PROSE, CODE, *TEXTS.values()] * 4)  # about 5 KB
EMOJI_AND_CJK = ["emoji", "cjk", "mixed", "arabic", "accents"]
CHATML = "<|im_start|>user\nHi<|im_end|>\n"


# --- asking llama.cpp -----------------------------------------------------------------------


def load_llama(path: Path):
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def llama_ids(llm, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)


def llama_piece(llm, token_id: int, special: bool) -> bytes:
    # llama-cpp-python's own detokenize() truncates pieces longer than 32 bytes.
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token_id, buf, len(buf), 0, special)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token_id, buf, len(buf), 0, special)
    return buf.raw[:n]


def llama_pieces(llm, ids: list[int], special: bool) -> bytes:
    return b"".join(llama_piece(llm, i, special) for i in ids)


def llama_detokenize(llm, ids: list[int]) -> bytes:
    """llama.cpp's llama_detokenize (remove_special=False, unparse_special=False)."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 16 * len(ids) + 16
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, False)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def llama_eog(llm) -> set[int]:
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return {i for i in range(llama_cpp.llama_vocab_n_tokens(vocab))
            if llama_cpp.llama_vocab_is_eog(vocab, i)}


# --- the bundled default model --------------------------------------------------------------


@pytest.fixture(scope="session")
def smol(default_metadata) -> BPETokenizer:
    return load_tokenizer(default_metadata)


@pytest.fixture(scope="session")
def smol_llama(default_gguf: Path):
    return load_llama(default_gguf)


@pytest.mark.parametrize("name", TEXTS)
def test_default_model_ids_match_llama_cpp(smol, smol_llama, name):
    text = TEXTS[name]
    assert smol.encode(text, add_special=False) == llama_ids(smol_llama, text)


def test_default_model_bytes_without_tokens_are_dropped_like_llama_cpp(smol, smol_llama):
    # SmolLM2 has no token for bytes such as 0x04 or 0x1d; llama.cpp drops them, but they still
    # keep their neighbours apart (" \x1dá" must not merge " " with "á").
    text = "a\x04b \x1d\u102f x\x16y \x13\x14 \U000e0001 end"
    assert smol.encode(text, add_special=False) == llama_ids(smol_llama, text)


@pytest.mark.parametrize("name", TEXTS)
def test_default_model_decode_round_trips_and_matches_llama_cpp(smol, smol_llama, name):
    text = TEXTS[name]
    ids = smol.encode(text, add_special=False)
    assert smol.decode(ids) == text
    assert smol.decode(ids) == llama_detokenize(smol_llama, ids).decode("utf-8")


def test_default_model_token_bytes_match_llama_cpp_for_every_token(smol, smol_llama):
    assert smol.vocab_size == 49152
    for i in range(smol.vocab_size):
        assert smol.token_bytes(i) == llama_piece(smol_llama, i, special=True), i


def test_default_model_special_tokens(smol, smol_llama):
    assert (smol.bos_id, smol.eos_id, smol.add_bos, smol.add_eos) == (1, 2, False, False)
    # llama.cpp ends generation on <|endoftext|>, <|im_end|> and, found by its text as a FIM
    # "repo" token, <reponame>.
    assert smol.eos_ids == llama_eog(smol_llama) == {0, 2, 4}
    vocab = llama_cpp.llama_model_get_vocab(smol_llama.model)
    skippable = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    for i in range(smol.vocab_size):
        assert smol.is_special(i) == bool(llama_cpp.llama_vocab_get_attr(vocab, i) & skippable)
    assert smol.token_to_id("<|im_end|>") == 2


def test_default_model_parses_special_tokens_only_when_asked(smol, smol_llama):
    ids = smol.encode(CHATML, add_special=False, parse_special=True)
    assert ids == llama_ids(smol_llama, CHATML, special=True)
    assert ids[0] == 1 and 2 in ids

    plain = smol.encode(CHATML, add_special=False, parse_special=False)
    assert plain == llama_ids(smol_llama, CHATML, special=False)
    assert not any(smol.is_special(i) for i in plain)
    assert smol.decode(plain) == CHATML


def test_default_model_adds_no_bos(smol, smol_llama):
    # llama.cpp's add_bos=True means "add what the model's metadata asks for": nothing here.
    for text in (PROSE, CHATML):
        assert smol.encode(text) == llama_ids(smol_llama, text, add_bos=True)
        assert smol.encode(text, parse_special=True) == llama_ids(
            smol_llama, text, add_bos=True, special=True)
    assert smol.encode("") == []


def test_decode_skips_special_tokens_on_request(smol, smol_llama):
    ids = smol.encode(CHATML, parse_special=True)
    assert smol.decode(ids) == CHATML
    assert smol.decode(ids, skip_special=True) == "user\nHi\n"
    assert smol.decode(ids, skip_special=True).encode() == llama_pieces(smol_llama, ids, False)


def test_decode_replaces_invalid_utf8(smol):
    first_byte_of_emoji = smol.encode("😀", add_special=False)[0]
    assert smol.decode([first_byte_of_emoji]) == "\ufffd"
    with pytest.raises(ValueError):
        smol.decode([smol.vocab_size])


# --- streaming ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EMOJI_AND_CJK)
def test_streaming_never_emits_partial_characters(smol, name):
    ids = smol.encode(TEXTS[name], add_special=False)
    stream = StreamingDetokenizer(smol)
    chunks = [stream.add(i) for i in ids]
    chunks.append(stream.flush())
    assert "" in chunks[:-1]  # some characters really do span several tokens
    for chunk in chunks:
        assert "\ufffd" not in chunk
        chunk.encode("utf-8")  # no lone surrogates: every chunk is whole characters
    assert "".join(chunks) == stream.text == smol.decode(ids) == TEXTS[name]


def test_streaming_skips_special_tokens_and_flushes_incomplete_bytes(smol):
    ids = smol.encode(CHATML + "😀", parse_special=True)
    stream = StreamingDetokenizer(smol)
    text = "".join(stream.add(i) for i in ids[:-1])
    assert text == "user\nHi\n"  # the emoji's last byte is still missing
    assert stream.flush() == "\ufffd"
    assert stream.text == "user\nHi\n\ufffd"

    shown = StreamingDetokenizer(smol, skip_special=False)
    assert "".join(shown.add(i) for i in ids) + shown.flush() == CHATML + "😀"


# --- speed ----------------------------------------------------------------------------------


def test_build_and_encode_are_fast(default_metadata):
    start = time.perf_counter()
    tok = BPETokenizer.from_gguf_metadata(default_metadata)
    assert time.perf_counter() - start < 1.0

    text = (TEXTS["long"] * 3)[:10_000]
    best = min(_timed(tok.encode, text) for _ in range(3))
    assert best < 0.05, f"encoding 10 KB took {best * 1000:.1f} ms"


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


# --- other pre-tokenizers, on a vocabulary trained here -------------------------------------

CORPUS = "\n".join([
    PROSE, CODE,
    "Numbers: 0 1 12 123 1234 12345 123456 1234567 3.14159 2.71828 1,000,000 42nd 1990s.",
    "Phone 555-0100, room 404, year 2024, pi 3.1415926535, ids 0042 0x7f 1e-9.",
    "Codes: (123)(456)(789) [123][456] #123456 #456789 x=123; y=456; z=1234567;",
    "for i in range(10):\n    total += i * 2\n    print(f'{i:03d}', total)\n",
    "if (a && b) { return x[i] + y[j]; } else { throw new Error(\"bad\"); }",
    "日本語のテキストです。東京は日本の首都です。中文字符和汉语句子。我们喜欢学习。",
    "한국어 문장입니다. 서울은 한국의 수도입니다.",
    "مرحبا بالعالم، هذا نص عربي قصير. السلام عليكم",
    "Emoji 😀 😃 👍 🚀 ❤️ 🇺🇸 and café naïve résumé Ελληνικά Кириллица.",
    "don't won't can't I'm you're we've they'll she'd it's I'LL WE'VE",
    "The weather today is sunny with a light breeze. Tomorrow it may rain in the afternoon, "
    "so bring an umbrella. Reading books, writing code and drinking tea are fine ways to spend "
    "a quiet evening at home with friends and family.",
] * 3)

# Token ids 0-3 of the trained vocabulary: three control tokens and one user-defined token.
TINY_SPECIALS = {"<|endoftext|>": 3, "<|im_start|>": 3, "<|im_end|>": 3, "<tool_call>": 4}


@pytest.fixture(scope="session")
def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of a byte-level BPE trained on CORPUS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=list(TINY_SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator([CORPUS], trainer)
    model = json.loads(hf.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    types = [TINY_SPECIALS.get(t, 1) for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    assert tokens[:4] == list(TINY_SPECIALS) and len(merges) > 500
    return tokens, types, merges


def write_vocab_gguf(path: Path, tokens, types, merges, pre: str | None) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")  # llama.cpp needs no llama.* keys for vocab_only
    writer.add_tokenizer_model("gpt2")
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# pre-tokenizer -> whether llama.cpp adds BOS when the GGUF does not say (llama3 family only).
TINY_PRES = {"llama-bpe": True, "qwen2": False, "gpt-2": False, "default": False,
             "smollm": False, None: False}


@pytest.fixture(scope="session", params=list(TINY_PRES), ids=lambda p: str(p))
def tiny(request, tiny_vocab, tmp_path_factory):
    """(pre, our tokenizer, llama.cpp) for one pre-tokenizer over the trained vocabulary."""
    pre = request.param
    path = write_vocab_gguf(tmp_path_factory.mktemp("vocab") / f"tiny-{pre}.gguf",
                            *tiny_vocab, pre=pre)
    with read_gguf(path) as vocab:
        metadata = vocab.metadata
    return pre, load_tokenizer(metadata), load_llama(path)


def test_other_pretokenizers_match_llama_cpp(tiny):
    pre, tok, llm = tiny
    assert tok.pre_tokenizer == (pre or "default")
    for name, text in TEXTS.items():
        ids = tok.encode(text, add_special=False)
        assert ids == llama_ids(llm, text), (pre, name)
        assert tok.decode(ids) == text, (pre, name)
        # llama_detokenize would also "clean up spaces" for some of these; the per-token
        # pieces are what a streaming client sees.
        assert tok.decode(ids).encode() == llama_pieces(llm, ids, special=True), (pre, name)


def test_other_pretokenizers_special_tokens_and_bos(tiny):
    pre, tok, llm = tiny
    assert tok.add_bos == TINY_PRES[pre]
    assert tok.add_bos == llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(
        llm.model))
    assert tok.eos_ids == llama_eog(llm) == {0, 2}
    for text in (CHATML, PROSE, "<tool_call>{\"name\": 1}</tool_call>", ""):
        assert tok.encode(text) == llama_ids(llm, text, add_bos=True)
        assert tok.encode(text, parse_special=True) == llama_ids(llm, text, add_bos=True,
                                                                  special=True)
    # User-defined tokens are matched even without parse_special (as in llama.cpp and HF).
    assert 3 in tok.encode("<tool_call>", add_special=False)
    assert 2 not in tok.encode(CHATML, add_special=False)


def test_pretokenizers_really_differ(tiny):
    # The families cut " 1234567" differently: after every digit (qwen2, smollm), in threes
    # (llama3, default), or with the space glued to the digits (gpt-2: "Ġ123456" is a token).
    pre, tok, _ = tiny
    cuts, end = set(), 0
    for i in tok.encode(" 1234567", add_special=False):
        end += len(tok.token_bytes(i))
        cuts.add(end)
    if pre in ("qwen2", "smollm"):
        assert cuts == set(range(1, 9))
    elif pre in ("llama-bpe", "default", None):
        assert {1, 4, 7, 8} <= cuts and len(cuts) < 8
    else:
        assert 1 not in cuts


# --- unsupported inputs ---------------------------------------------------------------------


def test_sentencepiece_vocabularies_get_the_spm_tokenizer(default_metadata):
    # The default model's byte-level vocabulary read as SentencePiece: it loads (scores default
    # to 0) as SPMTokenizer; tests/test_spm.py checks real SentencePiece vocabularies' ids.
    from engine.text.spm import SPMTokenizer

    assert isinstance(load_tokenizer({**default_metadata, "tokenizer.ggml.model": "llama"}), SPMTokenizer)


def test_unknown_tokenizer_model_is_rejected(default_metadata):
    with pytest.raises(ModelFormatError, match="'bert'"):
        load_tokenizer({**default_metadata, "tokenizer.ggml.model": "bert"})
    with pytest.raises(ModelFormatError, match="'llama'"):
        BPETokenizer.from_gguf_metadata({**default_metadata, "tokenizer.ggml.model": "llama"})
    with pytest.raises(ModelFormatError):
        load_tokenizer({})


def test_unknown_pretokenizer_is_rejected(default_metadata):
    with pytest.raises(ModelFormatError, match="'no-such-pre'"):
        load_tokenizer({**default_metadata, "tokenizer.ggml.pre": "no-such-pre"})


def test_malformed_vocabulary_is_rejected(default_metadata):
    bad = {
        "tokenizer.ggml.tokens": [1, 2, 3],
        "tokenizer.ggml.token_type": [1, 1],
        "tokenizer.ggml.merges": None,
        "tokenizer.ggml.bos_token_id": "1",
    }
    for key, value in bad.items():
        with pytest.raises(ModelFormatError, match=key.rsplit(".", 1)[1]):
            load_tokenizer({**default_metadata, key: value})
