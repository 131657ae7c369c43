"""Servers on free loopback ports for the serve and remote-model tests: ours (in a thread, or as
`chatapp serve` in a subprocess that a test may kill) and llama-cpp-python's own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(app):
    """Any ASGI app under uvicorn on a thread; yields its base URL ending in /v1."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def running_server(model, **options):
    """Our server (chatapp.serve) on `model`."""
    from chatapp.serve.app import build_app

    with running_app(build_app(model, **options)) as url:
        yield url


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                raise AssertionError(f"the server at {url} did not come up:\n{out[-2000:]}")
            time.sleep(0.2)


@contextmanager
def subprocess_server(argv: list[str], health: str, port: int):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{port}{health}", proc)
        yield proc, f"http://127.0.0.1:{port}/v1"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def chatapp_serve(*extra: str):
    port = free_port()
    argv = [sys.executable, "-m", "chatapp.cli", "serve", "--backend", "gguf", "--port", str(port), *extra]
    return subprocess_server(argv, "/health", port)


def llama_cpp_server(gguf: Path, alias: str):
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "False"]
    return subprocess_server(argv, "/v1/models", port)
