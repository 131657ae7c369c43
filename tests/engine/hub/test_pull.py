"""`chatapp pull` and `chatapp models` against a Hugging Face cache built on disk, all offline.

huggingface_hub has no offline way to put files into its cache, so `hub_cache` lays one out the
way it does (blobs named by sha256 for LFS files and by git blob sha1 otherwise, relative
symlinks from snapshots/<commit>/, refs/<branch> holding the commit), and the first test shows
huggingface_hub's own functions read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hub_cache import add_to_cache, use_offline_cache
from huggingface_hub import constants, hf_hub_download, scan_cache_dir, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.numpy import save as safetensors_bytes
from tiny_models import write_tiny_llama

from chatapp.cli import main
from engine.errors import ModelFormatError, ModelNotFoundError
from engine.hub.registry import SAFETENSORS_FILES, resolve

GGUF_REPO, GGUF_FILE = "test-org/Tiny-GGUF", "tiny-f32.gguf"
ST_REPO, ST_COMMIT = "test-org/Tiny", "0123456789abcdef0123456789abcdef01234567"
GGUF_COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def checkpoint_files() -> dict[str, bytes]:
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 2, "vocab_size": 16}
    weights = {"model.embed_tokens.weight": np.arange(128, dtype=np.float32).reshape(16, 8)}
    return {
        "config.json": json.dumps(config).encode(),
        "generation_config.json": b'{"eos_token_id": 2}',
        "model.safetensors": safetensors_bytes(weights),
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}).encode(),
        "tokenizer_config.json": b'{"eos_token": "</s>"}',
    }


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline HF cache holding a GGUF repo and a safetensors repo, and a models.toml naming
    them (plus one entry that is not downloaded). huggingface_hub reads its environment once at
    import, so its constants are patched along with the variables."""
    cache = tmp_path / "hub"
    use_offline_cache(monkeypatch, cache, tmp_path / "xdg-cache")
    gguf = write_tiny_llama(tmp_path / GGUF_FILE).read_bytes()
    gguf_path = add_to_cache(cache, GGUF_REPO, GGUF_COMMIT, {GGUF_FILE: gguf}) / GGUF_FILE
    folder = add_to_cache(cache, ST_REPO, ST_COMMIT, checkpoint_files())
    toml = tmp_path / "models.toml"
    toml.write_text(textwrap.dedent(f"""
        [models.tiny-gguf]
        family = "Tiny"
        size = "322 kB"
        source = "hf"
        repo = "{GGUF_REPO}"
        file = "{GGUF_FILE}"
        revision = "main"
        sha256 = {{ "{GGUF_FILE}" = "{hashlib.sha256(gguf).hexdigest()}" }}

        [models.tiny-hf]
        family = "Tiny"
        source = "hf"
        format = "safetensors"
        repo = "{ST_REPO}"
        revision = "{ST_COMMIT}"

        [models.absent]
        source = "hf"
        repo = "test-org/Absent-GGUF"
        file = "absent.gguf"
        revision = "main"
    """))
    monkeypatch.setenv("CHATAPP_MODELS_TOML", str(toml))
    return {"cache": cache, "toml": toml, "gguf": gguf_path, "folder": folder, "gguf_sha256": hashlib.sha256(gguf).hexdigest()}


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_the_handcrafted_cache_is_what_huggingface_hub_reads(hub):
    assert hf_hub_download(GGUF_REPO, GGUF_FILE, local_files_only=True) == str(hub["gguf"])
    folder = snapshot_download(ST_REPO, revision=ST_COMMIT, allow_patterns=list(SAFETENSORS_FILES), local_files_only=True)
    assert folder == str(hub["folder"])
    info = scan_cache_dir(hub["cache"])
    assert not info.warnings
    assert {r.repo_id for r in info.repos} == {GGUF_REPO, ST_REPO}
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("test-org/Absent-GGUF", "absent.gguf", local_files_only=True)


def test_allow_patterns_fetch_the_checkpoint_and_never_pickles():
    from huggingface_hub.utils import filter_repo_objects

    repo = ["config.json", "generation_config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
            "model.safetensors.index.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "README.md",
            "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json", "consolidated.safetensors",
            "consolidated.00.pth", "original/consolidated.00.pth", "original/params.json", "training_args.pt"]
    fetched = set(filter_repo_objects(repo, allow_patterns=list(SAFETENSORS_FILES)))
    assert fetched == {"config.json", "generation_config.json", "model-00001-of-00002.safetensors",
                       "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
                       "tokenizer.model", "tokenizer_config.json"}


