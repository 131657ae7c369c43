"""A Hugging Face Hub cache laid out on disk the way huggingface_hub lays it out (it has no
offline way to populate one): blobs named by sha256 for LFS files and by git blob sha1
otherwise, relative symlinks from snapshots/<commit>/, refs/<branch> holding the commit.
tests/test_pull.py shows huggingface_hub's own functions read it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

LFS_SUFFIXES = (".gguf", ".safetensors")  # what the Hub's default .gitattributes stores in LFS


def blob_id(name: str, data: bytes) -> str:
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's object id


def add_to_cache(cache: Path, repo: str, commit: str, files: dict[str, bytes], ref: str = "main") -> Path:
    """models--ORG--NAME/{blobs/<id>, snapshots/<commit>/<file> -> ../../blobs/<id>, refs/<ref>}."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    for name, data in files.items():
        blob = repo_dir / "blobs" / blob_id(name, data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo_dir / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return repo_dir / "snapshots" / commit


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file in a folder (e.g. what save_pretrained wrote), by name, for `add_to_cache`."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def use_offline_cache(monkeypatch, cache: Path, user_cache: Path) -> None:
    """Point huggingface_hub at `cache`, offline, and chatapp's remembered hashes at `user_cache`.
    huggingface_hub reads its environment once, at import, so its constants are patched too."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(user_cache))
