"""GGUF vocabulary reading shared by the byte-level BPE (`engine.text.tokenizer`) and SentencePiece
(`engine.text.spm`) tokenizers, and by the text side of Hugging Face folders (`engine.text.hf_text`).

All of it follows llama.cpp's `llama-vocab.cpp`: token types and attributes, validated reading
of the tokens, types and special-token ids from GGUF metadata, special tokens split out of raw
text (longest first, with Phi-3's RSTRIP), and the end-of-generation set, including llama.cpp's
detection of EOG and FIM tokens by their text; and `GGUFVocabulary`, the encode/decode frame
both GGUF tokenizers are built on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from numbers import Integral
from typing import Any

from ..errors import ModelFormatError

log = logging.getLogger(__name__)

# GGUF token types (tokenizer.ggml.token_type) and llama.cpp's matching attribute bits.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 4, 8, 16, 32
_TYPE_TO_ATTR = {1: NORMAL, 2: UNKNOWN, 3: CONTROL, 4: USER_DEFINED, 5: UNUSED, 6: BYTE}
_SKIPPABLE = UNKNOWN | CONTROL  # what decode(skip_special=True) drops; llama.cpp's special=False

# --- llama.cpp's text-based special-token rules ---------------------------------------------

_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
              "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
# FIM token kinds llama.cpp detects by text when the metadata does not name them:
# metadata key -> (candidate texts, whether the token ends generation).
_FIM_KINDS = {
    "tokenizer.ggml.fim_pre_token_id": (
        ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
         "<|code_prefix|>", "<|prefix|>"), False),
    "tokenizer.ggml.fim_suf_token_id": (
        ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
         "<|code_suffix|>", "<|suffix|>"), False),
    "tokenizer.ggml.fim_mid_token_id": (
        ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
         "<|code_middle|>", "<|middle|>"), False),
    "tokenizer.ggml.fim_pad_token_id": (
        ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"), True),
    "tokenizer.ggml.fim_rep_token_id": (
        ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"), True),
    "tokenizer.ggml.fim_sep_token_id": (("<|file_sep|>",), True),
}
_EOG_TEXTS = frozenset(_EOT_TEXTS + _EOM_TEXTS + (
    "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "</s>", "[EOS]", "<eos>", "<turn|>",
    "<|tool_response>", "[e~[",
))
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")  # gpt-oss


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _read_vocabulary(metadata: dict[str, Any], model: str, reader: str) -> tuple[list[str], list[int]]:
    """A GGUF vocabulary of kind `model` (tokenizer.ggml.model): its tokens and their attributes."""
    found = metadata.get("tokenizer.ggml.model")
    if found != model:
        raise ModelFormatError(f"tokenizer.ggml.model is {found!r}; {reader} reads only {model!r} vocabularies")
    tokens = _read_tokens(metadata)
    return tokens, _read_attrs(metadata, len(tokens))


def _read_tokens(metadata: dict[str, Any]) -> list[str]:
    tokens = _string_list(metadata, "tokenizer.ggml.tokens")
    if not tokens:
        raise ModelFormatError("tokenizer.ggml.tokens is missing or empty")
    return [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]  # as llama.cpp


def _read_attrs(metadata: dict[str, Any], n: int) -> list[int]:
    """llama.cpp's token attributes from tokenizer.ggml.token_type (all NORMAL without it)."""
    types = metadata.get("tokenizer.ggml.token_type")
    if types is None:
        return [NORMAL] * n
    if not isinstance(types, list) or len(types) < n or not all(
            type(t) is int or isinstance(t, Integral) and not isinstance(t, bool)
            for t in types[:n]):
        raise ModelFormatError(
            "tokenizer.ggml.token_type must be a list of integers, one per token")
    return [_TYPE_TO_ATTR.get(int(t), 0) for t in types[:n]]


Specials = list[tuple[str, int]]


def _token_piece(text: str, attr: int, normal_bytes) -> bytes:
    """One token's bytes, as llama.cpp's token_to_piece. BPE and SentencePiece vocabularies
    differ only in how a NORMAL token's text maps to bytes (`normal_bytes`)."""
    if attr & (CONTROL | UNKNOWN | USER_DEFINED):
        return text.encode("utf-8")
    if attr & NORMAL:
        return normal_bytes(text)
    if attr & BYTE:  # "<0xAB>"
        return bytes([_byte_token_value(text)])
    return b""  # unused or undefined: llama.cpp renders nothing


