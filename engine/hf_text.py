"""The text side of a Hugging Face checkpoint folder: tokenizer, chat template, special tokens.

`load_hf_text_side(folder)` reads:

- `tokenizer.json` through the `tokenizers` library: ids exactly as Hugging Face gives them
  (added tokens, normalizer, pre-tokenizer, post-processor BOS/EOS), wrapped as `HFTokenizer`;
- else `tokenizer.model` (SentencePiece BPE): converted to the GGUF metadata llama.cpp's
  convert_hf_to_gguf.py writes for it (`sentencepiece_metadata`) and tokenized by
  `engine.spm.SPMTokenizer`, as llama.cpp would tokenize the converted model;
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
from numbers import Integral
from pathlib import Path
from typing import Any

from .errors import ModelFormatError
from .template import ChatTemplate
from .tokenizer import (
    CONTROL,
    NORMAL,
    USER_DEFINED,
    Tokenizer,
    _end_of_generation,
    bytes_to_unicode,
)

log = logging.getLogger(__name__)

_MAX_CONFIG_BYTES = 64 << 20  # tokenizer_config.json with a long template is a few hundred KB
_MAX_TOKENIZER_BYTES = 1 << 30

# GGUF token types (tokenizer.ggml.token_type), as convert_hf_to_gguf.py writes them.
_GGUF_NORMAL, _GGUF_UNKNOWN, _GGUF_CONTROL, _GGUF_USER_DEFINED, _GGUF_UNUSED, _GGUF_BYTE = (
    1, 2, 3, 4, 5, 6)


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
    config = _read_json(folder / "tokenizer_config.json", required=False)
    special_map = _read_json(folder / "special_tokens_map.json", required=False)
    generation = _read_json(folder / "generation_config.json", required=False)
    model_config = _read_json(folder / "config.json", required=False)
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
        from .spm import SPMTokenizer

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


# --- tokenizer.model -----------------------------------------------------------------------


def sentencepiece_metadata(folder: str | Path) -> dict[str, Any]:
    """GGUF tokenizer metadata for a folder's SentencePiece `tokenizer.model`, as llama.cpp's
    convert_hf_to_gguf.py writes it (`_create_vocab_sentencepiece` and `SpecialVocab`): the
    pieces with their scores and types, added tokens from added_tokens.json and
    tokenizer_config.json, BOS/EOS/UNK ids, add_bos/add_eos and the chat template."""
    import sentencepiece

    folder = Path(folder)
    path = folder / "tokenizer.model"
    data = _read_bytes(path, _MAX_TOKENIZER_BYTES)
    model_type, add_dummy_prefix = _sentencepiece_spec(data, path)
    if model_type != 2:  # TrainerSpec.ModelType: UNIGRAM=1, BPE=2, WORD=3, CHAR=4
        kind = {1: "Unigram", 3: "word", 4: "char"}.get(model_type, f"type {model_type}")
        raise ModelFormatError(
            f"{path} is a {kind} SentencePiece model; only BPE models (Llama, Mistral) are "
            "supported without a tokenizer.json")
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except Exception as exc:
        raise ModelFormatError(f"{path} is not a valid SentencePiece model: {exc}") from None

    config = _read_json(folder / "tokenizer_config.json", required=False)
    model_config = _read_json(folder / "config.json", required=False)
    n = model_config.get("vocab_size")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        n = sp.vocab_size()
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [_GGUF_UNUSED] * n
    for i in range(min(n, sp.vocab_size())):
        tokens[i], scores[i] = sp.IdToPiece(i), sp.GetScore(i)
        types[i] = (_GGUF_UNKNOWN if sp.IsUnknown(i) else _GGUF_CONTROL if sp.IsControl(i)
                    else _GGUF_UNUSED if sp.IsUnused(i) else _GGUF_BYTE if sp.IsByte(i)
                    else _GGUF_NORMAL)

    added = _read_json(folder / "added_tokens.json", required=False)
    for text, token_id in added.items():
        if isinstance(token_id, int) and 0 <= token_id < n:
            tokens[token_id], scores[token_id], types[token_id] = text, -1000.0, _GGUF_USER_DEFINED
    decoder = config.get("added_tokens_decoder", {})
    if not isinstance(decoder, dict):
        raise ModelFormatError(f"{folder / 'tokenizer_config.json'}: added_tokens_decoder must "
                               "be an object")
    for key, entry in decoder.items():
        text = entry.get("content") if isinstance(entry, dict) else None
        if not (isinstance(key, str) and key.isdigit() and isinstance(text, str)):
            raise ModelFormatError(f"{folder / 'tokenizer_config.json'}: malformed "
                                   f"added_tokens_decoder entry {key!r}")
        token_id = int(key)
        if token_id >= n:
            log.warning("%s: added token %d is outside the vocabulary", folder, token_id)
            continue
        if entry.get("special") or _looks_special(text):
            types[token_id] = _GGUF_CONTROL
        else:
            text = text.replace("▁", " ")  # as the converter: user-defined spaces are spaces
            types[token_id] = _GGUF_USER_DEFINED
        tokens[token_id], scores[token_id] = text, -1000.0

    text_to_id = {text: i for i, text in enumerate(tokens)}
    special_map = _read_json(folder / "special_tokens_map.json", required=False)
    metadata: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.add_space_prefix": add_dummy_prefix,
    }
    for kind, fallback in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unknown", sp.unk_id())):
        name = "unk" if kind == "unknown" else kind
        text = _token_text(config, special_map, f"{name}_token")
        token_id = text_to_id.get(text) if text is not None else None
        if token_id is None:
            token_id = model_config.get(f"{name}_token_id")
        if not isinstance(token_id, int) or isinstance(token_id, bool) or not 0 <= token_id < n:
            token_id = fallback if 0 <= fallback < n else None
        if token_id is not None:
            metadata[f"tokenizer.ggml.{kind}_token_id"] = token_id
    for key in ("add_bos_token", "add_eos_token"):
        if key in config:
            metadata[f"tokenizer.ggml.{key}"] = _bool(config, key, False, folder)
    source = _chat_template(folder, config)
    if source is not None:
        metadata["tokenizer.chat_template"] = source
    return metadata


def _looks_special(text: str) -> bool:
    """convert_hf_to_gguf.py's does_token_look_special: added tokens that are control tokens
    whatever tokenizer_config.json says."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or text.startswith("<|") and text.endswith("|>")
            or text.startswith("<｜") and text.endswith("｜>")
            or text.startswith("<unused") and text.endswith(">"))


