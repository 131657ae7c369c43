"""`python -m engine inspect` in a subprocess on the bundled model: the text heatmap, the HTML
page with every token escaped, the GGUF backend's message and a bad --layer."""

from __future__ import annotations

import os
import subprocess
import sys


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "inspect", *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONIOENCODING": "utf-8"})


def test_inspect_prints_a_heatmap_and_writes_an_escaped_page(tmp_path, default_gguf):
    page = tmp_path / "out.html"
    done = run("--backend", "native", "--device", "cpu", "-n", "5", "-t", "0", "<script>The sky is",
               "--layer", "-1", "--head", "1", "--html", str(page))
    assert done.returncode == 0, done.stderr
    assert "5 tokens" in done.stdout and "attention, layer -1, head 1" in done.stdout
    heat = done.stdout.split("░▒▓█ = more):\n")[1].splitlines()[:5]
    assert len(heat) == 5 and all("│" in line and "█" in line for line in heat)
    text = page.read_text(encoding="utf-8")
    assert "&lt;script&gt;The sky is" in text and "<script>" not in text and text.count("<tr>") == 5


def test_inspect_on_gguf_says_attention_needs_the_native_engine_and_checks_layer(default_gguf):
    done = run("--backend", "gguf", "-n", "3", "-t", "0", "Hello")
    assert done.returncode == 0 and "attention: needs the native engine" in done.stdout
    bad = run("--backend", "native", "--device", "cpu", "-n", "2", "Hello", "--layer", "99")
    assert bad.returncode != 0 and "--layer must be below 30" in bad.stderr and "Traceback" not in bad.stderr