def _byte_token_value(text: str) -> int:
    """llama.cpp's token_to_byte: `(uint8_t) strtol(text.substr(3, 2), NULL, 16)`, so the two
    bytes after "<0x" are read as C does (leading space, a sign, the hex digits there are) and
    wrap to a byte: "<0x-1>" is 0xFF, "<0xZZ>" is 0x00."""
    s = text.encode("utf-8")[3:5].decode("latin-1")
    i = len(s) - len(s.lstrip(_C_SPACE))
    negative = i < len(s) and s[i] == "-"
    i += i < len(s) and s[i] in "+-"
    digits = ""
    for c in s[i:]:
        if c not in "0123456789abcdefABCDEF":
            break
        digits += c
    value = int(digits, 16) if digits else 0
    return (-value if negative else value) & 0xFF


def _special_tokens(tokens: list[str], attrs: list[int]) -> tuple[Specials, Specials]:
    """(text, id) of the tokens matched in raw text, longest text (in bytes) first as in
    llama.cpp's cache_special_tokens: all of them (for parse_special), and the user-defined
    ones alone (matched always)."""
    specials = [i for i, a in enumerate(attrs) if a & (CONTROL | USER_DEFINED | UNKNOWN)]
    specials.sort(key=lambda i: (-len(tokens[i].encode()), i))
    return ([(tokens[i], i) for i in specials],
            [(tokens[i], i) for i in specials if not attrs[i] & _SKIPPABLE])


# What C's isspace() accepts: llama.cpp's RSTRIP strips these bytes after a special token.
_C_SPACE = " \t\n\v\f\r"


def _partition_special(text: str, specials: Specials,
                       rstrip_ids: frozenset[int] = frozenset()) -> list[str | int]:
    """llama.cpp's tokenizer_st_partition: each special token, longest first, splits the
    raw-text fragments left by the ones before it; tokens in `rstrip_ids` also swallow the
    whitespace that follows them."""
    fragments: list[str | int] = [text] if text else []
    for special, token_id in specials:
        if special not in text:
            continue
        split: list[str | int] = []
        for fragment in fragments:
            if isinstance(fragment, int) or special not in fragment:
                split.append(fragment)
                continue
            for k, part in enumerate(fragment.split(special)):
                if k:
                    split.append(token_id)
                    if token_id in rstrip_ids:
                        part = part.lstrip(_C_SPACE)
                if part:
                    split.append(part)
        fragments = split
    return fragments


def _rstrip_ids(metadata: dict[str, Any], tokens: list[str],
                attrs: list[int]) -> frozenset[int]:
    """llama.cpp gives Phi-3 models (by general.name) RSTRIP special tokens: whitespace after
    them is dropped before tokenizing."""
    name = metadata.get("general.name")
    if not isinstance(name, str) or not ("phi-3" in name.lower() or "phi3" in name.lower()):
        return frozenset()
    ids = {i for i, a in enumerate(attrs) if a & (CONTROL | USER_DEFINED | UNKNOWN)}
    text_to_id = {text: i for i, text in enumerate(tokens)}
    if "</s>" in text_to_id:
        ids.add(text_to_id["</s>"])
    ids.difference_update(text_to_id[t] for t in ("<unk>", "<s>", "<|endoftext|>")
                          if t in text_to_id)
    return frozenset(ids)


def _string_list(metadata: dict[str, Any], key: str) -> list[str]:
    value = metadata.get(key)
    if value is None:
        raise ModelFormatError(f"the GGUF tokenizer lacks {key}")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelFormatError(f"{key} must be a list of strings")
    return value


def _special_id(metadata: dict[str, Any], key: str, default: int | None, n: int) -> int | None:
    if default is not None and default >= n:
        default = None
    value = metadata.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ModelFormatError(f"{key} must be an integer token id, not {value!r}")
    value = int(value)
    if not 0 <= value < n:
        log.warning("%s = %d is outside the vocabulary (%d tokens); using %s",
                    key, value, n, default)
        return default
    return value


