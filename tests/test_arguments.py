"""Every command-line argument is checked before anything loads: one line naming the flag, exit
status 2 (argparse's), and torch never imported. Each case runs the real entry point in a
subprocess and reports whether torch was imported by the time it returned."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chatapp.cli import build_parser

# Runs MODULE.main(ARGV) and prints whether torch got imported; exits with main's status.
PROBE = """
import importlib, sys
try:
    rc = importlib.import_module(sys.argv[1]).main(sys.argv[2:])
except SystemExit as e:
    rc = e.code
print("torch imported" if "torch" in sys.modules else "torch not imported")
sys.exit(rc)
"""
TEXT = "tests/data/english.txt"


def probe(module: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, module, *argv], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("module, argv, message", [
    ("chatapp.cli", ["--ctx", "0"], "chatapp: error: --ctx must be an integer >= 1, got 0"),
    ("chatapp.cli", ["--ctx", "-1", "ask", "Hi"], "chatapp: error: --ctx must be an integer >= 1, got -1"),
    ("chatapp.cli", ["--model", "/nonexistent/model.gguf", "ask", "Hi"],
     "chatapp: error: --model: model file not found: /nonexistent/model.gguf"),
    ("chatapp.cli", ["--model", "no-such-model"], "chatapp: error: --model: unknown model 'no-such-model'"),
    ("chatapp.cli", ["ask", "Hi", "--max-tokens", "0"], "--max-tokens must be an integer >= 1"),
    ("chatapp.cli", ["ask", "Hi", "--temperature", "-1"], "--temperature must be a finite number >= 0"),
    ("chatapp.cli", ["ask", "Hi", "--temperature", "nan"], "--temperature must be a finite number"),
    ("chatapp.cli", ["ask", "Hi", "--top-p", "0"], "--top-p must be in (0, 1]"),
    ("chatapp.cli", ["ask", "Hi", "--top-k", "-1"], "--top-k must be an integer >= 0"),
    ("chatapp.cli", ["ask", "Hi", "--min-p", "1"], "--min-p must be in [0, 1)"),
    ("chatapp.cli", ["ask", "Hi", "--repeat-penalty", "0"], "--repeat-penalty must be a finite number > 0"),
    ("chatapp.cli", ["ask", "Hi", "--seed", "-1"], "--seed must be an integer >= 0"),
    ("chatapp.cli", ["ask", "Hi", "--stop", ""], "--stop must not be empty"),
    ("chatapp.cli", ["ask", "Hi", "--device", "gpu"], "--device: unknown device 'gpu': use auto, cpu"),
    ("chatapp.cli", ["--dtype", "float7"], "--dtype: unknown dtype 'float7'"),
    ("chatapp.cli", ["--allow-dir", "/nonexistent/dir"], "--allow-dir: no such folder: /nonexistent/dir"),
    ("chatapp.cli", ["ask", "Hi", "--max-tokens", "many"], "argument -n/--max-tokens: invalid int value: 'many'"),
    ("engine.__main__", ["perplexity", "--ctx", "0", TEXT], "python -m engine: error: --ctx must be an integer >= 16, got 0"),
    ("engine.__main__", ["perplexity", "--ctx", "-5", TEXT], "--ctx must be an integer >= 16, got -5"),
    ("engine.__main__", ["perplexity", "/nonexistent.txt"], "FILE: no such file: /nonexistent.txt"),
    ("engine.__main__", ["generate", "Hi", "--top-k", "-2"], "--top-k must be an integer >= 0"),
    ("engine.__main__", ["generate", "Hi", "--model", "/nonexistent.gguf"], "--model: model file not found"),
    ("engine.__main__", ["bench", "--threads", "0"], "--threads must be an integer >= 1, got 0"),
    ("engine.__main__", ["bench", "--prompt-tokens", "0"], "--prompt-tokens must be an integer >= 1"),
    ("engine.__main__", ["bench", "--gen-tokens", "-1"], "--gen-tokens must be an integer >= 1"),
    ("engine.__main__", ["bench", "--repeats", "0"], "--repeats must be an integer >= 1"),
    ("engine.__main__", ["bench", "--quantized", "/nonexistent/q"], "--quantized: no such folder: /nonexistent/q"),
    ("quant.__main__", ["/nonexistent.gguf", "--scheme", "int8", "--out", "/tmp/x"], "quant: error: MODEL: model file not found"),
    ("quant.__main__", ["smollm2-135m", "--scheme", "int8", "--out", "/tmp/x", "--ctx", "0"], "--ctx must be an integer >= 16"),
    ("quant.__main__", ["smollm2-135m", "--scheme", "int8", "--out", "/tmp/x", "--threads", "0"], "--threads must be an integer >= 1"),
])
def test_a_bad_argument_is_one_line_naming_the_flag_before_anything_loads(module, argv, message):
    out = probe(module, *argv)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert "torch not imported" in out.stdout


def test_a_global_model_flag_survives_the_subcommand():
    parser = build_parser()
    args = parser.parse_args(["--model", "/m/a.gguf", "--backend", "native", "ask", "Hi"])
    assert (args.model, args.backend, args.device) == ("/m/a.gguf", "native", "auto")
    args = parser.parse_args(["--model", "/m/a.gguf", "ask", "Hi", "--model", "/m/b.gguf"])
    assert args.model == "/m/b.gguf"  # the nearer flag wins
    args = parser.parse_args(["ask", "Hi"])
    assert args.model is None and args.context_length is None and args.temperature is None
