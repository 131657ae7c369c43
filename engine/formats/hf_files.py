"""Reading the small files of a Hugging Face checkpoint folder, validated: size-limited bytes,
UTF-8 text and JSON objects, and the fields of tokenizer_config.json that both the
`tokenizer.json` side (`engine.text.hf_text`) and the `tokenizer.model` side (`engine.text.spm_model`)
need: the chat template, special-token texts, token id lists and flags.

Every problem raises `ModelFormatError` naming the file.
"""

from __future__ import annotations

import json
import logging
from numbers import Integral
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError

log = logging.getLogger(__name__)

_MAX_CONFIG_BYTES = 64 << 20  # config, index, tokenizer_config.json (a long template): KB to a few MB
_MAX_TOKENIZER_BYTES = 1 << 30


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


def read_json(path: Path, *, required: bool) -> dict[str, Any]:
    """A JSON object from `path`; {} when it is absent and not required."""
    if not path.is_file():
        if required:
            raise ModelFormatError(f"{path} is missing")
        return {}
    try:
        value = json.loads(_read_text(path, _MAX_CONFIG_BYTES))
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ModelFormatError(f"{path} is not valid JSON: nested too deeply") from None
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
                          read_json(folder / "chat_template.json", required=False)),
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


# transformers applies these only when sampling (do_sample: true); repetition_penalty always.
_SAMPLING_ONLY = ("temperature", "top_p", "top_k", "min_p")


def generation_defaults(folder: Path) -> dict[str, float | int]:
    """The sampling settings a checkpoint recommends in generation_config.json.

    Advice, not structure: a missing or unreadable file, or a bad value, is skipped with a
    warning and never stops the model from loading. With `do_sample: false` transformers would
    decode greedily and ignore temperature/top-p/top-k/min-p; a chat app still samples, so
    those are dropped (falling back to the other layers) rather than turned into greedy.
    """
    from ..runtime.sampling import MODEL_DEFAULT_KEYS, check_model_defaults

    path = folder / "generation_config.json"
    try:
        config = read_json(path, required=False)
    except ModelFormatError as e:
        log.warning("ignoring %s: %s", path.name, e)
        return {}
    keys = [k for k in MODEL_DEFAULT_KEYS if config.get(k) is not None]
    if config.get("do_sample") is False:
        keys = [k for k in keys if k not in _SAMPLING_ONLY]
    defaults: dict[str, float | int] = {}
    for key in keys:
        try:
            defaults.update(check_model_defaults({key: config[key]}))
        except ValueError as e:
            log.warning("ignoring %s in %s: %s", key, path, e)
    return defaults