def test_pull_offline_finds_and_verifies_a_gguf_file_and_a_safetensors_folder(hub, capsys):
    rc, out, err = run_main(capsys, "pull", "tiny-gguf")
    assert rc == 0, err
    assert out.strip() == str(hub["gguf"])
    assert f"{GGUF_REPO} @ {GGUF_COMMIT}" in err and "GGUF magic ok" in err and "sha256 ok (pinned in models.toml)" in err

    rc, out, err = run_main(capsys, "pull", "tiny-hf")
    assert rc == 0, err
    assert out.strip() == str(hub["folder"])
    lines = {line.split()[0]: line for line in err.splitlines()[1:]}
    assert set(lines) == {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert "parses" in lines["config.json"]
    assert "header ok" in lines["model.safetensors"] and "sha256 ok (the Hub's LFS hash)" in lines["model.safetensors"]


def corrupt(path: Path) -> Path:
    """Flip one byte of the blob behind a snapshot link, keeping its size."""
    blob = path.resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    stat = blob.stat()
    os.utime(blob, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new mtime even on coarse clocks
    return blob


def test_a_corrupted_blob_fails_the_sha256_check_with_what_to_do(hub, capsys):
    blob = corrupt(hub["gguf"])
    actual = hashlib.sha256(blob.read_bytes()).hexdigest()
    rc, out, err = run_main(capsys, "pull", "tiny-gguf")
    assert rc == 1 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert GGUF_FILE in err and f"expected {hub['gguf_sha256']}" in err and f"sha256 is {actual}" in err
    assert "chatapp pull tiny-gguf --force" in err

    # No pin in models.toml: the Hub's LFS hash (the blob's name) still catches it.
    corrupt(hub["folder"] / "model.safetensors")
    rc, _, err = run_main(capsys, "pull", "tiny-hf")
    assert rc == 1 and "model.safetensors is corrupt" in err and "the Hub's LFS hash" in err and "--force" in err


def test_force_is_refused_offline(hub, capsys):
    rc, _, err = run_main(capsys, "pull", "tiny-gguf", "--force")
    assert rc == 1 and "offline" in err and "HF_HUB_OFFLINE" in err


def test_a_missing_model_offline_says_it_is_not_downloaded_and_how_to_get_it(hub, capsys):
    rc, out, err = run_main(capsys, "pull", "absent")
    assert rc == 1 and out == ""
    assert "'absent' is not downloaded" in err and "HF_HUB_OFFLINE" in err and "chatapp pull absent" in err
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache and offline mode"):
        resolve("absent")


def test_an_incomplete_folder_names_what_is_missing(hub, capsys):
    (hub["folder"] / "tokenizer.json").unlink()
    rc, _, err = run_main(capsys, "pull", "tiny-hf")
    assert rc == 1 and "incomplete" in err and "tokenizer.json or tokenizer.model" in err and "chatapp pull tiny-hf" in err
    with pytest.raises(ModelNotFoundError, match="incomplete"):
        resolve("tiny-hf")


def test_a_truncated_safetensors_file_fails_its_header_check(hub, capsys, monkeypatch):
    blob = (hub["folder"] / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:-16])
    rc, _, err = run_main(capsys, "pull", "tiny-hf")
    assert rc == 1 and "model.safetensors is corrupt" in err and "header describes" in err


def test_a_sharded_checkpoint_needs_every_shard_its_index_names(hub, tmp_path, capsys):
    files = checkpoint_files()
    del files["model.safetensors"]
    shards = {f"model-0000{i}-of-00002.safetensors": safetensors_bytes({f"w{i}": np.ones(4, np.float32)}) for i in (1, 2)}
    index = {"metadata": {}, "weight_map": {"w1": "model-00001-of-00002.safetensors", "w2": "model-00002-of-00002.safetensors"}}
    files |= shards | {"model.safetensors.index.json": json.dumps(index).encode()}
    folder = add_to_cache(hub["cache"], "test-org/Sharded", ST_COMMIT, files)
    with hub["toml"].open("a") as f:
        f.write('[models.sharded]\nsource = "hf"\nformat = "safetensors"\nrepo = "test-org/Sharded"\n')

    rc, out, err = run_main(capsys, "pull", "sharded")
    assert rc == 0 and out.strip() == str(folder), err
    assert "model-00002-of-00002.safetensors" in err and "model.safetensors.index.json" in err

    (folder / "model-00002-of-00002.safetensors").unlink()
    rc, _, err = run_main(capsys, "pull", "sharded")
    assert rc == 1 and "missing: model-00002-of-00002.safetensors" in err

    index["weight_map"]["w2"] = "../../evil.safetensors"  # the index is read before anything else
    index_file = folder / "model.safetensors.index.json"
    index_file.unlink()
    index_file.write_text(json.dumps(index))
    rc, _, err = run_main(capsys, "pull", "sharded")
    assert rc == 1 and "model.safetensors.index.json is corrupt" in err and "evil" in err


def test_load_resolves_the_folder_and_checks_pins_once_per_file_version(hub, monkeypatch):
    import engine.hub.download

    spec, path = resolve("tiny-hf")
    assert spec.format == "safetensors" and path == hub["folder"] and path.is_dir()

    hashed = []
    file_digest = engine.hub.download.hashlib.file_digest
    monkeypatch.setattr(engine.hub.download.hashlib, "file_digest", lambda f, name: hashed.append(f.name) or file_digest(f, name))
    assert resolve("tiny-gguf")[1] == hub["gguf"] and len(hashed) == 1
    assert resolve("tiny-gguf")[1] == hub["gguf"] and len(hashed) == 1  # remembered: size and mtime unchanged
    corrupt(hub["gguf"])
    with pytest.raises(ModelFormatError, match=f"{GGUF_FILE} is corrupt.*chatapp pull tiny-gguf --force"):
        resolve("tiny-gguf")
    assert len(hashed) == 2


def test_models_lists_what_is_local(hub, capsys):
    rc, out, _ = run_main(capsys, "models", "--json")
    assert rc == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["tiny-gguf"]["local"] and rows["tiny-gguf"]["path"] == str(hub["gguf"])
    assert rows["tiny-hf"]["local"] and rows["tiny-hf"]["path"] == str(hub["folder"])
    assert rows["tiny-hf"]["format"] == "safetensors" and rows["tiny-hf"]["backend"] == "native"
    assert not rows["absent"]["local"] and rows["absent"]["path"] is None
    assert rows["smollm2-135m"]["default"] and rows["smollm2-135m"]["local"]
    assert sum(row["default"] for row in rows.values()) == 1

    rc, out, _ = run_main(capsys, "models")
    table = {line[2:].split()[0]: line for line in out.splitlines()[1:]}
    assert table["smollm2-135m"].startswith("* ")
    assert " yes " in table["tiny-hf"] and table["tiny-hf"].endswith(str(hub["folder"]))
    assert " no " in table["absent"] and table["absent"].endswith("-")


def test_the_engine_commands_use_the_same_checks(hub, capsys, monkeypatch):
    """`python -m engine download` verifies as `chatapp pull` does; `models` says what is local."""
    from engine.__main__ import main as engine_main

    assert engine_main(["download", "tiny-hf"]) == 0
    assert capsys.readouterr().out.strip() == str(hub["folder"])
    assert engine_main(["models"]) == 0
    lines = {line[2:].split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "available" in lines["tiny-gguf"] and "not downloaded" in lines["absent"]
    corrupt(hub["gguf"])
    assert engine_main(["download", "tiny-gguf"]) == 1
    assert "is corrupt" in capsys.readouterr().err


def test_a_network_error_is_one_clear_line(hub, capsys, monkeypatch):
    import huggingface_hub

    import engine.hub.download

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # The connection check passes: these are the errors huggingface_hub raises after it.
    monkeypatch.setattr(engine.hub.download, "check_reachable", lambda: None)
    monkeypatch.setattr(engine.hub.download, "check_answers", lambda spec, revision: None)

    def unreachable(*args, **kwargs):  # what huggingface_hub raises when DNS or the connection fails
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub and we cannot "
                                      "find the requested files in the local cache. Please check your connection.")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    rc, _, err = run_main(capsys, "pull", "absent")
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "could not reach the Hugging Face Hub" in err and "check your connection" in err and "Traceback" not in err

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    rc, _, err = run_main(capsys, "pull", "absent")
    assert rc == 1 and "No space left on device" in err and "chatapp pull absent" in err


def test_the_console_script_pulls_offline(hub):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(["chatapp", "pull", "tiny-hf"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(hub["folder"]) and "Traceback" not in out.stderr
    out = subprocess.run(["chatapp", "pull", "absent"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1 and "not downloaded" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_pull_without_a_network_is_one_line_within_seconds(tmp_path):
    """This machine has no route to the Hub: the real `chatapp pull`, not offline mode."""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("HF_HUB_OFFLINE", None)
    started = time.monotonic()
    out = subprocess.run(["chatapp", "pull", "smollm2-360m"], capture_output=True, text=True, env=env, timeout=60)
    elapsed = time.monotonic() - started
    assert out.returncode == 1 and out.stdout == "" and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "no network" in out.stderr and "HF_HUB_OFFLINE=1" in out.stderr
    assert elapsed < 5, f"took {elapsed:.1f} s"


def test_a_hub_host_that_resolves_but_never_answers_is_cut_off(monkeypatch):
    """A server that accepts the connection and then says nothing: refused within the timeout,
    not after huggingface_hub's retries."""
    import socket

    import engine.hub.download

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        started = time.monotonic()
        with pytest.raises(ModelNotFoundError, match="no network .*HF_HUB_OFFLINE=1"):
            engine.hub.download.check_reachable(timeout=1.0)
        assert time.monotonic() - started < 2


def test_a_hub_that_answers_with_any_status_is_reachable(monkeypatch):
    import http.server

    import engine.hub.download

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.handle_request, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    try:
        engine.hub.download.check_reachable(timeout=2.0)  # no exception: the download reports the 404 itself
    finally:
        server.server_close()
