"""The commands a user runs, as subprocesses: streamed output, and one-line errors without tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tiny_models import write_tiny_llama

pytestmark = pytest.mark.slow


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_chatapp_ask_streams_an_answer_from_the_default_model():
    out = run("chatapp", "ask", "What is the capital of France?", "-t", "0", "-n", "24", "--stats")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "generated at" in out.stderr and "Traceback" not in out.stderr


def test_engine_generate_and_perplexity(tmp_path, english_text):
    out = run(sys.executable, "-m", "engine", "generate", "--model", "smollm2-135m", "Once upon a time", "-n", "12", "-t", "0")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip()) > 10
    out = run(sys.executable, "-m", "engine", "perplexity", "--model", "smollm2-135m", "tests/data/english.txt", "--ctx", "128")
    assert out.returncode == 0, out.stderr
    ppl = float(out.stdout.split()[1])
    assert 1 < ppl < 100


@pytest.mark.parametrize(
    "args, message",
    [
        (("chatapp", "ask", "hi", "--model", "no-such-model"), "unknown model 'no-such-model'"),
        (("chatapp", "ask", "hi", "--model", "/nope/x.gguf"), "model file not found"),
        (("chatapp", "ask", "hi", "--dtype", "float7"), "unknown dtype"),
        (("chatapp", "ask", "hi", "--temperature", "-1"), "temperature"),
        ((sys.executable, "-m", "engine", "perplexity", "/nope.txt"), "no such file"),
    ],
)
def test_user_errors_print_one_line(args, message):
    out = run(*args)
    assert out.returncode == 2  # argument errors, found before anything loads
    assert "Traceback" not in out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_corrupt_model_file_is_one_line(tmp_path):
    path = write_tiny_llama(tmp_path / "m.gguf")
    path.write_bytes(path.read_bytes()[:5000])
    out = run("chatapp", "ask", "hi", "--model", str(path))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "m.gguf" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_malformed_models_toml_is_one_line(tmp_path):
    bad = tmp_path / "models.toml"
    bad.write_text("[models.x\n")
    out = run("chatapp", "ask", "hi", env={"CHATAPP_MODELS_TOML": str(bad)})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert str(bad) in out.stderr and "line 1" in out.stderr


def test_help_does_not_pay_for_torch():
    code = "import sys, chatapp.cli, engine; assert not {'torch', 'llama_cpp', 'jinja2'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
    out = run("chatapp", "ask", "--help")
    assert out.returncode == 0 and "--temperature" in out.stdout and "--system" in out.stdout


def test_ctrl_c_mid_generation_exits_cleanly():
    import signal
    import time

    proc = subprocess.Popen(
        # Greedy: the 135M model's story runs into a loop that lasts all 2000 tokens on any CPU;
        # a sampled one may end on its own before the signal where the CPU's kernels differ.
        ["chatapp", "ask", "Write a long story about a dragon.", "-n", "2000", "-t", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As a shell starts a foreground command: a runner that started these tests in the
        # background (SIGINT ignored, which children inherit) must not make Ctrl-C a no-op here.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    first = proc.stdout.read(20)  # generation has started once text streams
    assert first
    time.sleep(0.5)
    assert proc.poll() is None, "the reply ended before the signal: the test needs a longer one"
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err
    assert len(first + rest) > 20


def test_a_bug_is_reported_with_its_traceback_not_hidden_in_one_line(tmp_path, monkeypatch, capsys):
    """Only the project's typed errors are one-liners; anything else is a bug: the report says so,
    where it happened, and where the full traceback was written."""
    from engine.cli import run_cli
    from engine.errors import RequestError

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))

    def broken():
        return {}["missing"]

    assert run_cli("chatapp", broken) == 70
    err = capsys.readouterr().err
    assert "internal error" in err and "KeyError" in err and "test_cli.py" in err
    (crash,) = (tmp_path / "chatapp" / "log").glob("crash-*.txt")
    assert "Traceback" in crash.read_text() and "def broken" not in err

    def refused():
        raise RequestError("device 'cuda' was asked for, but this PyTorch build sees no CUDA GPU")

    assert run_cli("chatapp", refused) == 1
    assert capsys.readouterr().err == "chatapp: error: device 'cuda' was asked for, but this PyTorch build sees no CUDA GPU\n"
