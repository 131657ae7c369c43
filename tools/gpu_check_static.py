"""Speed and agreement of the static decoder (engine/runtime/static.py) on random-weight models.

On CUDA (the lead's H200 run, under 3 minutes):
    python tools/gpu_check_static.py
compares the decode step replayed as a CUDA graph with the same step run eager, and the plain
path (`Transformer.forward` with a `KVCache`) for reference, on the Llama-3.2-1B and
SmolLM2-135M shapes in bfloat16. On CPU, `--device cpu` compares eager with `torch.compile`
(both with plain linears: inductor cannot lower the oneDNN-prepacked ones the native backend
uses on CPU; `--kinds` without compile packs them). `--tiny` runs a
tiny shape, so the script can be checked anywhere.

Prints one summary table: per shape and step kind, decode ms/step and tok/s (greedy, the next
token fed back as a device tensor, no host sync; and with one `.item()` per token), prefill of
a 512-token prompt the first and second time, the capture/compile time, and the largest logit
difference from the eager static step. Imports only torch and engine code that needs nothing
else (no gguf, platformdirs, textual).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.model.cache import KVCache  # noqa: E402
from engine.model.config import ModelArgs, RopeScaling  # noqa: E402
from engine.model.decoder import Transformer  # noqa: E402
from engine.runtime.static import StaticDecoder  # noqa: E402

SHAPES = {
    "llama-3.2-1b": dict(
        dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64, ffn_dim=8192, vocab_size=128256,
        norm_eps=1e-5, rope_base=500000.0, rope_dim=64, context_length=131072, tied_output=True,
        rope_scaling=RopeScaling(kind="llama3", factor=32.0, original_context=8192, low_freq_factor=1.0,
                                 high_freq_factor=4.0),
    ),
    "smollm2-135m": dict(
        dim=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64, ffn_dim=1536, vocab_size=49152,
        norm_eps=1e-5, rope_base=100000.0, rope_dim=64, context_length=8192, tied_output=True,
    ),
    "tiny": dict(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96, vocab_size=512,
        norm_eps=1e-5, rope_base=10000.0, rope_dim=16, context_length=1024, tied_output=True,
    ),
}
PROMPT = 512


def build(shape: str, device: torch.device, dtype: torch.dtype, pack: bool) -> Transformer:
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(ModelArgs(**SHAPES[shape]))
    # As the loaders do: weights in the run dtype, norms and RoPE frequencies in float32.
    for name, param in model.named_parameters():
        if not name.endswith("norm.weight"):
            param.data = param.data.to(dtype)
    model.eval()
    if pack:
        from engine.model.packing import can_pack, pack_linears

        if can_pack(device, dtype):
            pack_linears(model)
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def prompt_ids(vocab: int, n: int, seed: int = 1) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def measure_static(model: Transformer, kind: str, steps: int, reference: list[torch.Tensor] | None) -> dict:
    device, vocab = model.inv_freq.device, model.args.vocab_size
    dec = StaticDecoder(model, step=kind)
    row: dict = {"kind": kind}
    prompt = prompt_ids(vocab, PROMPT)
    _, row["prefill1_ms"] = timed(device, lambda: dec.prefill(prompt))
    dec.reset()
    _, row["prefill2_ms"] = timed(device, lambda: dec.prefill(prompt_ids(vocab, PROMPT, seed=2)))
    row["prefill1_ms"] *= 1e3
    row["prefill2_ms"] *= 1e3
    # Agreement: teacher-forced tokens, logits of every step against the eager static step.
    dec.reset()
    forced = prompt_ids(vocab, 33, seed=3)
    logits = [dec.prefill(forced[:1]).float()]
    t = time.perf_counter()
    logits.append(dec.decode(forced[1]).float())  # the first decode in a bucket captures / compiles
    sync(device)
    row["setup_s"] = time.perf_counter() - t
    logits += [dec.decode(token).float() for token in forced[2:]]
    if reference is not None:
        row["max_diff"] = max((a - b).abs().max().item() for a, b in zip(logits, reference))
    # Greedy decode, the token fed back on the device: no host sync per token.
    dec.reset()
    token = dec.prefill(prompt_ids(vocab, 16, seed=4)).argmax(-1)
    dec.ensure(16 + 3 + 2 * steps)  # every timed step in one bucket, captured / compiled before timing
    for _ in range(3):
        token = dec.decode(token).argmax(-1)

    def run() -> None:
        nonlocal token
        for _ in range(steps):
            token = dec.decode(token).argmax(-1)

    _, seconds = timed(device, run)
    row["ms_step"] = 1e3 * seconds / steps

    def run_synced() -> None:
        nonlocal token
        for _ in range(steps):
            token = dec.decode(token).argmax(-1).item()

    _, seconds = timed(device, run_synced)
    row["ms_step_sync"] = 1e3 * seconds / steps
    row["logits"] = logits
    return row


def measure_plain(model: Transformer, steps: int) -> dict:
    """The current path, for reference: `Transformer.forward` with a `KVCache`."""
    device, vocab = model.inv_freq.device, model.args.vocab_size
    dtype = model.tok_embeddings.weight.dtype
    row: dict = {"kind": "plain"}
    with torch.inference_mode():
        for seed, name in enumerate(("prefill1_ms", "prefill2_ms")):
            kv = KVCache(model.args, PROMPT + steps + 32, dtype=dtype, device=device)
            ids = torch.tensor([prompt_ids(vocab, PROMPT, seed)], device=device)
            _, seconds = timed(device, lambda: model(ids, kv, last_only=True))
            row[name] = 1e3 * seconds
        token = model(ids[:, :1], kv, last_only=True)[0].argmax(-1, keepdim=True)

        def run() -> None:
            nonlocal token
            for _ in range(steps):
                token = model(token, kv, last_only=True)[0].argmax(-1, keepdim=True)

        _, seconds = timed(device, run)
    row["ms_step"] = 1e3 * seconds / steps
    return row


def attention_backends(model: Transformer) -> str:
    """Which SDPA backends can run each phase of the static path alone (CUDA only)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = []
    for phase in ("prefill", "decode"):
        ok = []
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION):
            dec = StaticDecoder(model, step="eager")
            if phase == "decode":
                dec.prefill([1, 2, 3])
            try:
                with sdpa_kernel([backend]), torch.inference_mode():
                    bucket = dec._enter_bucket(dec.offset + 16)
                    if phase == "prefill":
                        dec._hidden(bucket, torch.ones(1, 16, dtype=torch.long, device=dec.device),
                                    torch.arange(16, device=dec.device))
                    else:
                        dec._decode_step(bucket)
                torch.cuda.synchronize()
                ok.append(backend.name.lower().replace("_attention", ""))
            except RuntimeError:
                pass
        out.append(f"{phase}: {', '.join(ok) or 'math only'}")
    return "; ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape only (checks the script itself)")
    parser.add_argument("--shapes", nargs="*", help=f"of {', '.join(SHAPES)}")
    parser.add_argument("--dtype", default=None, help="default: bfloat16")
    parser.add_argument("--kinds", nargs="*", help="step kinds besides eager (default: graph on CUDA, compile on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="decode steps timed (default 200 on CUDA, 30 on CPU)")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-path reference")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    shapes = ["tiny"] if args.tiny else args.shapes or (["llama-3.2-1b", "smollm2-135m"] if cuda else ["smollm2-135m"])
    dtype = getattr(torch, args.dtype or "bfloat16")
    kinds = args.kinds if args.kinds is not None else (["graph"] if cuda else ["compile"])
    steps = args.steps or (200 if cuda else 30)
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(device) if cuda else 'cpu'}, "
          f"{dtype}, {steps} decode steps, {torch.get_num_threads()} CPU threads", flush=True)
    rows = []
    for shape in shapes:
        # inductor cannot lower the oneDNN-prepacked linears: compare compiled and eager unpacked.
        model = build(shape, device, dtype, pack=not cuda and "compile" not in kinds)
        note = f"SDPA backends that run the step alone: {attention_backends(model)}" if cuda else ""
        eager = measure_static(model, "eager", steps, None)
        rows.append((shape, eager))
        for kind in (k for k in kinds if k != "eager"):
            rows.append((shape, measure_static(model, kind, steps, eager["logits"])))
        if not args.no_plain:
            rows.append((shape, measure_plain(model, min(steps, 50))))
        print(f"{shape} done{'; ' + note if note else ''}", flush=True)
        del model
        if cuda:
            torch.cuda.empty_cache()
    header = ("shape", "step", "ms/step", "tok/s", "tok/s sync", "prefill512 1st ms", "2nd ms", "setup s", "max|d| vs eager")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for shape, row in rows:
        def cell(key: str, fmt: str) -> str:
            return format(row[key], fmt) if key in row else "-"

        sync_tps = f"{1e3 / row['ms_step_sync']:.1f}" if "ms_step_sync" in row else "-"
        print(f"| {shape} | {row['kind']} | {row['ms_step']:.2f} | {1e3 / row['ms_step']:.1f} | {sync_tps} | "
              f"{cell('prefill1_ms', '.1f')} | {cell('prefill2_ms', '.1f')} | {cell('setup_s', '.2f')} | "
              f"{cell('max_diff', '.3g')} |")


if __name__ == "__main__":
    main()
