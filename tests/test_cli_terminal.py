"""What the CLIs print from a model reaches a real terminal (a pseudo-terminal here) inert: no
escape sequence of a reply may retitle the window or plant a link. The model is the scripted one
(tests/scripted.py: the bundled model's real tokenizer and template, a fixed reply), put in place
of `engine.load` inside the CLI's own process."""

from __future__ import annotations

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
import engine
from scripted import ScriptedModel
reply, gguf = sys.argv[1], sys.argv[2]
engine.load = lambda *a, **k: ScriptedModel(gguf, [reply])
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
