"""models.toml -> ModelSpec -> a local file (bundled package, Hugging Face cache, or a path)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .bundled import distribution_file
from .errors import ModelNotFoundError, RegistryError

BUILTIN_REGISTRY = Path(__file__).with_name("models.toml")
SOURCES = ("package", "hf", "path")
BACKENDS = ("auto", "native", "gguf")
REQUIRED = {"package": ("package", "file"), "hf": ("repo", "file"), "path": ("path",)}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    description: str = ""
    package: str | None = None
    repo: str | None = None
    file: str | None = None
    revision: str | None = None
    path: str | None = None
    backend: str = "auto"
    format: str = "gguf"

    def hint(self) -> str:
        """How a user fetches this model by hand."""
        if self.source == "hf":
            rev = f" --revision {self.revision}" if self.revision else ""
            return f"hf download {self.repo} {self.file}{rev}   (or: python -m engine download {self.name})"
        if self.source == "package":
            return f"pip install {self.package}"
        return f"put the file at {self.path}"


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
        if not isinstance(value, str):
            raise RegistryError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    source = entry.get("source")
    if source not in SOURCES:
        raise RegistryError(f"{where}: 'source' must be one of {', '.join(SOURCES)}, got {source!r}")
    missing = [k for k in REQUIRED[source] if not entry.get(k)]
    if missing:
        raise RegistryError(f"{where}: source {source!r} needs {', '.join(repr(k) for k in missing)}")
    if entry.get("backend", "auto") not in BACKENDS:
        raise RegistryError(f"{where}: 'backend' must be one of {', '.join(BACKENDS)}")
    if entry.get("format", "gguf") != "gguf":
        raise RegistryError(f"{where}: only format = 'gguf' is supported")
    return ModelSpec(name=name, **entry)


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


def resolve(name: str | os.PathLike | None, *, registry: Registry | None = None, download: bool = True) -> tuple[ModelSpec | None, Path]:
    """A models.toml name or a path -> (its spec or None, a local file that exists)."""
    if name is not None and (isinstance(name, os.PathLike) or looks_like_path(name) or Path(name).exists()):
        path = Path(os.path.expandvars(os.path.expanduser(os.fspath(name))))
        if not path.exists():
            raise ModelNotFoundError(f"model file not found: {path}")
        return None, path
    registry = registry or load_registry()
    spec = registry.get(name or registry.default)
    return spec, local_file(spec, download=download)


def local_file(spec: ModelSpec, *, download: bool = True) -> Path:
    if spec.source == "package":
        return distribution_file(spec.package, spec.file)
    if spec.source == "path":
        path = Path(os.path.expandvars(os.path.expanduser(spec.path)))
        if not path.exists():  # a .gguf file, or a folder written by `quant`
            raise ModelNotFoundError(f"model {spec.name!r}: file not found: {path}")
        return path
    return _hub_file(spec, download=download)


def _hub_file(spec: ModelSpec, *, download: bool) -> Path:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(spec.repo, spec.file, revision=spec.revision)
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if not download or offline:
        why = "offline mode (HF_HUB_OFFLINE) is on" if offline else "it is not downloaded yet"
        raise ModelNotFoundError(f"model {spec.name!r} is not in the Hugging Face cache and {why}; fetch it with: {spec.hint()}")
    try:
        return Path(hf_hub_download(spec.repo, spec.file, revision=spec.revision))
    except Exception as e:  # network errors, 404s, auth: all mean "not available here"
        raise ModelNotFoundError(
            f"model {spec.name!r}: could not download {spec.repo}/{spec.file} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"check your connection, then: {spec.hint()}"
        ) from None
