"""What the CLIs print from a model reaches a real terminal (a pseudo-terminal here) inert: no
escape sequence of a reply may retitle the window or plant a link. The model is the scripted one
(tests/scripted.py: the bundled model's real tokenizer and template, a fixed reply), put in place
of `engine.load` inside the CLI's own process."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

# A reply that retitles the terminal (OSC 0 ... BEL), plants a hyperlink (OSC 8 ... ST), and
# turns text red with the one-byte C1 CSI; the newline and tab must survive.
HOSTILE = "Hi\x1b]0;pwned\x07 there\nsee \x1b]8;;http://evil.example/\x1b\\this\x1b]8;;\x1b\\\tend \x9b31mred"

DRIVER = """
import sys
import atexit, json, os
import engine
from scripted import ScriptedModel
reply, gguf = os.fsencode(sys.argv[1]).decode("utf-8"), sys.argv[2]  # (argv under LC_ALL=C: bytes)
model = ScriptedModel(gguf, [reply])
engine.load = lambda *a, **k: model
if os.environ.get("SCRIPTED_RECEIVED"):  # what the model was asked, for the test to read
    atexit.register(lambda: open(os.environ["SCRIPTED_RECEIVED"], "w", encoding="utf-8").write(json.dumps(model.received)))
sys.argv = sys.argv[3:]
if sys.argv[0] == "chatapp":
    from chatapp.cli import main
else:
    from engine.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def run_scripted(reply: str, gguf: Path, *argv: str, env: dict | None = None, tty: bool = True,
                 stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    """Run a CLI (`chatapp ...` or `engine ...`) whose model answers `reply`; its stdout and
    stderr as bytes (both from one pseudo-terminal when tty)."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), **(env or {})}
    environment = {k: v for k, v in environment.items() if v is not None}
    command = [sys.executable, "-c", DRIVER, reply, str(gguf), *argv]
    if not tty:
        out = subprocess.run(command, input=stdin, capture_output=True, env=environment, timeout=120)
        return out.returncode, out.stdout, out.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=environment)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed its side
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(timeout=120), b"".join(chunks), b""


@pytest.mark.parametrize("argv", [("chatapp", "ask", "hello"), ("engine", "generate", "hello")], ids=["ask", "generate"])
def test_escape_sequences_in_a_reply_reach_the_terminal_inert(default_gguf, argv):
    code, out, _ = run_scripted(HOSTILE, default_gguf, *argv)
    assert code == 0, out
    out = out.replace(b"\r\x1b[K", b"")  # the CLI's own "loading..." status line, cleared
    text = out.decode("utf-8")
    assert not {"\x1b", "\x07", "\x9b"} & set(text)
    # A pty turns \n into \r\n: the line break and the tab are kept, the controls shown as symbols.
    assert "Hi␛]0;pwned␇ there\r\nsee ␛]8;;http://evil.example/␛\\this␛]8;;␛\\\tend \ufffd31mred" in text


def test_an_error_that_quotes_a_hostile_name_is_inert(tmp_path):
    """Error messages quote file names and file contents: they go out inert too."""
    bad = tmp_path / "model\x1b]0;pwned\x07.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 12)
    out = subprocess.run([sys.executable, "-m", "chatapp.cli", "ask", "--model", str(bad), "hi"], capture_output=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 1, out.stderr
    err = out.stderr.decode("utf-8")
    assert "model␛]0;pwned␇.gguf" in err and "\x1b" not in err and "\x07" not in err
    assert len(err.strip().splitlines()) == 1


ASCII_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": None}
NON_ASCII = "Grüße aus Köln — 東京 ✓ naïve"


@pytest.mark.parametrize("how", ["argument", "stdin"])
def test_an_ascii_locale_streams_a_non_ascii_reply_whole(default_gguf, tmp_path, how):
    """LC_ALL=C used to stop `ask` at the first non-ASCII character ('ascii' codec can't encode),
    and to hand the model the question's UTF-8 bytes as lone surrogates."""
    received = tmp_path / "received.json"
    argv = ("chatapp", "ask", "-s", "Réponds en français", *(["-"] if how == "stdin" else ["Wie heißt du? 你好"]))
    code, out, err = run_scripted(NON_ASCII, default_gguf, *argv, tty=False, stdin="Wie heißt du? 你好".encode(),
                                  env={**ASCII_LOCALE, "SCRIPTED_RECEIVED": str(received)})
    assert code == 0, err
    assert out.decode("utf-8") == NON_ASCII + "\n"
    assert b"Traceback" not in err
    messages = json.loads(received.read_text(encoding="utf-8"))[0]
    assert [m["content"] for m in messages] == ["Réponds en français", "Wie heißt du? 你好"]


def test_an_ascii_locale_keeps_engine_generate_whole(default_gguf):
    code, out, err = run_scripted(NON_ASCII, default_gguf, "engine", "generate", "Es war einmal ein König",
                                  tty=False, env=ASCII_LOCALE)
    assert code == 0, err
    assert out.decode("utf-8") == NON_ASCII + "\n"


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory) -> Path:
    """A tiny Llama checkpoint folder with a Hugging Face tokenizer (tokenizer.json)."""
    from hf_models import HFTiny, build_hf_model, save_hf_model, write_tokenizer_files

    folder = save_hf_model(build_hf_model(HFTiny("llama", seed=3)).eval(), tmp_path_factory.mktemp("hf") / "tiny")
    return write_tokenizer_files(folder)


def test_a_non_ascii_argument_reaches_a_hugging_face_tokenizer_under_an_ascii_locale(hf_checkpoint):
    """It used to be a TypeError traceback (argv's lone surrogates reached `tokenizers`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    env.pop("PYTHONIOENCODING", None)
    for argv in (["chatapp.cli", "ask", "Grüße, 你好", "--stop", "ü"], ["engine", "generate", "Grüße, 你好", "--stop", "ü"]):
        out = subprocess.run([sys.executable, "-m", *argv, "--model", str(hf_checkpoint), "-n", "4", "-t", "0"],
                             capture_output=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stderr == b""


def test_running_out_of_memory_is_one_line_not_a_bug_report(capsys):
    from engine.cli import run_cli

    def allocate():
        raise MemoryError

    assert run_cli("chatapp", allocate) == 1
    err = capsys.readouterr().err
    assert err.startswith("chatapp: error: out of memory;") and len(err.strip().splitlines()) == 1
