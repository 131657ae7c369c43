"""Prefill and decode speed of the native engine (float32, bfloat16) beside llama-cpp-python, in one run.

    python benchmarks/speed.py [--model smollm2-135m] [--prompt-tokens 256] [--gen-tokens 128] [--threads 2]

Prefill: tokens/s over one forward pass of the prompt. Decode: greedy tokens/s after the first
token. Each figure is the best of --repeats runs. The full side-by-side benchmark with time to
first token and memory is `python -m engine bench` (issue 4).
"""

from __future__ import annotations

import argparse
import time

import torch

import engine
from engine.registry import resolve


def native(model_name: str, dtype: str, prompt: list[int], gen: int, repeats: int) -> tuple[float, float]:
    m = engine.load(model_name, backend="native", device="cpu", dtype=dtype)
    prefill = decode = 0.0
    for _ in range(repeats):
        cache = m.new_cache(len(prompt) + 1)
        t = time.perf_counter()
        with torch.inference_mode():
            m._forward(prompt, cache, last_only=True)
        prefill = max(prefill, len(prompt) / (time.perf_counter() - t))
        events = list(m.generate(prompt, max_tokens=gen, temperature=0))
        decode = max(decode, events[-1].tokens_per_second)
    return prefill, decode


def llama_cpp(path: str, prompt: list[int], gen: int, repeats: int, threads: int) -> tuple[float, float]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=2048, n_batch=512, n_threads=threads, verbose=False)
    prefill = decode = 0.0
    for _ in range(repeats):
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        prefill = max(prefill, len(prompt) / (time.perf_counter() - t))
        t, n = None, 0
        for _token in llm.generate(prompt, temp=0.0, reset=True):
            n += 1
            if n == 1:
                t = time.perf_counter()
            if n == gen:
                break
        decode = max(decode, (n - 1) / (time.perf_counter() - t))
    return prefill, decode


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    _, path = resolve(a.model)
    tok = engine.load(a.model, backend="native", device="cpu", dtype="float32").tokenizer
    text = open(__file__.replace("benchmarks/speed.py", "tests/data/english.txt")).read()
    prompt = (tok.encode(text) * 8)[: a.prompt_tokens]
    rows = [("llama-cpp-python", *llama_cpp(str(path), prompt, a.gen_tokens, a.repeats, a.threads))]
    for dtype in ("float32", "bfloat16"):
        rows.append((f"native {dtype}", *native(a.model, dtype, prompt, a.gen_tokens, a.repeats)))
    ref_p, ref_d = rows[0][1], rows[0][2]
    print(f"{a.model}, {len(prompt)} prompt tokens, {a.gen_tokens} generated, {a.threads} threads")
    print(f"{'backend':<20}{'prefill tok/s':>15}{'x llama.cpp':>13}{'decode tok/s':>15}{'x llama.cpp':>13}")
    for name, pre, dec in rows:
        print(f"{name:<20}{pre:>15.1f}{pre / ref_p:>13.2f}{dec:>15.1f}{dec / ref_d:>13.2f}")


if __name__ == "__main__":
    main()
