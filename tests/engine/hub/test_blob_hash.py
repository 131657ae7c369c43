"""A cached Hub file is checked against its blob's own sha256 the first time it is loaded."""

from __future__ import annotations

import hashlib
import json
import textwrap

import pytest
from hub_cache import add_to_cache, use_offline_cache
from tiny_models import write_tiny_llama

import engine
from engine.errors import ModelFormatError
from engine.hub.download import _verified_store
from engine.hub.registry import resolve

REPO, FILE, COMMIT = "test-org/Unpinned-GGUF", "tiny.gguf", "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def cached(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    use_offline_cache(monkeypatch, cache, tmp_path / "xdg-cache")
    data = write_tiny_llama(tmp_path / FILE).read_bytes()
    path = add_to_cache(cache, REPO, COMMIT, {FILE: data}) / FILE
    toml = tmp_path / "models.toml"
    toml.write_text(textwrap.dedent(f"""
        [models.unpinned]
        source = "hf"
        repo = "{REPO}"
        file = "{FILE}"
        revision = "main"
    """))  # no sha256 pin: the blob's name is the only hash there is
    monkeypatch.setenv("CHATAPP_MODELS_TOML", str(toml))
    return path, hashlib.sha256(data).hexdigest()


def test_a_flipped_byte_in_a_cached_blob_is_refused_on_load(cached):
    path, digest = cached
    blob = path.resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match=f"{FILE} is corrupt: its sha256 is .*, expected {digest} "
                                               r"\(the Hub's LFS hash\).*chatapp pull unpinned --force"):
        engine.load("unpinned", backend="gguf")


def test_the_blob_hash_is_checked_once_and_remembered(cached):
    path, digest = cached
    resolve("unpinned")
    remembered = json.loads(_verified_store().read_text())
    assert remembered[str(path.resolve())]["sha256"] == digest
    assert engine.load("unpinned", backend="gguf").name == "unpinned"


def test_the_bundled_model_is_pinned():
    spec, path = resolve("smollm2-135m")
    assert spec.sha256 == {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
