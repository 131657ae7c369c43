"""One `python -m engine bench` configuration, timed in a process of its own (`--worker CONFIG`).

The parent (`engine.measure.bench`) starts one of these per configuration and round, hands it the prompt
ids and the context window on stdin, and reads one JSON line back: load time, one warmed-up timed
generation, peak memory, the scripted chat's TTFTs and, for native models, the decode step split
and its memory roofline.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from .bench import CHAT_CONFIGS, CHAT_MAX_TOKENS, CHAT_QUESTIONS, WARMUP_TOKENS, WORKER_CONFIGS


def run_worker(args: argparse.Namespace) -> int:
    backend, dtype = WORKER_CONFIGS[args.worker]
    job = json.loads(sys.stdin.read())
    prompt, context = job["prompt"], job["context"]
    if backend == "llama.cpp":
        row = _reference(args, prompt, context)
    else:
        row = _ours(args, backend, dtype, prompt, context)
    row.setdefault("peak_rss_mib", round(peak_rss_mib(), 1))
    print(json.dumps(row))
    return 0


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _ours(args: argparse.Namespace, backend: str, dtype: str | None, prompt: list[int], context: int) -> dict:
    import torch

    import engine

    torch.set_num_threads(args.threads)
    # Import the backend before the clock starts: load time is reading weights, not importing code.
    if backend == "gguf":
        import llama_cpp  # noqa: F401  (imported before the clock starts)

        import engine.runtime.llamacpp  # noqa: F401
    else:
        import engine.runtime.native  # noqa: F401

    start = time.perf_counter()
    model = engine.load(
        args.model, backend=backend, device=args.device, dtype=dtype, context_length=context, threads=args.threads
    )
    device = getattr(model, "device", torch.device("cpu"))
    _sync(device)
    load_seconds = time.perf_counter() - start

    def forget() -> None:  # llama.cpp's context and the static decoder are shared by every call: start cold
        model.clear_cache()

    _last(model.generate(prompt, max_tokens=WARMUP_TOKENS, temperature=0))  # untimed: first-call set-up
    forget()
    result = _last(model.generate(prompt, max_tokens=args.gen_tokens, temperature=0))
    if result.cached_tokens:
        raise RuntimeError(f"{result.cached_tokens} prompt tokens came from the cache: the timing is not a cold prefill")
    row = {
        "backend": backend,
        "device": device.type,
        "dtype": str(model.dtype).removeprefix("torch.") if hasattr(model, "dtype") else dtype,
        "load_seconds": round(load_seconds, 4),
        **_figures(result.prompt_seconds, result.prompt_tokens_per_second, result.tokens_per_second, result.completion_tokens),
        "cuda_max_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        "chat": _chat(model, forget) if args.worker in CHAT_CONFIGS else None,
        "grammar": _grammar(model, prompt, args.gen_tokens, result.tokens_per_second, forget)
        if args.worker in CHAT_CONFIGS else None,
    }
    if backend == "native":
        row["peak_rss_mib"] = round(peak_rss_mib(), 1)  # before the step split's 256 MB bandwidth probe
        row["step"] = _step_split(model, prompt)
    if device.type == "cuda":
        row["gpu"] = torch.cuda.get_device_name(device)
    return row


def _step_split(model, prompt: list[int], steps: int = 32) -> dict:
    """A native decode step's time, and how much of it is spent outside the matrix products.

    The same steps (one token at a time, after the prompt, best of 5 passes of `steps`) run as
    they are and then with every linear layer's forward replaced by a no-op that returns a
    preallocated output: what remains is the per-token cost of everything else (norms, RoPE,
    attention, cache writes, the Python and dispatch cost of some 2,000 small ops)."""
    import torch

    def best_step_ms() -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for token in tokens:
                model.model(token, cache, last_only=True)
            _sync(model.device)
            best = min(best, (time.perf_counter() - start) / steps)
            cache.trim(steps)
        return round(best * 1000, 3)

    linears = [m for m in model.model.modules() if hasattr(m, "in_features") and hasattr(m, "out_features")
               and not list(m.children())]
    with torch.inference_mode():
        cache = model.new_cache(len(prompt) + steps)
        model.model(torch.tensor([prompt], device=model.device), cache, last_only=True)
        tokens = [torch.tensor([[t]], device=model.device) for t in prompt[:steps]]
        step = best_step_ms()
        outputs: dict = {}

        def no_op(layer):
            def forward(x):
                key = (tuple(x.shape[:-1]), layer.out_features, x.dtype)
                if key not in outputs:
                    outputs[key] = torch.zeros(*x.shape[:-1], layer.out_features, dtype=x.dtype, device=x.device)
                return outputs[key]
            return forward

        for layer in linears:
            layer.forward = no_op(layer)
        try:
            other = best_step_ms()
        finally:
            for layer in linears:
                del layer.forward  # back to the class's forward
    read = _bytes_read_per_token(model, linears, len(prompt) + steps // 2)
    stream = _stream_gb_per_s(model.device)
    return {
        "step_ms": step,
        "outside_matmuls_ms": other,
        "linears": len(linears),
        "mb_read_per_token": round(read / 1e6, 1),
        "gb_per_s": round(read / step / 1e6, 1),
        "stream_gb_per_s": round(stream, 1),
        "roofline_tokens_per_second": round(stream * 1e9 / read, 1),
    }


def _bytes_read_per_token(model, linears: list, position: int) -> int:
    """What one decode step must read at `position`: every tensor the linear layers hold (weights,
    packed codes, scales; a tied head that is no module is its embedding table), the RMSNorm
    weights, and the keys and values of every earlier position."""
    import torch

    from ..model.decoder import RMSNorm

    sizes = {}  # storage -> bytes, so a tensor held twice (a tied table) counts once

    def add(t: torch.Tensor) -> None:
        if t.is_mkldnn:  # oneDNN-packed (engine.model.packing): opaque, no storage to share
            sizes[id(t)] = t.numel() * t.element_size()
        else:
            sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    for module in [*linears, *(m for m in model.model.modules() if isinstance(m, RMSNorm))]:
        # Parameters, buffers and plain tensor attributes (packed layouts hold their weights so).
        for value in [*module.parameters(recurse=False), *module.buffers(recurse=False), *vars(module).values()]:
            if isinstance(value, torch.Tensor):
                add(value)
    if model.model.output is None and not any(m.out_features == model.args.vocab_size for m in linears):
        add(model.model.tok_embeddings.weight)
    args = model.args
    kv = 2 * args.n_layers * args.n_kv_heads * args.head_dim * position * model.dtype.itemsize
    return sum(sizes.values()) + kv


def _stream_gb_per_s(device) -> float:
    """Read bandwidth this process sees on `device`: a sum over 256 MB of bfloat16 (larger than
    any cache here), best of 6. The decode roofline is this over the bytes a step reads."""
    import torch

    data = torch.ones(128 * 2**20, dtype=torch.bfloat16, device=device)
    best = float("inf")
    for _ in range(6):
        start = time.perf_counter()
        data.sum()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    del data
    return 256 * 2**20 / best / 1e9


def _sync(device) -> None:
    """Wait for queued GPU work, so that a clock reading covers it (nothing to wait for on CPU)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _reference(args: argparse.Namespace, prompt: list[int], context: int) -> dict:
    import llama_cpp

    from ..hub.registry import resolve

    _, path = resolve(args.model, download=False)
    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=512, n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)
    load_seconds = time.perf_counter() - start
    for _n, _token in zip(range(WARMUP_TOKENS), llm.generate(prompt, temp=0.0, reset=True)):  # untimed warm-up
        pass
    llm.reset()  # forget the warm-up's tokens, so the whole prompt is prefilled
    start = time.perf_counter()
    n = 0
    # generate() prefills the prompt with eval() and samples; then one eval() per new token.
    for _token in llm.generate(prompt, temp=0.0, reset=True):
        n += 1
        if n == 1:
            first = time.perf_counter()
        if n == args.gen_tokens:
            break
    end = time.perf_counter()
    return {
        "backend": "llama.cpp",
        "device": "cpu",
        "dtype": None,
        "load_seconds": round(load_seconds, 4),
        **_figures(first - start, len(prompt) / (first - start), (n - 1) / (end - first) if n > 1 else 0.0, n),
        "cuda_max_allocated_mib": None,
        "chat": None,
        "grammar": None,
    }