def _flag(metadata: dict[str, Any], key: str, default: bool) -> bool:
    value = metadata.get(key, default)
    if not isinstance(value, bool):
        raise ModelFormatError(f"{key} must be a boolean, not {value!r}")
    return value


def _end_of_generation(metadata: dict[str, Any], tokens: list[str], attrs: list[int],
                       eos_id: int | None, eot_id: int | None,
                       eom_id: int | None) -> frozenset[int]:
    """llama.cpp's special_eog_ids. Like llama.cpp, marks the tokens it detects by text as
    control tokens (in `attrs`). Where several texts could be one kind of token (EOT, FIM pad,
    ...), llama.cpp takes whichever its hash map yields first; we take the lowest id."""
    text_to_id = {text: i for i, text in enumerate(tokens)}  # last one wins, as llama.cpp

    def detect(texts: Sequence[str]) -> int | None:
        found = [text_to_id[t] for t in texts if t in text_to_id]
        if not found:
            return None
        attrs[min(found)] |= CONTROL
        return min(found)

    eog: set[int] = set()
    if eot_id is None:
        eot_id = detect(_EOT_TEXTS)
    if eom_id is None:
        eom_id = detect(_EOM_TEXTS)
    for key, (texts, ends_generation) in _FIM_KINDS.items():
        fim_id = _special_id(metadata, key, None, len(tokens))
        if fim_id is None:
            fim_id = detect(texts)
        if fim_id is not None and ends_generation:
            eog.add(fim_id)
    for text in _EOG_TEXTS:
        if text in text_to_id:
            eog.add(text_to_id[text])
            attrs[text_to_id[text]] |= CONTROL
    for text in _ALWAYS_RENDERED:
        if text in text_to_id:
            attrs[text_to_id[text]] = USER_DEFINED
    eog.update(i for i in (eos_id, eot_id, eom_id) if i is not None)

    texts = {tokens[i]: i for i in eog}
    if "<|end|>" in texts and (("<|return|>" in texts and "<|call|>" in texts)
                               or ("<|calls|>" in texts and "<|flush|>" in texts)):
        eog.discard(texts["<|end|>"])  # o200k_harmony / solar-open: <|end|> ends a message only
        attrs[texts["<|end|>"]] = USER_DEFINED
    if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
        eog.discard(texts["</s>"])  # gemma4 / plamo: </s> is an ordinary token
        attrs[texts["</s>"]] = NORMAL
    return frozenset(eog)


def _special_setup(metadata: dict[str, Any], tokens: list[str], attrs: list[int], *,
                   bos_default: int | None, eos_default: int | None, add_bos_default: bool) -> dict[str, Any]:
    """BOS, EOS, the end-of-generation set, add_bos/add_eos and RSTRIP tokens, read and checked
    from the metadata with the defaults llama.cpp uses for this kind of vocabulary: the keyword
    arguments `GGUFVocabulary._init_vocabulary` takes."""
    n = len(tokens)
    bos_id = _special_id(metadata, "tokenizer.ggml.bos_token_id", bos_default, n)
    eos_id = _special_id(metadata, "tokenizer.ggml.eos_token_id", eos_default, n)
    eot_id = _special_id(metadata, "tokenizer.ggml.eot_token_id", None, n)
    eom_id = _special_id(metadata, "tokenizer.ggml.eom_token_id", None, n)
    add_bos = _flag(metadata, "tokenizer.ggml.add_bos_token", add_bos_default)
    add_eos = _flag(metadata, "tokenizer.ggml.add_eos_token", False)
    if add_bos and bos_id is None or add_eos and eos_id is None:
        raise ModelFormatError("the GGUF asks to add a BOS/EOS token but does not name one")
    return {"bos_id": bos_id, "eos_id": eos_id, "add_bos": add_bos, "add_eos": add_eos,
            "eos_ids": _end_of_generation(metadata, tokens, attrs, eos_id, eot_id, eom_id),
            "rstrip_ids": _rstrip_ids(metadata, tokens, attrs)}


