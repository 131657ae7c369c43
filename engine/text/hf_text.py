"""The text side of a Hugging Face checkpoint folder: tokenizer, chat template, special tokens.

`load_hf_text_side(folder)` reads:

- `tokenizer.json` through the `tokenizers` library: ids exactly as Hugging Face gives them
  (added tokens, normalizer, pre-tokenizer, post-processor BOS/EOS), wrapped as `HFTokenizer`;
- else `tokenizer.model` (SentencePiece BPE): converted to the GGUF metadata llama.cpp's
  convert_hf_to_gguf.py writes for it (`engine.text.spm_model.sentencepiece_metadata`) and tokenized by
  `engine.text.spm.SPMTokenizer`, as llama.cpp would tokenize the converted model;
- `tokenizer_config.json` (chat template, bos/eos tokens, add_bos/add_eos, added tokens),
  `chat_template.jinja` / `chat_template.json` where the template lives apart, and
  `special_tokens_map.json`;
- `generation_config.json` (else `config.json`) for the end-of-generation ids.

Every file is validated; problems raise `ModelFormatError` naming the file.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError
from ..formats.hf_files import (
    _MAX_TOKENIZER_BYTES,
    _bool,
    _chat_template,
    _id_list,
    read_json,
    _read_text,
    _token_text,
)
from .spm import SPMTokenizer
from .spm_model import sentencepiece_metadata
from .template import ChatTemplate
from .tokenizer import Tokenizer
from .vocab import CONTROL, NORMAL, USER_DEFINED, _end_of_generation, bytes_to_unicode

log = logging.getLogger(__name__)


# Every file the text side may read: what a copy of a checkpoint's text side must carry.
TEXT_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "generation_config.json", "config.json", "chat_template.jinja", "chat_template.json",
)


@dataclass(frozen=True)
class HFTextSide:
    """What `Model._load_text_side` sets up from GGUF metadata, for a Hugging Face folder."""

    tokenizer: Tokenizer
    template: ChatTemplate


def load_hf_text_side(folder: str | Path) -> HFTextSide:
    """The tokenizer and chat template of a Hugging Face checkpoint folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFormatError(f"{folder} is not a folder")
    config = read_json(folder / "tokenizer_config.json", required=False)
    special_map = read_json(folder / "special_tokens_map.json", required=False)
    generation = read_json(folder / "generation_config.json", required=False)
    model_config = read_json(folder / "config.json", required=False)
    source = _chat_template(folder, config)
    bos_text = _token_text(config, special_map, "bos_token")
    eos_text = _token_text(config, special_map, "eos_token")
    eos_config = generation if "eos_token_id" in generation else model_config
    where = "generation_config.json" if eos_config is generation else "config.json"
    extra_eos = _id_list(eos_config.get("eos_token_id"), f"{folder / where}: eos_token_id")

    if (folder / "tokenizer.json").is_file():
        tokenizer: Tokenizer = HFTokenizer(
            folder / "tokenizer.json", bos_token=bos_text, eos_token=eos_text,
            extra_eos_ids=extra_eos,
            clean_up_spaces=_bool(config, "clean_up_tokenization_spaces", False, folder))
    elif (folder / "tokenizer.model").is_file():
        metadata = sentencepiece_metadata(folder)
        tokenizer = SPMTokenizer.from_gguf_metadata(metadata)
        tokenizer.eos_ids = tokenizer.eos_ids | {i for i in extra_eos
                                                 if 0 <= i < tokenizer.vocab_size}
    else:
        raise ModelFormatError(
            f"{folder} has no tokenizer: expected tokenizer.json or tokenizer.model")

    def text_of(text: str | None, token_id: int | None) -> str:
        if text is not None:
            return text
        return "" if token_id is None else tokenizer.token_bytes(token_id).decode("utf-8", "replace")

    bos, eos = text_of(bos_text, tokenizer.bos_id), text_of(eos_text, tokenizer.eos_id)
    metadata = {"tokenizer.chat_template": source} if source is not None else {}
    return HFTextSide(tokenizer, ChatTemplate.from_gguf_metadata(metadata, bos_token=bos,
                                                                eos_token=eos))


# --- tokenizer.json ------------------------------------------------------------------------