def _sentencepiece_spec(data: bytes, path: Path) -> tuple[int, bool]:
    """(TrainerSpec.model_type, NormalizerSpec.add_dummy_prefix) read from the serialized
    ModelProto directly, so that the engine needs no protobuf package."""
    trainer = _proto_field(data, 2, path)
    normalizer = _proto_field(data, 3, path)
    model_type = _proto_field(trainer, 3, path) if trainer is not None else None
    add_dummy_prefix = _proto_field(normalizer, 3, path) if normalizer is not None else None
    return (1 if model_type is None else model_type,  # the proto defaults: Unigram, True
            True if add_dummy_prefix is None else bool(add_dummy_prefix))


def _proto_field(data: bytes, number: int, path: Path) -> Any:
    """The last value of field `number` in a protobuf message: an int for varints, bytes for
    length-delimited fields; None when absent."""

    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            if pos >= len(data) or shift > 63:
                raise ModelFormatError(f"{path} is not a valid SentencePiece model")
            byte = data[pos]
            value |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if not byte & 0x80:
                return value, pos

    found, pos = None, 0
    while pos < len(data):
        key, pos = varint(pos)
        wire = key & 7
        if wire == 0:
            value, pos = varint(pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = varint(pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ModelFormatError(f"{path} is not a valid SentencePiece model")
        if pos > len(data):
            raise ModelFormatError(f"{path} is truncated")
        if key >> 3 == number:
            found = value
    return found


# --- config files --------------------------------------------------------------------------


def _read_bytes(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise ModelFormatError(f"{path} is {size:,} bytes; the limit is {limit:,}")
        return path.read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_text(path: Path, limit: int) -> str:
    try:
        return _read_bytes(path, limit).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelFormatError(f"{path} is not UTF-8 text ({exc.reason})") from None


def _read_json(path: Path, *, required: bool) -> dict[str, Any]:
    """A JSON object from `path`; {} when it is absent and not required."""
    if not path.is_file():
        if required:
            raise ModelFormatError(f"{path} is missing")
        return {}
    try:
        value = json.loads(_read_text(path, _MAX_CONFIG_BYTES))
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ModelFormatError(f"{path} must hold a JSON object, not {type(value).__name__}")
    return value


def _chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    """The chat template, from chat_template.jinja, chat_template.json or tokenizer_config.json
    (the first that has one, as transformers looks). A list of named templates gives the one
    named "default"."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return _read_text(jinja, _MAX_CONFIG_BYTES)
    for name, holder in (("chat_template.json",
                          _read_json(folder / "chat_template.json", required=False)),
                         ("tokenizer_config.json", config)):
        source = holder.get("chat_template")
        if source is None:
            continue
        where = folder / name
        if isinstance(source, list):
            named = {}
            for entry in source:
                if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                        and isinstance(entry.get("template"), str)):
                    raise ModelFormatError(f"{where}: chat_template entries must be "
                                           '{"name": ..., "template": ...}')
                named[entry["name"]] = entry["template"]
            if "default" in named:
                return named["default"]
            if not named:
                return None
            first = next(iter(named))
            log.warning("%s: no chat template is named 'default'; using %r", where, first)
            return named[first]
        if not isinstance(source, str):
            raise ModelFormatError(f"{where}: chat_template must be a string or a list of "
                                   f"named templates, not {type(source).__name__}")
        return source
    return None


def _token_text(config: dict[str, Any], special_map: dict[str, Any], key: str) -> str | None:
    """A special token's text: a string, or an AddedToken object's "content"."""
    for holder in (config, special_map):
        value = holder.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return value
    return None


def _id_list(value: Any, where: str) -> list[int]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, Integral) and not isinstance(v, bool) for v in values):
        raise ModelFormatError(f"{where} must be a token id or a list of them, not {value!r}")
    return [int(v) for v in values]


def _bool(config: dict[str, Any], key: str, default: bool, folder: Path) -> bool:
    value = config.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ModelFormatError(f"{folder / 'tokenizer_config.json'}: {key} must be true or "
                               f"false, not {value!r}")
    return value
