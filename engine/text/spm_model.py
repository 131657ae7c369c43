"""A SentencePiece `tokenizer.model` (with the folder's tokenizer_config.json, added tokens and
special-token files) converted to the GGUF tokenizer metadata llama.cpp's convert_hf_to_gguf.py
writes for it, for `engine.text.spm.SPMTokenizer` to tokenize as llama.cpp would tokenize the
converted model.

The serialized ModelProto is read by hand (`_proto_field`), so that the engine needs no
protobuf package; the `sentencepiece` library reads the pieces themselves.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError
from ..formats.hf_files import (
    _MAX_TOKENIZER_BYTES,
    _bool,
    _chat_template,
    _read_bytes,
    read_json,
    _token_text,
)

log = logging.getLogger(__name__)

# GGUF token types (tokenizer.ggml.token_type), as convert_hf_to_gguf.py writes them.
_GGUF_NORMAL, _GGUF_UNKNOWN, _GGUF_CONTROL, _GGUF_USER_DEFINED, _GGUF_UNUSED, _GGUF_BYTE = (
    1, 2, 3, 4, 5, 6)


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

    config = read_json(folder / "tokenizer_config.json", required=False)
    model_config = read_json(folder / "config.json", required=False)
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

    added = read_json(folder / "added_tokens.json", required=False)
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
    special_map = read_json(folder / "special_tokens_map.json", required=False)
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
