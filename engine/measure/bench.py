"""`python -m engine bench`: our backends beside raw llama-cpp-python, on one prompt, in one run.

For each configuration: load time, time to first token (TTFT), prefill tokens/s (prompt tokens
over the time to the first token's logits), decode tokens/s (tokens after the first over the time
they took, greedy), and peak memory. Ratios are to raw llama-cpp-python, the reference. The native
bfloat16, GGUF and quantized configurations also run a scripted 8-turn chat through ChatSession, to
show that a late turn prefills only its new tokens.

Every configuration runs in its own subprocess (`--worker CONFIG`: `engine.measure.bench_worker`, which
prints one JSON line), so that its peak RSS and thread settings are its own. The parent tokenizes the prompt once and
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
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from ..argcheck import UsageError
from ..errors import ContextOverflowError, EngineError, RequestError

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
            "peak_rss_mib", "cuda_max_allocated_mib", "step", "chat", "grammar")
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
    check_settings(args)
    if getattr(args, "scheme", None):  # `--shape` runs go to engine.measure.bench_shape instead
        raise UsageError("--scheme applies to --shape models; for a quantized folder use --quantized DIR")
    configs = _parse_configs(args.configs)
    from ..hub.registry import resolve

    spec, path = resolve(args.model)  # unknown models fail here, before any worker starts
    prompt, trained = _prompt_and_context(path, args.prompt_tokens)
    if args.prompt_tokens + args.gen_tokens > trained:
        raise ContextOverflowError(
            f"{args.prompt_tokens} prompt + {args.gen_tokens} generated tokens exceed the model's context of {trained}"
        )
    context = min(max(MIN_CONTEXT, args.prompt_tokens + args.gen_tokens), trained)

    for folder in args.quantized:
        if not (folder / "quantization.json").is_file():
            raise RequestError(f"--quantized {folder}: not a folder written by `quant` (no quantization.json)")
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


def check_settings(args: argparse.Namespace) -> None:
    """The counts and the device, checked before anything loads (also for `--shape` runs)."""
    for flag, value, least in (("--prompt-tokens", args.prompt_tokens, 1), ("--gen-tokens", args.gen_tokens, 2),
                               ("--threads", args.threads, 1), ("--repeats", args.repeats, 1)):
        if value < least:
            raise UsageError(f"{flag} must be at least {least}, got {value}")
    if args.device != "auto" and args.device not in ("cpu", "mps") and not args.device.startswith("cuda"):
        raise UsageError(f"--device: unknown device {args.device!r}: use auto, cpu, cuda, cuda:N or mps")


def _parse_configs(text: str | None) -> list[str]:
    if not text:
        return list(CONFIGS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown or not names:
        raise UsageError(f"--configs: unknown config(s) {', '.join(map(repr, unknown)) or '(none)'}: choose from {', '.join(CONFIGS)}")
    return [name for name in CONFIGS if name in names]  # table order, no duplicates


def _prompt_and_context(path: Path, n_tokens: int) -> tuple[list[int], int]:
    """The benchmark prompt as token ids of our tokenizer, and the model's trained context."""
    from ..formats.gguf import read_gguf
    from ..text.tokenizer import load_tokenizer

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
           "--threads", str(args.threads), "--device", args.device]
    if model or args.model:
        cmd += ["--model", str(model or args.model)]
    if config == "shape":
        cmd += ["--shape", args.shape, "--prompt-tokens", str(args.prompt_tokens), "--group-size", str(args.group_size)]
        cmd += ["--scheme", args.scheme] if args.scheme else []
        cmd += ["--decode", args.decode]
    # The worker must import this same engine package, wherever the parent was started from.
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds the engine package
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
    grammars = {name: r["grammar"] for name, r in rows.items() if r.get("grammar")}
    if grammars:
        lines += ["", "decode with every token under a JSON-schema grammar (xgrammar mask; response_format json_schema), "
                      "against the same worker's unconstrained decode:"]
    for name, g in grammars.items():
        runs = ", ".join(f"{v:.2f}" for v in g["vs_unconstrained_runs"] if v is not None)
        lines.append(f"{name:<12} {g['decode_tokens_per_second']:7.1f} tok/s ({g['generated_tokens']} tokens), "
                     f"x unconstrained per round: {runs}")
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
    grammars = [r["grammar"] for r in rows if r.get("grammar")]
    if grammars:
        best["grammar"] = max(grammars, key=lambda g: g["decode_tokens_per_second"])
        best["grammar"]["vs_unconstrained_runs"] = [g["vs_unconstrained"] for g in grammars]
    chats = [r["chat"] for r in rows if r.get("chat")]
    if chats:
        first = min((c["turn1"] for c in chats), key=lambda t: t["ttft_seconds"])
        last = min((c["turn8"] for c in chats), key=lambda t: t["ttft_seconds"])
        best["chat"] = {"turn1": first, "turn8": last, "turn8_vs_turn1": round(last["ttft_seconds"] / first["ttft_seconds"], 3)}
    return best
