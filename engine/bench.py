"""`python -m engine bench`: our backends beside raw llama-cpp-python, on one prompt, in one run.

For each configuration: load time, time to first token (TTFT), prefill tokens/s (prompt tokens
over the time to the first token's logits), decode tokens/s (tokens after the first over the time
they took, greedy), and peak memory. Ratios are to raw llama-cpp-python, the reference. The native
bfloat16, GGUF and quantized configurations also run a scripted 8-turn chat through ChatSession, to
show that a late turn prefills only its new tokens.

Every configuration runs in its own subprocess (`--worker CONFIG`, which prints one JSON line),
so that its peak RSS and thread settings are its own. The parent tokenizes the prompt once and
hands the same ids, and the same context window, to every worker on stdin.

--repeats R runs R rounds, and each round starts every configuration's worker once, in table
order: a slow spell of a shared machine then lands on every configuration of a round, not on all
the runs of one. A worker makes one untimed warm-up generation before its timed one (as
llama-bench does), so a figure is not the cost of first-call set-up. The table gives each figure's
best round; the JSON also keeps every round's decode rate and, per configuration, the median over
rounds of its decode ratio to the reference in the same round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from .errors import ContextOverflowError, EngineError

# name -> (backend, dtype), in table order; raw llama-cpp-python is the reference for the ratios.
CONFIGS = {
    "native-f32": ("native", "float32"),
    "native-bf16": ("native", "bfloat16"),
    "gguf": ("gguf", None),
    "llama.cpp": ("llama.cpp", None),
}
REFERENCE = "llama.cpp"
WORKER_CONFIGS = {**CONFIGS, "quantized": ("native", None)}  # "quantized": a folder from `quant`, via --quantized
CHAT_CONFIGS = ("native-bf16", "gguf", "quantized")  # every --quantized folder too
CHAT_MAX_TOKENS = 32
CHAT_QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "How many days are in a week?",
    "What do bees make?",
    "What is the opposite of hot?",
    "Which planet is closest to the sun?",
    "What color is the sky on a clear day?",
    "How many legs does a spider have?",
)
# The JSON fields of one configuration, in the order they are printed ("gpu" only on CUDA).
ROW_KEYS = ("backend", "device", "gpu", "dtype", "load_seconds", "ttft_seconds", "prefill_tokens_per_second", "prefill_vs_ref",
            "decode_tokens_per_second", "decode_vs_ref", "decode_runs", "decode_vs_ref_median", "generated_tokens",
            "peak_rss_mib", "cuda_max_allocated_mib", "step", "chat")
WARMUP_TOKENS = 8  # an untimed generation of the same prompt before each worker's timed one
MIN_CONTEXT = 2048  # the context window every configuration gets (more if prompt + reply need it)

# Plain English, repeated to the prompt length: a raw prompt like this keeps a small model writing
# (no chat template, so no reason to emit an end token) and every configuration sees the same ids.
PROMPT_TEXT = (
    "The lighthouse keeper woke before dawn, as he had every morning for thirty years. He climbed "
    "the spiral stairs, counted the steps, and checked the great lamp at the top. The glass was "
    "clean, the oil was full, and the lens turned smoothly. Outside, the sea was calm and grey, and "
    "a thin line of light was rising above the eastern hills. After breakfast he walked down to the "
    "harbour to meet the supply boat, which came once a week with bread, vegetables, letters and "
    "newspapers from the mainland. The captain told him about a storm that had damaged the old "
    "bridge in town, and about the new school being built near the river. In the afternoon he "
    "repaired a window in the storeroom and painted the railings on the north side of the tower. "
)


# ---- the parent: validate, tokenize, run one worker per configuration, report ----


def run_bench(args: argparse.Namespace) -> int:
    configs = _parse_configs(args.configs)
    for flag, value, least in (("--prompt-tokens", args.prompt_tokens, 1), ("--gen-tokens", args.gen_tokens, 2),
                               ("--threads", args.threads, 1), ("--repeats", args.repeats, 1)):
        if value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    if args.device != "auto" and args.device not in ("cpu", "mps") and not args.device.startswith("cuda"):
        raise ValueError(f"unknown device {args.device!r}: use auto, cpu, cuda, cuda:N or mps")

    from .registry import resolve

    spec, path = resolve(args.model)  # unknown models fail here, before any worker starts
    prompt, trained = _prompt_and_context(path, args.prompt_tokens)
    if args.prompt_tokens + args.gen_tokens > trained:
        raise ContextOverflowError(
            f"{args.prompt_tokens} prompt + {args.gen_tokens} generated tokens exceed the model's context of {trained}"
        )
    context = min(max(MIN_CONTEXT, args.prompt_tokens + args.gen_tokens), trained)

    for folder in args.quantized:
        if not (folder / "quantization.json").is_file():
            raise ValueError(f"--quantized {folder}: not a folder written by `quant` (no quantization.json)")
    # The quantized rows go before the llama.cpp ones, next to the native rows they compare with.
    jobs = [(c, c, None) for c in configs if CONFIGS[c][0] == "native"]
    jobs += [(f"native {folder.name}", "quantized", str(folder)) for folder in args.quantized]
    jobs += [(c, c, None) for c in configs if CONFIGS[c][0] != "native"]
    rounds: dict[str, list[dict]] = {label: [] for label, _, _ in jobs}
    for round_ in range(1, args.repeats + 1):
        for i, (label, config, model) in enumerate(jobs, 1):
            if sys.stderr.isatty():
                print(f"bench: round {round_}/{args.repeats}, {label} ({i}/{len(jobs)})…", file=sys.stderr, end="\r", flush=True)
            rounds[label].append(_run_worker(config, args, prompt, context, model=model))
    if sys.stderr.isatty():
        print(" " * 72, file=sys.stderr, end="\r", flush=True)

    results = {label: _merge_rounds(rows) for label, rows in rounds.items()}
    ref = results.get(REFERENCE)
    for name, row in results.items():
        for key in ("prefill", "decode"):
            rate = f"{key}_tokens_per_second"
            row[f"{key}_vs_ref"] = round(row[rate] / ref[rate], 3) if ref and ref[rate] > 0 else None
        ref_runs = ref["decode_runs"] if ref else []
        ratios = [ours / theirs for ours, theirs in zip(row["decode_runs"], ref_runs) if theirs > 0]
        row["decode_vs_ref_median"] = round(statistics.median(ratios), 3) if ratios else None
        results[name] = {key: row[key] for key in ROW_KEYS if key in row}
    report = {
        "machine": machine_info(),
        "settings": {
            "model": spec.name if spec else path.name,
            "model_path": str(path),
            "prompt_tokens": len(prompt),
            "gen_tokens": args.gen_tokens,
            "threads": args.threads,
            "device": args.device,
            "repeats": args.repeats,
            "context": context,
            "chat_turns": len(CHAT_QUESTIONS),
            "chat_max_tokens": CHAT_MAX_TOKENS,
        },
        "reference": REFERENCE if ref else None,
        "configs": results,
    }
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _parse_configs(text: str | None) -> list[str]:
    if not text:
        return list(CONFIGS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown or not names:
        raise ValueError(f"unknown config(s) {', '.join(map(repr, unknown)) or '(none)'}: choose from {', '.join(CONFIGS)}")
    return [name for name in CONFIGS if name in names]  # table order, no duplicates


def _prompt_and_context(path: Path, n_tokens: int) -> tuple[list[int], int]:
    """The benchmark prompt as token ids of our tokenizer, and the model's trained context."""
    from .formats.gguf import read_gguf
    from .tokenizer import load_tokenizer

    with read_gguf(path) as gguf:
        meta = gguf.metadata
    tokenizer = load_tokenizer(meta)
    trained = meta.get(f"{meta.get('general.architecture')}.context_length")
    if not isinstance(trained, int) or trained <= 0:
        raise EngineError(f"{path.name}: GGUF metadata has no context length")
    text_ids = tokenizer.encode(PROMPT_TEXT, add_special=False)
    ids = [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []
    while len(ids) < n_tokens:
        ids += text_ids
    return ids[:n_tokens], trained


def _run_worker(config: str, args: argparse.Namespace, prompt: list[int], context: int, *, model: str | None = None) -> dict:
    """One round of one configuration: a fresh process, a warm-up, then one timed run."""
    cmd = [sys.executable, "-m", "engine", "bench", "--worker", config, "--gen-tokens", str(args.gen_tokens),
           "--threads", str(args.threads), "--device", args.device, "--repeats", "1"]
    if model or args.model:
        cmd += ["--model", str(model or args.model)]
    # The worker must import this same engine package, wherever the parent was started from.
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    job = json.dumps({"prompt": prompt, "context": context})
    out = subprocess.run(cmd, input=job, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
        raise EngineError(f"bench {config}: {lines[-1].removeprefix('python -m engine: error: ')}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "platform": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": _version("torch"),
        "llama_cpp_python": _version("llama-cpp-python"),
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def format_report(report: dict) -> str:
    m, s, rows = report["machine"], report["settings"], report["configs"]
    gpus = sorted({r["gpu"] for r in rows.values() if "gpu" in r})
    lines = [
        f"machine: {m['cpu']}{''.join(f', {gpu}' for gpu in gpus)}, {s['threads']} threads ({m['cpus']} CPUs), "
        f"{m['platform']}, Python {m['python']}, torch {m['torch']}, llama-cpp-python {m['llama_cpp_python']}",
        f"model: {s['model']}, {s['prompt_tokens']} prompt tokens, {s['gen_tokens']} generated (greedy), "
        f"best of {s['repeats']} round(s), context {s['context']}; x ref = ratio to raw llama-cpp-python",
        "",
    ]
    cuda = any(r["cuda_max_allocated_mib"] is not None for r in rows.values())
    w = max(12, *map(len, rows))
    lines.append(
        f"{'config':<{w}} {'device':<7}{'load s':>7}{'TTFT ms':>9}{'prefill tok/s':>15}{'x ref':>7}"
        f"{'decode tok/s':>14}{'x ref':>7}{'peak RSS MiB':>14}" + (f"{'CUDA MiB':>10}" if cuda else "")
    )
    for name, r in rows.items():
        cuda_mib = r["cuda_max_allocated_mib"]
        lines.append(
            f"{name:<{w}} {r['device']:<7}{r['load_seconds']:>7.2f}{r['ttft_seconds'] * 1000:>9.1f}"
            f"{r['prefill_tokens_per_second']:>15.1f}{_ratio(r['prefill_vs_ref']):>7}"
            f"{r['decode_tokens_per_second']:>14.1f}{_ratio(r['decode_vs_ref']):>7}{r['peak_rss_mib']:>14.0f}"
            + ((f"{cuda_mib:>10.0f}" if cuda_mib is not None else f"{'-':>10}") if cuda else "")
        )
    if s["repeats"] > 1 and report["reference"]:
        lines += ["", "decode tok/s in each round, and the median over rounds of the ratio to the reference in the same round:"]
        lines += [f"{name:<{w}} {' '.join(f'{rate:7.1f}' for rate in r['decode_runs'])}   median x ref {_ratio(r['decode_vs_ref_median'])}"
                  for name, r in rows.items()]
    short = [f"{name} {r['generated_tokens']}" for name, r in rows.items() if r["generated_tokens"] < s["gen_tokens"]]
    if short:
        lines.append(f"note: an end token stopped generation early ({', '.join(short)} of {s['gen_tokens']} tokens)")
    steps = {name: r["step"] for name, r in rows.items() if r.get("step")}
    if steps:
        lines += ["", "native decode step (best of 5 x 32 steps after the prompt), and its part outside the matrix products "
                      "(every linear layer a no-op):"]
        lines += [f"{name:<{w}} {st['step_ms']:6.2f} ms a token, {st['outside_matmuls_ms']:5.2f} ms outside "
                  f"{st['linears']} matrix products ({st['outside_matmuls_ms'] / st['step_ms']:.0%})" for name, st in steps.items()]
        lines += ["", "memory roofline: a step's reads (weights, norms, KV cache) against a plain 256 MB sum's bandwidth:"]
        lines += [f"{name:<{w}} {st['mb_read_per_token']:7.1f} MB a token at {st['gb_per_s']:5.1f} GB/s, stream "
                  f"{st['stream_gb_per_s']:5.1f} GB/s: roofline {st['roofline_tokens_per_second']:7.1f} tok/s, step at "
                  f"{1000 / st['step_ms'] / st['roofline_tokens_per_second']:.0%} of it" for name, st in steps.items()]
    chats = {name: r["chat"] for name, r in rows.items() if r.get("chat")}
    if chats:
        lines += ["", f"chat: {s['chat_turns']} turns through ChatSession, up to {s['chat_max_tokens']} tokens a reply "
                      f"(greedy); TTFT from the chat() call, at turn 1 and at turn {s['chat_turns']}"]
    for name, chat in chats.items():
        first, last = chat["turn1"], chat["turn8"]
        lines.append(
            f"{name:<12} turn 1 {first['ttft_seconds'] * 1000:7.1f} ms ({first['prefilled_tokens']} of {first['prompt_tokens']} "
            f"tokens prefilled)   turn 8 {last['ttft_seconds'] * 1000:7.1f} ms ({last['prefilled_tokens']} of "
            f"{last['prompt_tokens']} prefilled)   turn 8 / turn 1 = {chat['turn8_vs_turn1']:.2f}"
        )
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# ---- a worker: one configuration, timed in a process of its own ----


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

        import engine.backends.llamacpp  # noqa: F401
    else:
        import engine.backends.native  # noqa: F401

    start = time.perf_counter()
    model = engine.load(
        args.model, backend=backend, device=args.device, dtype=dtype, context_length=context, threads=args.threads
    )
    device = getattr(model, "device", torch.device("cpu"))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    load_seconds = time.perf_counter() - start

    if backend == "gguf":

        def forget() -> None:  # llama.cpp's context is a cache shared by every call: start cold
            model.llm.reset()
    else:

        def forget() -> None:  # each generate() without a cache allocates a fresh one
            pass

    _last(model.generate(prompt, max_tokens=WARMUP_TOKENS, temperature=0))  # untimed: first-call set-up
    runs = []
    for _ in range(args.repeats):
        forget()
        result = _last(model.generate(prompt, max_tokens=args.gen_tokens, temperature=0))
        if result.cached_tokens:
            raise RuntimeError(f"{result.cached_tokens} prompt tokens came from the cache: the timing is not a cold prefill")
        runs.append((result.prompt_seconds, result.prompt_tokens_per_second, result.tokens_per_second, result.completion_tokens))
    row = {
        "backend": backend,
        "device": device.type,
        "dtype": str(model.dtype).removeprefix("torch.") if hasattr(model, "dtype") else dtype,
        "load_seconds": round(load_seconds, 4),
        **_best(runs),
        "cuda_max_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        "chat": _chat(model, args.repeats, forget) if args.worker in CHAT_CONFIGS else None,
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
            _sync(model)
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

    tensors = {}

    def add(t: torch.Tensor) -> None:
        if t.is_mkldnn:  # oneDNN-packed (engine.packing): opaque, no storage to share
            tensors[id(t)] = t.numel() * t.element_size()
        else:
            tensors[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    modules = [*linears, *(m for m in model.model.modules() if type(m).__name__ == "RMSNorm")]
    for module in modules:
        for value in {id(v): v for v in [*module.parameters(recurse=False), *module.buffers(recurse=False),
                                          *vars(module).values()] if isinstance(v, torch.Tensor)}.values():
            add(value)
    if model.model.output is None and not any(m.out_features == model.args.vocab_size for m in linears):
        add(model.model.tok_embeddings.weight)
    args = model.args
    kv = 2 * args.n_layers * args.n_kv_heads * args.head_dim * position * model.dtype.itemsize
    return sum(tensors.values()) + kv


def _stream_gb_per_s(device) -> float:
    """Read bandwidth this process sees on `device`: a sum over 256 MB of bfloat16 (larger than
    any cache here), best of 5. The decode roofline is this over the bytes a step reads."""
    import torch

    data = torch.ones(128 * 2**20, dtype=torch.bfloat16, device=device)
    best = float("inf")
    for _ in range(6):
        start = time.perf_counter()
        data.sum()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    del data
    return 256 * 2**20 / best / 1e9


def _sync(model) -> None:
    if model.device.type == "cuda":
        import torch

        torch.cuda.synchronize(model.device)


def _reference(args: argparse.Namespace, prompt: list[int], context: int) -> dict:
    import llama_cpp

    from .registry import resolve

    _, path = resolve(args.model, download=False)
    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=512, n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)
    load_seconds = time.perf_counter() - start
    for _n, _token in zip(range(WARMUP_TOKENS), llm.generate(prompt, temp=0.0, reset=True)):  # untimed warm-up
        pass
    runs = []
    for _ in range(args.repeats):
        llm.reset()  # forget the last run's tokens, so the whole prompt is prefilled
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
        ttft = first - start
        runs.append((ttft, len(prompt) / ttft, (n - 1) / (end - first) if n > 1 else 0.0, n))
    return {
        "backend": "llama.cpp",
        "device": "cpu",
        "dtype": None,
        "load_seconds": round(load_seconds, 4),
        **_best(runs),
        "cuda_max_allocated_mib": None,
        "chat": None,
    }


def _merge_rounds(rows: list[dict]) -> dict:
    """One configuration's rounds -> its row: each figure's best round, every round's decode rate."""
    best = dict(rows[0])
    best.update(
        load_seconds=min(r["load_seconds"] for r in rows),
        ttft_seconds=min(r["ttft_seconds"] for r in rows),
        prefill_tokens_per_second=max(r["prefill_tokens_per_second"] for r in rows),
        decode_tokens_per_second=max(r["decode_tokens_per_second"] for r in rows),
        decode_runs=[r["decode_tokens_per_second"] for r in rows],
        generated_tokens=min(r["generated_tokens"] for r in rows),
        peak_rss_mib=max(r["peak_rss_mib"] for r in rows),
    )
    cuda = [r["cuda_max_allocated_mib"] for r in rows if r["cuda_max_allocated_mib"] is not None]
    best["cuda_max_allocated_mib"] = max(cuda) if cuda else None
    steps = [r["step"] for r in rows if r.get("step")]
    if steps:
        best["step"] = min(steps, key=lambda st: st["step_ms"])
    chats = [r["chat"] for r in rows if r.get("chat")]
    if chats:
        first = min((c["turn1"] for c in chats), key=lambda t: t["ttft_seconds"])
        last = min((c["turn8"] for c in chats), key=lambda t: t["ttft_seconds"])
        best["chat"] = {"turn1": first, "turn8": last, "turn8_vs_turn1": round(last["ttft_seconds"] / first["ttft_seconds"], 3)}
    return best


def _best(runs: list[tuple[float, float, float, int]]) -> dict:
    """Best of the repeats, figure by figure: (ttft s, prefill tok/s, decode tok/s, generated)."""
    ttft, prefill, decode, generated = zip(*runs)
    return {
        "ttft_seconds": round(min(ttft), 6),
        "prefill_tokens_per_second": round(max(prefill), 2),
        "decode_tokens_per_second": round(max(decode), 2),
        "generated_tokens": min(generated),
    }


def _chat(model, repeats: int, forget) -> dict:
    """TTFT at turn 1 and at the last turn of a scripted conversation, best of `repeats` conversations.

    TTFT here is what a user waits for: from the call to ChatSession.chat (fitting the history to
    the window, rendering the template) to the first token.
    """
    from .session import ChatSession

    best: list[dict] = []
    for _ in range(repeats):
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
        best = turns if not best else [min(a, b, key=lambda t: t["ttft_seconds"]) for a, b in zip(best, turns)]
    first, last = best[0], best[-1]
    return {"turn1": first, "turn8": last, "turn8_vs_turn1": round(last["ttft_seconds"] / first["ttft_seconds"], 3)}


def _last(events):
    *_, result = events
    return result
