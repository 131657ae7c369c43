"""Perplexity over a big file: read and tokenized in blocks, never the whole file at once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tracemalloc

import pytest

import engine
from engine.errors import RequestError
from engine.measure.perplexity import perplexity, perplexity_of_file, read_text_blocks


def test_the_reader_never_holds_the_whole_file(tmp_path, english_text):
    path = tmp_path / "big.txt"
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < 8 << 20:  # 8 MiB of text
            f.write(english_text)
    seen = 0
    tracemalloc.start()
    try:
        for block in read_text_blocks(path, block_bytes=256 << 10):
            seen += len(block.encode())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == path.stat().st_size
    assert peak < 3 << 20, f"{peak} bytes held while reading {seen}"


def test_blocks_give_the_whole_text_tokens_and_score(tmp_path, english_text):
    model = engine.load("smollm2-135m", backend="gguf")
    path = tmp_path / "t.txt"
    path.write_text(english_text * 3, encoding="utf-8")
    blocks = list(read_text_blocks(path, block_bytes=700))
    assert len(blocks) >= 3 and "".join(blocks) == english_text * 3
    ids = model.tokenizer.encode(english_text * 3, add_special=False)
    assert [t for b in blocks for t in model.tokenizer.encode(b, add_special=False)] == ids
    whole = perplexity(model.logits, ids, ctx=128)
    streamed = perplexity_of_file(model, path, ctx=128, block_bytes=700)
    assert (streamed.chunks, streamed.scored_tokens) == (whole.chunks, whole.scored_tokens)
    assert streamed.perplexity == pytest.approx(whole.perplexity, rel=1e-6)


def test_non_utf8_is_refused_wherever_it_is(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine text\n" * 1000 + b"\xff\xfe")
    with pytest.raises(RequestError, match="not UTF-8"):
        list(read_text_blocks(path, block_bytes=1024))


@pytest.mark.slow
def test_cli_shows_progress_from_the_start_on_a_big_file(tmp_path, english_text):
    path = tmp_path / "big.txt"
    path.write_text(english_text * 4000, encoding="utf-8")  # ~8 MB: minutes of scoring
    proc = subprocess.Popen([sys.executable, "-m", "engine", "perplexity", str(path), "--ctx", "64"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=os.environ)
    try:
        start, err = time.monotonic(), b""
        moved = re.compile(rb"\| *[1-9][\d.]*[kM]?/8\.\d+M")  # e.g. "| 294/8.28M": bytes scored so far
        while time.monotonic() - start < 120 and not moved.search(err):
            err += os.read(proc.stderr.fileno(), 4096)
        assert moved.search(err), err[-500:]
        assert proc.poll() is None  # still scoring: progress came long before the end
    finally:
        proc.kill()
        proc.wait()