class HFTokenizer:
    """A `tokenizer.json` vocabulary, encoded and decoded by the `tokenizers` library.

    parse_special=False encodes special added tokens as plain text (Hugging Face's
    `split_special_tokens=True`); added tokens that are not special are matched either way.
    """

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    eos_ids: frozenset[int]
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool

    def __init__(self, path: Path, *, bos_token: str | None = None, eos_token: str | None = None,
                 extra_eos_ids: Sequence[int] = (), clean_up_spaces: bool = False) -> None:
        from tokenizers import Tokenizer as HFLibTokenizer

        raw = _read_text(path, _MAX_TOKENIZER_BYTES)
        try:
            spec = json.loads(raw)
            self._hf = HFLibTokenizer.from_str(raw)
        except Exception as exc:  # json.JSONDecodeError, or the library's own parse error
            raise ModelFormatError(f"{path} is not a valid tokenizer.json: {exc}") from None
        if not isinstance(spec, dict):
            raise ModelFormatError(f"{path} is not a valid tokenizer.json: not a JSON object")
        self._hf.no_truncation()  # a tokenizer.json may ask to cut or pad every encoding
        self._hf.no_padding()
        self._encode_lock = threading.Lock()  # encode() flips `encode_special_tokens`
        self._path = path
        self._clean_up_spaces = clean_up_spaces

        vocab = self._hf.get_vocab(with_added_tokens=True)
        if not vocab:
            raise ModelFormatError(f"{path} has an empty vocabulary")
        self.vocab_size = max(vocab.values()) + 1
        added = self._hf.get_added_tokens_decoder()
        self._special_ids = frozenset(i for i, t in added.items() if t.special)

        self.bos_id = self._known_token(bos_token, "bos_token")
        self.eos_id = self._known_token(eos_token, "eos_token")
        prefix, suffix = self._post_processor_tokens()
        self.add_bos, self.add_eos = bool(prefix), bool(suffix)
        if self.bos_id is None and prefix:
            self.bos_id = prefix[0]

        self._decode_piece, self.add_space_prefix = _piece_decoder(spec.get("decoder"), self._hf)
        self._pieces: dict[int, bytes] = {}

        # End of generation: the configured ids, plus what llama.cpp would detect by text in
        # the GGUF conversion of this vocabulary (<|im_end|>, <|eot_id|>, FIM tokens, ...).
        tokens = [self._hf.id_to_token(i) or f"[EMPTY_{i}]" for i in range(self.vocab_size)]
        attrs = [(CONTROL if i in self._special_ids else USER_DEFINED) if i in added else NORMAL
                 for i in range(self.vocab_size)]
        eog = _end_of_generation({}, tokens, attrs, self.eos_id, None, None)
        self.eos_ids = eog | {i for i in extra_eos_ids if 0 <= i < self.vocab_size}

    def _known_token(self, text: str | None, what: str) -> int | None:
        if text is None:
            return None
        token_id = self._hf.token_to_id(text)
        if token_id is None:
            log.warning("%s: %s %r is not in the vocabulary", self._path, what, text)
        return token_id

    def _post_processor_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the post-processor puts before and after a text (e.g. BOS)."""
        plain = self.encode("a", add_special=False)
        full = self.encode("a", add_special=True)
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return full[:start], full[start + len(plain):]
        return [], []

    def encode(self, text: str, *, add_special: bool = True,
               parse_special: bool = False) -> list[int]:
        """Token ids of `text`, as Hugging Face's `tokenizer(text, add_special_tokens=...,
        split_special_tokens=not parse_special)`."""
        with self._encode_lock:
            self._hf.encode_special_tokens = not parse_special
            return self._hf.encode(text, add_special_tokens=add_special).ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """Text of `ids`, as Hugging Face's `tokenizer.decode(ids, skip_special_tokens=...)`."""
        ids = list(ids)
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
        text = self._hf.decode(ids, skip_special_tokens=skip_special)
        return _clean_up_tokenization(text) if self._clean_up_spaces else text

    def token_bytes(self, id: int) -> bytes:
        """One token's bytes as the tokenizer's decoder renders it (a byte-level or `<0xAB>`
        token gives its byte), without the decoder's leading-space strip."""
        if not 0 <= id < self.vocab_size:
            raise ValueError(f"token id {id} is outside the vocabulary (size {self.vocab_size})")
        piece = self._pieces.get(id)
        if piece is None:
            piece = self._pieces[id] = self._decode_piece(id, self._hf.id_to_token(id) or "")
        return piece

    def is_special(self, id: int) -> bool:
        """True for special added tokens: the ones decode(skip_special=True) drops."""
        return id in self._special_ids

    def token_to_id(self, text: str) -> int | None:
        return self._hf.token_to_id(text)


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_UNICODE_TO_BYTE = {c: b for b, c in bytes_to_unicode().items()}


def _piece_decoder(decoder: Any, hf: Any):
    """(token id, token text) -> bytes for the decoders chat models use (ByteLevel; Metaspace
    or Replace + ByteFallback + Fuse + Strip), and whether the decoder drops the first
    token's leading space. Other decoders fall back to decoding the token alone."""
    steps = decoder.get("decoders", []) if isinstance(decoder, dict) and \
        decoder.get("type") == "Sequence" else [decoder]
    byte_level = byte_fallback = strip_first = fused = False
    replaces: list[tuple[str, str]] = []
    understood = decoder is not None
    for step in steps:
        kind = step.get("type") if isinstance(step, dict) else None
        if kind == "ByteLevel":
            byte_level = True
        elif kind == "ByteFallback":
            byte_fallback = True
        elif kind == "Fuse":
            fused = True
        elif kind == "Replace" and isinstance(step.get("pattern"), dict) \
                and isinstance(step["pattern"].get("String"), str) \
                and isinstance(step.get("content"), str):
            replaces.append((step["pattern"]["String"], step["content"]))
        elif kind == "Metaspace":
            replaces.append((step.get("replacement", "▁"), " "))
            strip_first = step.get("prepend_scheme", "always" if step.get(
                "add_prefix_space", True) else "never") != "never"
        elif kind == "Strip" and step.get("content") == " " and fused and \
                step.get("start") == 1 and not step.get("stop"):
            strip_first = True
        else:
            understood = False

    if not understood:
        log.info("unrecognised tokenizer.json decoder %r: streaming decodes token by token",
                 decoder)

        def alone(token_id: int, text: str) -> bytes:
            return hf.decode([token_id], skip_special_tokens=False).encode("utf-8")

        return alone, False

    def piece(token_id: int, text: str) -> bytes:
        if byte_fallback and (m := _BYTE_TOKEN.fullmatch(text)):
            return bytes([int(m.group(1), 16)])
        for old, new in replaces:
            text = text.replace(old, new)
        if byte_level:
            try:
                return bytes(_UNICODE_TO_BYTE[c] for c in text)
            except KeyError:  # not byte-level text: Hugging Face keeps it as it is, lossily
                return text.encode("utf-8")
        return text.encode("utf-8")

    return piece, strip_first


def _clean_up_tokenization(text: str) -> str:
    """transformers' clean_up_tokenization, for tokenizer configs that ask for it."""
    for old, new in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                     (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                     (" 're", "'re")):
        text = text.replace(old, new)
    return text
