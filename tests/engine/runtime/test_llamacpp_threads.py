"""llama.cpp's thread count: physical cores, one fewer on a busy machine, CHATAPP_THREADS, or asked."""

from __future__ import annotations

import os

import pytest

import engine
from engine.errors import RequestError
from engine.runtime import llamacpp
from engine.runtime.llamacpp import physical_cores, pick_threads
from tiny_models import write_tiny_llama


def test_physical_cores_counts_each_core_once():
    cores = physical_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))


def test_a_busy_machine_leaves_one_core_to_the_others(monkeypatch):
    monkeypatch.delenv("CHATAPP_THREADS", raising=False)
    monkeypatch.setattr(llamacpp, "physical_cores", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert pick_threads() == 4
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.0, 0.5))
    assert pick_threads() == 3
    monkeypatch.setattr(llamacpp, "physical_cores", lambda: 1)
    assert pick_threads() == 1  # never zero


def test_the_setting_wins_env_then_argument(monkeypatch):
    monkeypatch.setenv("CHATAPP_THREADS", "3")
    assert pick_threads() == 3
    assert pick_threads(2) == 2
    monkeypatch.setenv("CHATAPP_THREADS", "many")
    with pytest.raises(RequestError, match="CHATAPP_THREADS='many' is not a number of threads"):
        pick_threads()
    with pytest.raises(RequestError, match="threads must be an integer >= 1"):
        pick_threads(0)


def test_llama_cpp_gets_the_choice(tmp_path, monkeypatch):
    path = write_tiny_llama(tmp_path / "m.gguf")
    monkeypatch.delenv("CHATAPP_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0))  # another process is busy
    model = engine.load(path, backend="gguf")
    assert model.llm.n_threads == model.llm.n_threads_batch == max(1, physical_cores() - 1)
    monkeypatch.setenv("CHATAPP_THREADS", "1")
    assert engine.load(path, backend="gguf").llm.n_threads == 1
    assert engine.load(path, backend="gguf", threads=2).llm.n_threads == 2
