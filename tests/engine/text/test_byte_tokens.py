"""Malformed `<0x..>` byte tokens decode to the byte llama.cpp gives (C's strtol, wrapped to a byte)."""

from __future__ import annotations

import ctypes

import pytest

from engine.formats.gguf import read_gguf
from engine.text.tokenizer import load_tokenizer
from tiny_models import write_tiny_llama

llama_cpp = pytest.importorskip("llama_cpp")

ODD = ["<0x-1>", "<0xZZ>", "<0x 7>", "<0x1G>", "<0x+F>", "<0x0x>", "<0xé>", "<0x-FF>", "<0x>"]
WANT = [0xFF, 0x00, 0x07, 0x01, 0x0F, 0x00, 0x00, 0xF1, 0x00]  # "<0x-FF>": strtol("-F") = -15


def test_malformed_byte_tokens_decode_as_llama_cpp(tmp_path):
    # As many tokens as the tiny model has embedding rows (269).
    tokens = ["<unk>", "<s>", "</s>"] + ODD + [f"<0x{b:02X}>" for b in range(256)] + ["▁a"]
    types = [2, 3, 3] + [6] * (len(ODD) + 256) + [1]  # UNKNOWN, CONTROL, BYTE, NORMAL
    path = write_tiny_llama(tmp_path / "spm.gguf", metadata={
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": [0.0] * len(tokens), "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }, drop=("tokenizer.ggml.merges", "tokenizer.ggml.pre"))
    with read_gguf(path) as f:
        ours = load_tokenizer(f.metadata)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=32, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    for i, text in enumerate(ODD, start=3):
        buf = ctypes.create_string_buffer(16)
        n = llama_cpp.llama_token_to_piece(vocab, i, buf, len(buf), 0, True)
        assert ours.token_bytes(i) == buf.raw[:n] == bytes([WANT[i - 3]]), text