class GGUFVocabulary:
    """What the GGUF BPE (`engine.text.tokenizer.BPETokenizer`) and SentencePiece (`engine.text.spm`)
    tokenizers share: token texts and attributes, special tokens split out of raw text, BOS and
    EOS, and decoding by each token's bytes (llama.cpp's token_to_piece). A subclass gives the
    per-token bytes rule to `_init_vocabulary` and encodes raw text in `_encode_text`."""

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    eos_ids: frozenset[int]  # every end-of-generation id, as llama.cpp's llama_vocab_is_eog
    add_bos: bool
    add_eos: bool
    # SentencePiece vocabularies put a space in front of encoded text, and decoding drops it.
    add_space_prefix: bool = False

    def _init_vocabulary(self, tokens: list[str], attrs: list[int], normal_bytes, *, bos_id: int | None,
                         eos_id: int | None, eos_ids: frozenset[int], add_bos: bool, add_eos: bool,
                         rstrip_ids: frozenset[int]) -> None:
        self.vocab_size = len(tokens)
        self.bos_id, self.eos_id, self.eos_ids = bos_id, eos_id, eos_ids
        self.add_bos, self.add_eos = add_bos, add_eos
        self._attrs = attrs
        self._text_to_id = {text: i for i, text in enumerate(tokens)}  # last one wins, as llama.cpp
        self._pieces = [_token_piece(text, attr, normal_bytes) for text, attr in zip(tokens, attrs)]
        self._specials_all, self._specials_user = _special_tokens(tokens, attrs)
        self._rstrip_ids = rstrip_ids

    def _encode_text(self, text: str, after_special: bool, ids: list[int]) -> None:
        """Append the ids of `text`, raw text with no special tokens in it; `after_special`
        says it starts the text or follows a special token."""
        raise NotImplementedError

    def encode(self, text: str, *, add_special: bool = True,
               parse_special: bool = False) -> list[int]:
        """Token ids of `text`, as llama.cpp's llama_tokenize(add_special, parse_special).

        add_special adds BOS/EOS only where the vocabulary asks for them (`add_bos`/`add_eos`).
        parse_special turns control-token texts such as "<|im_start|>" or "<s>" into their
        single ids; user-defined tokens are matched either way (as llama.cpp and Hugging Face do).
        """
        ids: list[int] = []
        if add_special and self.add_bos:
            ids.append(self.bos_id)
        specials = self._specials_all if parse_special else self._specials_user
        after_special = True  # the text's start counts as following a special token
        for fragment in _partition_special(text, specials, self._rstrip_ids):
            if isinstance(fragment, int):
                ids.append(fragment)
                after_special = True
            else:
                self._encode_text(fragment, after_special, ids)
                after_special = False
        if add_special and self.add_eos:
            ids.append(self.eos_id)
        return ids

    def token_bytes(self, id: int) -> bytes:
        """The bytes llama.cpp's token_to_piece(special=True) gives for one token."""
        if not 0 <= id < self.vocab_size:
            raise ValueError(f"token id {id} is outside the vocabulary (size {self.vocab_size})")
        return self._pieces[id]

    def is_special(self, id: int) -> bool:
        """True for control and unknown tokens: the ones decode(skip_special=True) drops."""
        return 0 <= id < self.vocab_size and bool(self._attrs[id] & _SKIPPABLE)

    def token_to_id(self, text: str) -> int | None:
        """The id of the token whose text is exactly `text` (e.g. "<|im_end|>"), if any."""
        return self._text_to_id.get(text)

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """Text of `ids` as llama.cpp's llama_detokenize(remove_special=False,
        unparse_special=not skip_special): with `add_space_prefix`, the first token loses one
        leading space. Invalid UTF-8 becomes U+FFFD."""
        pieces, attrs, n = self._pieces, self._attrs, self.vocab_size
        for i in ids:
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is outside the vocabulary (size {n})")
        out = [b"" if skip_special and attrs[i] & _SKIPPABLE else pieces[i] for i in ids]
        if out and self.add_space_prefix and out[0][:1] == b" ":
            out[0] = out[0][1:]
        return b"".join(out).decode("utf-8", errors="replace")
