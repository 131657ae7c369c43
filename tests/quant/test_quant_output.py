"""`quant --out`: what --force may replace, and what a kill, a full disk or a bad path leaves.

Kills are real (SIGKILL/SIGTERM of a `quant` subprocess at a chosen point: the subprocess wraps
a call of its own to stop there); a full disk is a real write past RLIMIT_FSIZE, or an injected
ENOSPC."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import TinyConfig, write_tiny_llama

from quant.__main__ import main as quant_main
from quant.checkpoint import QUANTIZATION

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("src") / "tiny.gguf", TinyConfig(seed=3, ffn_dim=128))


def run_quant(*argv) -> int:
    return quant_main([str(a) for a in argv])


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def scheme_of(folder: Path) -> str:
    return json.loads((folder / QUANTIZATION).read_text())["scheme"]


# Runs quant in a subprocess that stops itself at STOP_AT: "write" (the weights are written,
# the folder is not complete), "swap" (the old folder is moved aside, the new one not yet in
# place). STOP_WITH: "kill" (SIGKILL) or "wait" (sleep, for the test to send a signal).
DRIVER = """
import os, signal, sys, time
import safetensors.torch

def stop():
    if os.environ["STOP_WITH"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    open(os.environ["STOP_READY"], "w").close()
    time.sleep(60)

if os.environ["STOP_AT"] == "write":
    real_save = safetensors.torch.save_file
    def save_file(*args, **kwargs):
        real_save(*args, **kwargs)
        stop()
    safetensors.torch.save_file = save_file
else:
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        if ".old-" in os.path.basename(dst):
            stop()
    os.replace = replace
from quant.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def quant_stopped(tmp_path: Path, stop_at: str, stop_with: str, *argv) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "STOP_AT": stop_at, "STOP_WITH": stop_with, "STOP_READY": str(tmp_path / "ready")}
    return subprocess.Popen([sys.executable, "-c", DRIVER, *map(str, argv)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# --- item 7: --force replaces only quant's own folders --------------------------------------

def test_force_never_replaces_the_folder_that_holds_the_source(tiny_gguf, tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    source = Path(shutil.copy(tiny_gguf, models / "tiny.gguf"))
    (models / "notes.txt").write_text("mine")
    assert run_quant(source, "--scheme", "int8", "--out", models, "--force") == 1
    err = capsys.readouterr().err
    assert "holds the source model" in err and "never replaced" in err
    assert sorted(p.name for p in models.iterdir()) == ["notes.txt", "tiny.gguf"]
    assert source.read_bytes() == tiny_gguf.read_bytes()


def test_force_never_replaces_a_quant_folder_that_holds_the_source(tiny_gguf, tmp_path, capsys):
    """A quant folder's own GGUF export quantized again into the same folder: refused."""
    out = tmp_path / "q"
    assert run_quant(tiny_gguf, "--scheme", "int8", "--format", "gguf", "--out", out) == 0
    before = sorted(p.name for p in out.iterdir())
    assert run_quant(out / "model-Q8_0.gguf", "--scheme", "int4", "--out", out, "--force") == 1
    assert "holds the source model" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before and scheme_of(out) == "int8"


def test_force_refuses_a_quant_folder_with_files_of_the_users(tiny_gguf, tmp_path, capsys):
    out = tmp_path / "q"
    assert run_quant(tiny_gguf, "--scheme", "int8", "--out", out) == 0
    (out / "results.md").write_text("my notes")
    assert run_quant(tiny_gguf, "--scheme", "int4", "--out", out, "--force") == 1
    assert "holds files quant did not write (results.md)" in capsys.readouterr().err
    assert (out / "results.md").read_text() == "my notes" and scheme_of(out) == "int8"


# --- item 9: bad paths and full disks, before and during the work ---------------------------

def test_out_dot_is_refused_before_any_work(tiny_gguf, tmp_path, monkeypatch, capsys):
    """It used to fail only after quantizing (a folder named '' cannot be renamed into place)."""
    import quant.__main__

    def must_not_run(*args, **kwargs):
        raise AssertionError("read the source despite the bad --out")

    monkeypatch.setattr(quant.__main__, "open_source", must_not_run)
    monkeypatch.chdir(tmp_path)
    assert run_quant(tiny_gguf, "--scheme", "int8", "--out", ".", "--force") == 1
    assert "current folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_too_little_free_space_is_refused_before_quantizing(tiny_gguf, tmp_path, monkeypatch, capsys):
    import quant.linear

    def must_not_run(*args, **kwargs):
        raise AssertionError("quantized despite the full disk")

    monkeypatch.setattr(quant.linear, "quantize_model", must_not_run)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    assert run_quant(tiny_gguf, "--scheme", "int8", "--out", tmp_path / "q") == 1
    err = capsys.readouterr().err
    assert "not enough free space" in err and "MB are free" in err and len(err.strip().splitlines()) <= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing(tiny_gguf, tmp_path, monkeypatch, capsys):
    import quant.checkpoint

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(quant.checkpoint, "_write_json", full)
    assert run_quant(tiny_gguf, "--scheme", "int8", "--out", tmp_path / "q") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("quant: error: could not write") and "No space left on device" in err
    assert list(tmp_path.iterdir()) == []


def test_a_real_write_failure_in_safetensors_is_one_line(tiny_gguf, tmp_path):
    """A file size limit makes the safetensors writer itself fail, as a full disk does: it raised
    a SafetensorError traceback."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = subprocess.run([sys.executable, "-m", "quant", str(tiny_gguf), "--scheme", "int8", "--out", str(tmp_path / "q")],
                         capture_output=True, text=True, preexec_fn=limit, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("quant: error: could not write") and "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []


# --- item 9: kills -----------------------------------------------------------------------

def test_a_sigkill_mid_write_leaves_a_temporary_that_the_next_run_removes(tiny_gguf, tmp_path, capsys):
    out = tmp_path / "q"
    proc = quant_stopped(tmp_path, "write", "kill", tiny_gguf, "--scheme", "int8", "--out", out)
    assert proc.wait(timeout=300) == -signal.SIGKILL
    assert [name.startswith(".q.tmp-") for name in hidden(tmp_path)] == [True]
    assert run_quant(tiny_gguf, "--scheme", "int8", "--out", out) == 0
    assert "removed 1 temporary file(s) of interrupted runs" in capsys.readouterr().err
    assert hidden(tmp_path) == [] and scheme_of(out) == "int8"


def test_a_sigterm_mid_write_cleans_up_on_the_way_out(tiny_gguf, tmp_path):
    out = tmp_path / "q"
    proc = quant_stopped(tmp_path, "write", "wait", tiny_gguf, "--scheme", "int8", "--out", out)
    deadline = time.monotonic() + 300
    while not (tmp_path / "ready").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    assert [name.startswith(".q.tmp-") for name in hidden(tmp_path)] == [True]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert "quant: interrupted" in proc.stderr.read().decode()
    assert hidden(tmp_path) == [] and not out.exists()


def test_a_kill_between_the_renames_is_recovered_by_the_next_run(tiny_gguf, tmp_path, capsys):
    """The old folder was moved aside, the new one not yet in place: no output at all. The next
    run puts the completed new folder in place (and would put the old one back otherwise)."""
    out = tmp_path / "q"
    assert run_quant(tiny_gguf, "--scheme", "int8", "--out", out) == 0
    proc = quant_stopped(tmp_path, "swap", "kill", tiny_gguf, "--scheme", "int4", "--out", out, "--force")
    assert proc.wait(timeout=300) == -signal.SIGKILL
    assert not out.exists()
    assert run_quant(tiny_gguf, "--scheme", "int8", "--out", out) == 1  # no --force: it only recovers
    err = capsys.readouterr().err
    assert "finished the replacement" in err and "already exists" in err
    assert scheme_of(out) == "int4" and hidden(tmp_path) == []