def _figures(ttft: float, prefill_rate: float, decode_rate: float, generated: int) -> dict:
    """One timed generation's row fields (the parent takes each figure's best round)."""
    return {
        "ttft_seconds": round(ttft, 6),
        "prefill_tokens_per_second": round(prefill_rate, 2),
        "decode_tokens_per_second": round(decode_rate, 2),
        "generated_tokens": generated,
    }


def _chat(model, forget) -> dict:
    """TTFT at turn 1 and at the last turn of a scripted conversation.

    TTFT here is what a user waits for: from the call to ChatSession.chat (fitting the history to
    the window, rendering the template) to the first token.
    """
    from ..runtime.session import ChatSession

    forget()
    session, messages, turns = ChatSession(model), [], []
    for question in CHAT_QUESTIONS:
        messages.append({"role": "user", "content": question})
        start = time.perf_counter()
        result = _last(session.chat(messages, max_tokens=CHAT_MAX_TOKENS, temperature=0))
        # generation_seconds runs from the first token to the end: the rest is the wait for it.
        ttft = time.perf_counter() - start - result.generation_seconds
        messages.append({"role": "assistant", "content": result.text})
        turns.append({"ttft_seconds": round(ttft, 6), "prompt_tokens": result.prompt_tokens,
                      "prefilled_tokens": result.prompt_tokens - result.cached_tokens})
    first, last = turns[0], turns[-1]
    return {"turn1": first, "turn8": last, "turn8_vs_turn1": round(last["ttft_seconds"] / first["ttft_seconds"], 3)}


def _last(events):
    *_, result = events
    return result


# A reply the grammar keeps going: one JSON string field that must be long, so a greedy model cannot
# close the object early and every timed token is drawn under the mask.
GRAMMAR_SCHEMA = {"type": "object", "properties": {"text": {"type": "string", "minLength": 4000}}, "required": ["text"]}


def _grammar(model, prompt: list[int], gen_tokens: int, free_rate: float, forget) -> dict:
    """Decode tok/s of the same prompt with every token drawn under a JSON-schema grammar
    (engine/runtime/grammar.py: the mask computed on the host, applied to the logits), against
    the unconstrained rate measured just before."""
    _, constraint = model.constrain(None, None, {"type": "json_schema", "json_schema": {"schema": GRAMMAR_SCHEMA}})
    forget()
    result = _last(model.generate(prompt, max_tokens=gen_tokens, temperature=0, constraint=constraint))
    rate = result.tokens_per_second
    return {"decode_tokens_per_second": round(rate, 2), "generated_tokens": result.completion_tokens,
            "vs_unconstrained": round(rate / free_rate, 3) if free_rate else None}
