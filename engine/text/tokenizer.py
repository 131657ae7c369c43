"""GGUF tokenizers behind one small protocol, token-for-token equal to llama.cpp.

`load_tokenizer(metadata)` picks the vocabulary type: byte-level BPE (`gpt2`, here) or
SentencePiece (`llama`, in `engine.text.spm`). Both share the `Tokenizer` protocol, llama.cpp's
special-token handling and end-of-generation rules (`engine.text.vocab`), and
`StreamingDetokenizer`.

For byte-level BPE the merge loop runs in Hugging Face `tokenizers` (Rust). Everything around
it follows llama.cpp's `llama-vocab.cpp`, which is the reference we test against:

- pre-tokenization: the regex list llama.cpp uses for each `tokenizer.ggml.pre` value, applied
  one after another (each regex splits the pieces the previous one produced, keeping both the
  matches and the text between them), then GPT-2's byte-to-unicode mapping;
- special tokens: control and unknown tokens are matched in the text only when asked
  (`parse_special`), user-defined tokens always, longest token text first;
- token attributes and the end-of-generation set, including llama.cpp's detection of EOG and
  FIM tokens by their text;
- BOS/EOS: added only where the metadata (or llama.cpp's default for the pre-tokenizer) says.

Decoding concatenates each token's bytes (llama.cpp's `token_to_piece`) and is lossless: unlike
`llama_detokenize` it never applies the "clean up tokenization spaces" pass that llama.cpp runs
for some pre-tokenizers (not for `smollm` or `qwen2`).
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ModelFormatError
from .spm import SPMTokenizer
from .vocab import GGUFVocabulary, _read_vocabulary, _special_setup, _string_list, bytes_to_unicode

log = logging.getLogger(__name__)

# --- pre-tokenizer regexes, verbatim from llama.cpp's llm_tokenizer_bpe ---------------------

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# llama.cpp spells the case-insensitive contractions out as [sS]..., as do we.
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class Tokenizer(Protocol):
    """What the engine needs of a tokenizer: GGUF BPE and SentencePiece vocabularies, and the
    text side of Hugging Face checkpoints (`engine.text.hf_text`), all provide it."""

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    eos_ids: frozenset[int]  # every id that ends generation
    add_bos: bool  # whether encode(add_special=True) starts with bos_id
    add_eos: bool
    # Whether decoding drops one leading space from the first token's text: SentencePiece
    # vocabularies add that space in front of the text when encoding.
    add_space_prefix: bool

    def encode(self, text: str, *, add_special: bool = True,
               parse_special: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str: ...

    def token_bytes(self, id: int) -> bytes: ...

    def is_special(self, id: int) -> bool: ...

    def token_to_id(self, text: str) -> int | None: ...


@dataclass(frozen=True)
class _PreTokenizer:
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a whole piece that is already a token is not merged further
    add_bos: bool = False  # llama.cpp's default when tokenizer.ggml.add_bos_token is absent


_DEFAULT = _PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))
_LLAMA3_PRE = _PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)
_LLAMA3_PLAIN = _PreTokenizer((_LLAMA3,))
_GPT2_PRE = _PreTokenizer((_GPT2,))
_STARCODER = _PreTokenizer((r"\p{N}", _GPT2))  # digits one by one, then GPT-2
_QWEN2_PRE = _PreTokenizer((_QWEN2,))


def _names(spec: _PreTokenizer, *names: str) -> dict[str, _PreTokenizer]:
    return dict.fromkeys(names, spec)


# tokenizer.ggml.pre -> rules; the groupings mirror llama.cpp's llama_vocab::impl::load.
PRE_TOKENIZERS: dict[str, _PreTokenizer] = {
    "default": _DEFAULT,
    **_names(_LLAMA3_PRE, "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
             "midm-2.0", "lfm2", "jina-v5-nano"),
    **_names(_LLAMA3_PLAIN, "dbrx", "smaug-bpe"),
    **_names(_GPT2_PRE, "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es",
             "jina-v2-de", "a.x-4.0", "mellum", "modern-bert", "exaone4", "mpt", "olmo", "jais",
             "trillion", "granite-docling"),
    **_names(_STARCODER, "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone",
             "minerva-7b", "mellum2"),
    **_names(_QWEN2_PRE, "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2",
             "hunyuan", "solar-open"),
}

# Placeholder text for a byte the vocabulary has no token for; no GGUF token looks like it.
_MISSING_BYTE = "\x00missing-byte\x00"

# Translates byte-level token text to latin-1 code points, one per byte. Characters below 256
# that are not in GPT-2's alphabet become U+FFFF, so that encoding to latin-1 fails for them too.
_BYTE_LEVEL_TO_LATIN1 = {**dict.fromkeys(range(256), 0xFFFF),
                         **{ord(c): b for b, c in bytes_to_unicode().items()}}


class BPETokenizer(GGUFVocabulary):
    """A GGUF `gpt2` (byte-level BPE) vocabulary. Build it with `from_gguf_metadata`."""

    pre_tokenizer: str

    def __init__(self, *, tokens: list[str], attrs: list[int], merges: list[tuple[str, str]],
                 pre: str, bos_id: int | None, eos_id: int | None, eos_ids: frozenset[int],
                 add_bos: bool, add_eos: bool, rstrip_ids: frozenset[int] = frozenset()) -> None:
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers

        spec = PRE_TOKENIZERS[pre]
        self._init_vocabulary(tokens, attrs, _normal_bytes, bos_id=bos_id, eos_id=eos_id, eos_ids=eos_ids,
                              add_bos=add_bos, add_eos=add_eos, rstrip_ids=rstrip_ids)
        self.pre_tokenizer = pre

        # A byte with no token of its own must still keep its neighbours from merging, as in
        # llama.cpp (which then drops it); Hugging Face's BPE would skip it before merging. So
        # such bytes become an out-of-vocabulary placeholder id that encode() filters out.
        vocab = {**self._text_to_id, _MISSING_BYTE: self.vocab_size}
        model = models.BPE(vocab=vocab, merges=merges, unk_token=_MISSING_BYTE,
                           ignore_merges=spec.ignore_merges)
        self._hf = Tokenizer(model)
        self._hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in spec.regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )

    # --- construction --------------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any]) -> BPETokenizer:
        """Build from GGUF metadata (key -> value, arrays as lists), validating what it reads."""
        tokens, attrs = _read_vocabulary(metadata, "gpt2", "BPETokenizer")
        pre = metadata.get("tokenizer.ggml.pre")
        if pre is None or pre == "":
            log.warning("GGUF has no tokenizer.ggml.pre; using llama.cpp's 'default' pre-tokenizer")
            pre = "default"
        if pre not in PRE_TOKENIZERS:
            raise ModelFormatError(
                f"unsupported BPE pre-tokenizer tokenizer.ggml.pre={pre!r}; supported: "
                + ", ".join(sorted(PRE_TOKENIZERS)))

        merges = _parse_merges(_string_list(metadata, "tokenizer.ggml.merges"), tokens)

        # gpt2 vocabularies in llama.cpp default BOS and EOS to 11 (Falcon's <|endoftext|>).
        specials = _special_setup(metadata, tokens, attrs, bos_default=11, eos_default=11,
                                  add_bos_default=PRE_TOKENIZERS[pre].add_bos)
        return cls(tokens=tokens, attrs=attrs, merges=merges, pre=pre, **specials)

    # --- encoding ------------------------------------------------------------------------

    def _encode_text(self, text: str, after_special: bool, ids: list[int]) -> None:
        piece_ids = self._hf.encode(text, add_special_tokens=False).ids
        if self.vocab_size in piece_ids:
            piece_ids = [i for i in piece_ids if i != self.vocab_size]
        ids.extend(piece_ids)


class StreamingDetokenizer:
    """Turns ids into text deltas one token at a time, holding back incomplete UTF-8.

    The text is what `tokenizer.decode(ids, skip_special=...)` gives for all ids so far: where
    the vocabulary adds a space in front of encoded text (`add_space_prefix`), the first
    token's leading space is dropped, as llama.cpp's llama_detokenize does.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip_space = tokenizer.add_space_prefix
        self.text = ""

    def add(self, token_id: int) -> str:
        """The text completed by this token ("" while a character is still partial)."""
        tok = self._tokenizer
        first, self._strip_space = self._strip_space, False
        if self._skip_special and tok.is_special(token_id):
            return ""
        piece = tok.token_bytes(token_id)
        if first and piece[:1] == b" ":
            piece = piece[1:]
        delta = self._decoder.decode(piece, final=False)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Whatever is held back; an incomplete character comes out as U+FFFD."""
        delta = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        self.text += delta
        return delta


def load_tokenizer(metadata: dict[str, Any]) -> Tokenizer:
    """The tokenizer for a GGUF file's metadata, chosen by tokenizer.ggml.model."""
    model = metadata.get("tokenizer.ggml.model")
    if model == "gpt2":
        return BPETokenizer.from_gguf_metadata(metadata)
    if model == "llama":
        return SPMTokenizer.from_gguf_metadata(metadata)
    if model is None:
        raise ModelFormatError("the GGUF file has no tokenizer (tokenizer.ggml.model is missing)")
    raise ModelFormatError(f"unsupported tokenizer model tokenizer.ggml.model={model!r}")


