"""models.toml -> ModelSpec -> local files (bundled package, Hugging Face cache, or a path).

This module reads the registry and says where a model's files are; engine.hub.download does the Hugging
Face side (the cache, downloads, offline mode) and the verification of files on disk, and the
entry points here (`local_file`, `find_local`, `pull`) are thin calls into it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ModelNotFoundError, RegistryError, RequestError
from ..runtime.sampling import check_model_defaults
from . import download as hub
from .bundled import distribution_file
from .download import SAFETENSORS_FILES, SHA256_HEX, CheckedFile
from .spec import BACKENDS, ModelSpec

__all__ = [
    "BACKENDS", "BUILTIN_REGISTRY", "FORMATS", "REQUIRED", "SAFETENSORS_FILES", "SOURCES",
    "ModelSpec", "Pulled", "Registry",
    "find_local", "load_registry", "local_file", "looks_like_path", "pull", "resolve", "user_registry_path",
]



def _builtin_registry() -> Path:
    """The project's models.toml: inside this package in an installed wheel (setup.py copies it
    here at build time), at the top of the repository in a checkout."""
    packaged = Path(__file__).with_name("models.toml")
    return packaged if packaged.is_file() else Path(__file__).resolve().parents[2] / "models.toml"


BUILTIN_REGISTRY = _builtin_registry()
SOURCES = ("package", "hf", "path", "remote")
FORMATS = ("gguf", "safetensors")
REQUIRED = {"package": ("package", "file"), "hf": ("repo",), "path": ("path",), "remote": ("base_url", "model")}
# Keys that say where local files are: meaningless (and so refused) on a remote entry.
_LOCAL_ONLY = ("package", "repo", "file", "revision", "path", "sha256")
_REMOTE_ONLY = ("base_url", "model", "api_key_env")


_FIELDS = {f.name for f in fields(ModelSpec)} - {"name"}


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelSpec]
    default: str
    sources: tuple[Path, ...]

    def get(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise ModelNotFoundError(f"unknown model {name!r}: not a file, and not in models.toml (known: {known})") from None


def user_registry_path() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("chatapp")) / "models.toml"


def _parse(path: Path) -> tuple[dict[str, ModelSpec], str | None]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(f"{path}: invalid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RegistryError(f"{path}: cannot read: {e}") from None
    unknown = set(data) - {"default", "models"}
    if unknown:
        raise RegistryError(f"{path}: unknown top-level key(s) {sorted(unknown)} (allowed: default, [models.NAME])")
    default = data.get("default")
    if default is not None and not isinstance(default, str):
        raise RegistryError(f"{path}: 'default' must be a model name string")
    models_table = data.get("models", {})
    if not isinstance(models_table, dict):
        raise RegistryError(f"{path}: 'models' must be a table of [models.NAME] entries")
    models = {}
    for name, entry in models_table.items():
        models[name] = _spec(path, name, entry)
    return models, default


def _spec(path: Path, name: str, entry: Any) -> ModelSpec:
    where = f"{path}: [models.{name}]"
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: must be a table")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise RegistryError(f"{where}: unknown key(s) {sorted(unknown)} (allowed: {', '.join(sorted(_FIELDS))})")
    for key, value in entry.items():
        if key not in ("sha256", "sampling") and not isinstance(value, str):
            raise RegistryError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    source = entry.get("source")
    if source not in SOURCES:
        raise RegistryError(f"{where}: 'source' must be one of {', '.join(SOURCES)}, got {source!r}")
    missing = [k for k in REQUIRED[source] if not entry.get(k)]
    if missing:
        raise RegistryError(f"{where}: source {source!r} needs {', '.join(repr(k) for k in missing)}")
    if source == "remote":
        _check_remote(where, entry)
    else:
        stray = [k for k in _REMOTE_ONLY if k in entry]
        if stray:
            raise RegistryError(f"{where}: {', '.join(map(repr, stray))} only apply to source = 'remote'")
    fmt = entry.get("format", "gguf")
    if fmt not in FORMATS:
        raise RegistryError(f"{where}: 'format' must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if source == "hf" and fmt == "gguf" and not entry.get("file"):
        raise RegistryError(f"{where}: source 'hf' needs 'file' (a .gguf in the repo), or format = 'safetensors' for a checkpoint folder")
    if fmt == "safetensors" and source != "path" and entry.get("file"):
        raise RegistryError(f"{where}: a safetensors entry is the whole checkpoint folder; remove 'file'")
    backend = entry.get("backend", "auto")
    if backend not in BACKENDS:
        raise RegistryError(f"{where}: 'backend' must be one of {', '.join(BACKENDS)}")
    if fmt == "safetensors" and backend == "gguf":
        raise RegistryError(f"{where}: llama.cpp reads GGUF only; a safetensors checkpoint needs backend 'native' or 'auto'")
    pins = entry.get("sha256", {})
    if not isinstance(pins, dict):
        raise RegistryError(f"{where}: 'sha256' must be a table of file = \"<64 hex digits>\"")
    if fmt == "gguf" and pins:
        key = entry.get("file") if source != "path" else Path(entry["path"]).name
        if set(pins) != {key}:
            raise RegistryError(f"{where}: a one-file model pins only its own file: sha256 = {{ {key!r} = \"...\" }}")
    for file, digest in pins.items():
        if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest.lower()):
            raise RegistryError(f"{where}: sha256 of {file!r} must be 64 hex digits")
        if file.startswith(("/", "\\")) or ".." in Path(file).parts:
            raise RegistryError(f"{where}: sha256 key {file!r} must be a path inside the model")
    sampling = entry.get("sampling", {})
    if not isinstance(sampling, dict):
        raise RegistryError(f"{where}: 'sampling' must be a table such as [models.{name}.sampling] temperature = 0.2")
    try:
        sampling = check_model_defaults(sampling)
    except ValueError as e:
        raise RegistryError(f"{where}.sampling: {e}") from None
    return ModelSpec(name=name, **{**entry, "sha256": {f: d.lower() for f, d in pins.items()}, "sampling": sampling})


def _check_remote(where: str, entry: dict) -> None:
    from urllib.parse import urlsplit

    stray = [k for k in _LOCAL_ONLY + ("format", "backend") if k in entry]
    if stray:
        raise RegistryError(f"{where}: a remote model runs on its server; remove {', '.join(map(repr, stray))}")
    url = urlsplit(entry["base_url"])
    if url.scheme not in ("http", "https") or not url.hostname:
        raise RegistryError(f"{where}: 'base_url' must be an http(s) URL such as \"http://gpu-box:8000/v1\", "
                            f"got {entry['base_url']!r}")
    key_env = entry.get("api_key_env")
    if key_env is not None and not (key_env.replace("_", "A").isalnum() and not key_env[0].isdigit()):
        raise RegistryError(f"{where}: 'api_key_env' is the NAME of an environment variable (such as "
                            f"\"VLLM_API_KEY\"), never the key itself")


def load_registry(paths: list[Path] | None = None) -> Registry:
    """The built-in registry, then the user's file (entries there add to or replace ours).

    CHATAPP_MODELS_TOML names an extra file read last (for tests and scripted setups).
    """
    if paths is None:
        paths = [BUILTIN_REGISTRY, user_registry_path()]
        if os.environ.get("CHATAPP_MODELS_TOML"):
            paths.append(Path(os.environ["CHATAPP_MODELS_TOML"]))
    models: dict[str, ModelSpec] = {}
    default, default_from = None, None
    read = []
    for path in paths:
        if not path.is_file():
            continue
        entries, file_default = _parse(path)
        models.update(entries)
        if file_default:
            default, default_from = file_default, path
        read.append(path)
    if not models:
        raise RegistryError(f"no models.toml found (looked at {', '.join(map(str, paths))})")
    if default is None or default not in models:
        where = default_from or ", ".join(map(str, read))
        raise RegistryError(f"{where}: the default model {default!r} has no [models.{default}] entry")
    return Registry(models=models, default=default, sources=tuple(read))


def looks_like_path(name: str) -> bool:
    """Registry names never contain a path separator or end in .gguf; anything that does is a file."""
    return name.endswith(".gguf") or "/" in name or os.sep in name or name.startswith("~")


def resolve(name: str | os.PathLike | None, *, registry: Registry | None = None, download: bool = True,
            allow_remote: bool = False) -> tuple[ModelSpec | None, Path | None]:
    """A models.toml name or a path -> (its spec or None, a local file or folder that exists).

    A remote entry has no local files: with `allow_remote` it resolves to (spec, None); without,
    it is a RequestError (commands that read the weights themselves cannot use it)."""
    if name is not None and (isinstance(name, os.PathLike) or looks_like_path(name) or Path(name).exists()):
        path = Path(os.path.expandvars(os.path.expanduser(os.fspath(name))))
        if not path.exists():
            raise ModelNotFoundError(f"model file not found: {path}")
        return None, path
    registry = registry or load_registry()
    spec = registry.get(name or registry.default)
    if spec.is_remote:
        if allow_remote:
            return spec, None
        raise RequestError(f"model {spec.name!r} runs on a remote server ({spec.host}); this command needs "
                           "a model whose files are on this machine")
    return spec, local_file(spec, download=download)


def local_file(spec: ModelSpec, *, download: bool = True) -> Path:
    """The model's file (GGUF) or folder (safetensors), downloaded first if it is not here and
    `download` allows; checked for presence, sizes and models.toml sha256 pins."""
    _refuse_remote(spec)
    path = _local_non_hub(spec) if spec.source != "hf" else hub.cached_or_download(spec, download=download)
    hub.verify(spec, path, full=False)
    return path


def find_local(spec: ModelSpec) -> Path | None:
    """Where the model is on this machine, without touching the network or hashing anything;
    None when it is not (fully) there. A safetensors folder counts once its required files are.
    A remote model is never local (callers show `spec.host` instead)."""
    if spec.is_remote:
        return None
    if spec.source != "hf":
        try:
            return _local_non_hub(spec)
        except ModelNotFoundError:
            return None
    return hub.find_cached(spec)


@dataclass(frozen=True)
class Pulled:
    spec: ModelSpec
    path: Path  # the GGUF file or the checkpoint folder
    revision: str | None  # the commit it came from, when it came from the Hub
    files: tuple[CheckedFile, ...]


def pull(spec: ModelSpec, *, revision: str | None = None, force: bool = False, progress: hub.Progress | None = None) -> Pulled:
    """Download (Hub entries; the local cache only under HF_HUB_OFFLINE) and verify everything.

    force: download again even if cached, e.g. after a sha256 mismatch.
    progress: called with (bytes done, bytes in all) instead of drawing terminal progress bars.
    """
    _refuse_remote(spec)
    revision = revision or spec.revision
    path = _local_non_hub(spec) if spec.source != "hf" else hub.fetch(spec, revision, force=force, progress=progress)
    files = hub.verify(spec, path, full=True)
    return Pulled(spec=spec, path=path, revision=hub.snapshot_commit(path), files=tuple(files))


def _refuse_remote(spec: ModelSpec) -> None:
    if spec.is_remote:
        raise RequestError(f"model {spec.name!r} runs on its server at {spec.base_url}: there is nothing to download")


def _local_non_hub(spec: ModelSpec) -> Path:
    if spec.source == "package":
        return distribution_file(spec.package, spec.file)
    path = Path(os.path.expandvars(os.path.expanduser(spec.path)))
    if not path.exists():  # a .gguf file, a safetensors folder, or a folder written by `quant`
        raise ModelNotFoundError(f"model {spec.name!r}: file not found: {path}")
    return path
