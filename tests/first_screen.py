"""Start the `chatapp` console script in a pseudo-terminal, as a user's terminal would, and wait
until it has painted its first screen and loaded the bundled model; then quit with ctrl+q.

Used by `.ci/run` on the wheel installed into a fresh venv (`python tests/first_screen.py
VENV/bin/chatapp`) and by tests/test_packaging.py on the installed script. History and config go
to a temporary home, so a user's own files are never read or written. Exit status 0 when the app
painted, became ready and quit cleanly with status 0; 1 otherwise, with what the terminal showed.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

# CSI sequences (ESC [ ... final byte), OSC/DCS/APC strings (ESC ] ... BEL or ST), other ESC pairs.
_ESCAPES = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[\]PX^_].*?(?:\x07|\x1b\\)|\x1b[@-Z\\-_]", re.S)
PAINTED = b"Help"  # the footer's F1 key: the first screen is on the terminal
READY = b"ready"  # the status line once the bundled model has loaded


def screen_text(raw: bytes) -> bytes:
    return _ESCAPES.sub(b"", raw)


def run(command: list[str], *, timeout: float = 120.0, size: tuple[int, int] = (30, 110)) -> tuple[int | None, bytes, str]:
    """(exit status or None if it never exited, everything the terminal received, what went wrong or "")."""
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ, "TERM": "xterm-256color", "HOME": home, "COLUMNS": str(size[1]), "LINES": str(size[0]),
            "XDG_DATA_HOME": f"{home}/data", "XDG_CONFIG_HOME": f"{home}/config", "XDG_CACHE_HOME": f"{home}/cache",
            "HF_HUB_OFFLINE": "1",  # the bundled model needs no network; a first run must not wait for one
        }
        env.pop("TEXTUAL", None)
        main, child = pty.openpty()
        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
        proc = subprocess.Popen(command, stdin=child, stdout=child, stderr=child, env=env, start_new_session=True, close_fds=True)
        os.close(child)
        raw, problem, quit_sent, deadline = b"", "", False, time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([main], [], [], 0.2)
                if ready:
                    try:
                        chunk = os.read(main, 65536)
                    except OSError:  # the child closed the terminal
                        break
                    if not chunk:
                        break
                    raw += chunk
                if proc.poll() is not None and not ready:
                    break
                text = screen_text(raw)
                if not quit_sent and PAINTED in text and READY in text:
                    os.write(main, b"\x11")  # ctrl+q
                    quit_sent, deadline = True, time.monotonic() + 15
            try:  # the terminal closes a moment before the process is gone: give it the rest of the deadline
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                problem = "the app did not quit within 15 s of ctrl+q" if quit_sent else f"no first screen and ready model within {timeout:.0f} s"
                proc.kill()
                proc.wait(timeout=10)
        finally:
            os.close(main)
        text = screen_text(raw)
        if not problem and not quit_sent:
            problem = "the app exited before painting its first screen" if PAINTED not in text else "the app exited before the model was ready"
        if not problem and (b"Traceback" in text or b"Error" in text):
            problem = "the terminal shows an error"
        if not problem and proc.returncode != 0:
            problem = f"exit status {proc.returncode} after ctrl+q"
        return proc.returncode, raw, problem


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: first_screen.py PATH/TO/chatapp", file=sys.stderr)
        return 2
    script = Path(argv[0])
    started = time.monotonic()
    status, raw, problem = run([str(script)])
    took = time.monotonic() - started
    if problem:
        print(f"first screen: FAILED ({problem}; exit status {status}, {took:.1f} s). The terminal showed:", file=sys.stderr)
        print(screen_text(raw).decode("utf-8", "replace")[-4000:], file=sys.stderr)
        return 1
    print(f"first screen: {script} painted, loaded the bundled model and quit cleanly in {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
