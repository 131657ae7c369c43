"""llama-cpp-python never compiles a file's chat templates: our sandboxed renderer is the only one."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

import engine
from engine.errors import TemplateError
from tiny_models import write_tiny_llama

BOMB = "{{ 'A' * 10**9 }}"  # constant-folded by any Jinja compile: seconds and gigabytes
BROKEN = "{% if %}"  # a TemplateSyntaxError wherever it is compiled


@pytest.fixture
def hostile_gguf(tmp_path):
    return write_tiny_llama(tmp_path / "t.gguf", metadata={
        "tokenizer.chat_template": BOMB,
        "tokenizer.chat_template.tool_use": BROKEN,
    })


def test_load_leaves_templates_to_our_sandbox(hostile_gguf):
    start = time.monotonic()
    model = engine.load(hostile_gguf, backend="gguf")
    assert time.monotonic() - start < 5
    assert not any(k.startswith("tokenizer.chat_template") for k in model.llm.metadata)
    assert not any(k.startswith("chat_template") for k in model.llm._chat_handlers)
    with pytest.raises(TemplateError, match="tokenizer.chat_template"):
        model.render_chat([{"role": "user", "content": "hi"}])
    # Plain completion (no template) still runs on llama.cpp.
    *_, result = model.generate("the", max_tokens=3, temperature=0)
    assert result.completion_tokens == 3


def test_chatapp_ask_refuses_the_bomb_in_one_line(hostile_gguf):
    start = time.monotonic()
    out = subprocess.run(["chatapp", "ask", "--model", str(hostile_gguf), "hi"], capture_output=True, text=True,
                         timeout=120, env=os.environ)
    assert time.monotonic() - start < 30
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-800:]
    assert "chat template" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