# --- helpers -------------------------------------------------------------------------------


def _normal_bytes(text: str) -> bytes:
    """A NORMAL byte-level BPE token's bytes: GPT-2's byte alphabet back to bytes."""
    try:
        return text.translate(_BYTE_LEVEL_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        # A character outside GPT-2's byte alphabet: llama.cpp emits an "[UNK_BYTE_...]"
        # marker here; like Hugging Face's ByteLevel decoder we keep the text as UTF-8.
        return text.encode("utf-8")


def _parse_merges(raw: list[str], tokens: list[str]) -> list[tuple[str, str]]:
    """"a b" strings -> pairs, split at the first space after the first character (as
    llama.cpp). A pair whose parts or result are not tokens cannot yield a token and is
    dropped; a repeated pair keeps its first (highest-priority) rank, as in llama.cpp."""
    vocab = set(tokens)
    seen: set[tuple[str, str]] = set()
    merges: list[tuple[str, str]] = []
    for line in raw:
        cut = line.find(" ", 1)
        if cut < 0:
            continue
        pair = (line[:cut], line[cut + 1:])
        if pair not in seen and pair[0] in vocab and pair[1] in vocab \
                and pair[0] + pair[1] in vocab:
            seen.add(pair)
            merges.append(pair)
    if len(merges) < len(raw):
        log.warning("ignored %d unusable or repeated entries of tokenizer.ggml.merges",
                    len(raw) - len(merges))
    return merges
