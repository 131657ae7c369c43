"""Where models come from: the registry (models.toml), the Hugging Face cache and downloads, and the
model bundled in a Python package."""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "BACKENDS": ".spec",
    "ModelSpec": ".spec",
    "Registry": ".registry",
    "load_registry": ".registry",
    "find_local": ".registry",
    "pull": ".registry",
    "resolve": ".registry",
    "local_file": ".registry",
    "file_sha256": ".download",
    "hub_offline": ".download",
    "hub_reachable": ".download",
    "check_reachable": ".download",
})
