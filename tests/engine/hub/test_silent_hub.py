"""A Hub endpoint that accepts connections and then never answers: one line within seconds."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest


@pytest.fixture
def stalling_hub():
    """A loopback "Hub" that answers `HEAD /` (so it looks reachable) and holds every other
    request open without a byte in reply."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        if conn.recv(65536).startswith(b"HEAD / "):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            conn.close()
        else:
            held.append(conn)

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.parametrize("command", [["pull", "smollm2-360m"], ["ask", "--model", "smollm2-360m", "hi"],
                                     ["ask", "--model", "qwen2.5-0.5b-hf", "hi"]])
def test_a_hub_that_never_answers_fails_fast_in_one_line(tmp_path, stalling_hub, command):
    env = {**os.environ, "HF_ENDPOINT": stalling_hub, "HF_HUB_CACHE": str(tmp_path / "hub")}
    env.pop("HF_HUB_OFFLINE", None)
    start = time.monotonic()
    out = subprocess.run(["chatapp", *command], capture_output=True, text=True, timeout=120, env=env)
    elapsed = time.monotonic() - start
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-800:]
    assert elapsed < 30, elapsed  # ~5 s here; huggingface_hub alone took minutes
    assert "did not answer" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
