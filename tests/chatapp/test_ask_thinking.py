"""`chatapp ask` on a model that thinks (a subprocess against our server, a remote models.toml
entry): reasoning hidden by default, on stderr with --show-thinking, turned off with --no-think."""

from __future__ import annotations

import os
import subprocess
import sys

from scripted import ScriptedModel
from serving import ROOT, running_server
from thinking import QWEN3_STYLE

THOUGHT = "Two and two make four."
REPLY = f"<think>\n{THOUGHT}\n</think>\n\nThe answer is 4."
CLOSED_BLOCK = "<think>\n\n</think>\n\n"


def ask(url, tmp_path, *flags):
    registry = tmp_path / "models.toml"
    registry.write_text(f'default = "far"\n[models.far]\nsource = "remote"\nbase_url = "{url}"\nmodel = "scripted"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CHATAPP_MODELS_TOML": str(registry)}
    return subprocess.run([sys.executable, "-m", "chatapp.cli", "ask", "What is 2+2?", *flags],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_ask_hides_thinking_shows_it_on_stderr_and_turns_it_off(tmp_path, default_gguf):
    model = ScriptedModel(default_gguf, [REPLY, REPLY, "Four."], template=QWEN3_STYLE)
    with running_server(model) as url:
        hidden = ask(url, tmp_path)
        shown = ask(url, tmp_path, "--show-thinking")
        off = ask(url, tmp_path, "--no-think")
    assert hidden.returncode == 0, hidden.stderr
    assert hidden.stdout == "The answer is 4.\n" and "Two and two" not in hidden.stderr
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "The answer is 4.\n"
    assert f"thinking: {THOUGHT}" in shown.stderr and "\x1b[" not in shown.stderr  # not a terminal: no colour
    assert off.returncode == 0 and off.stdout == "Four.\n"
    assert not model.prompts[0].endswith(CLOSED_BLOCK) and model.prompts[2].endswith(CLOSED_BLOCK)
