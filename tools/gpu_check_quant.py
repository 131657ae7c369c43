"""Check and time the CUDA quantized linears (quant/cuda_kernel.py) on real layer shapes: one table.

    python tools/gpu_check_quant.py                 # on a CUDA GPU: Llama-3.2-1B and 3.1-8B layers (< 2 min on an H200)
    python tools/gpu_check_quant.py --device cpu --tiny   # anywhere: the conversion maths; kernel rows say "needs CUDA"

For each layer (wqkv, wo, w13, w2, head) and kind (bf16 F.linear, INT8 g32 as nibble planes, INT8
per row through `_weight_int8pack_mm` and through the planes, INT4 g32/g64/g128 through tinygemm):
- err: relative L2 error of the layer's output for 16 rows of bfloat16 input against float32
  F.linear on the dequantized weight (the bf16 row: against float32 F.linear on the bf16 weight);
  FAIL above 0.01;
- us: the median time of one decode-size product (1 row), CUDA events over 50 calls;
- x bf16: bf16 F.linear's time over this one's (above 1: faster than bf16).
Also: whether the tiled-layout probe passes, and the conversion maths on CPU (tinygemm_dequantize
of a converted weight against our dequantized weight). Exit status 1 if anything failed.

Imports only torch and quant (no textual, gguf or platformdirs), so it runs on a bare GPU machine
with PYTHONPATH at the repository root. Not collected by pytest (tests/quant/test_gpu_check_script.py
runs it with --device cpu --tiny).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from quant.cuda_kernel import (  # noqa: E402
    CUDAQuantLinear,
    int4_to_tinygemm,
    int8_to_tinygemm_planes,
    tinygemm_dequantize,
    tinygemm_works,
)
from quant.schemes import (  # noqa: E402
    dequantize_int4,
    dequantize_int8,
    quantize_int4_grouped,
    quantize_int8_grouped,
    quantize_int8_per_channel,
)

# (out, in) of each layer's linears and the head.
SHAPES = {
    "llama-3.2-1b": {"wqkv": (3072, 2048), "wo": (2048, 2048), "w13": (16384, 2048), "w2": (2048, 8192), "head": (128256, 2048)},
    "llama-3.1-8b": {"wqkv": (6144, 4096), "wo": (4096, 4096), "w13": (28672, 4096), "w2": (4096, 14336), "head": (128256, 4096)},
}
TINY = {"tiny": {"wqkv": (192, 256), "w2": (64, 512)}}
KINDS = ("bf16", "int8 g32", "int8 row", "int8 row planes", "int4 g32", "int4 g64", "int4 g128")
TOLERANCE = 0.01
CHECK_ROWS, TIMED_CALLS = 16, 50


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).norm() / ref.norm())


def build(kind: str, w: torch.Tensor):
    """-> (a callable layer, its float32 weight as our dequantization gives it, what ran), or None."""
    if kind == "bf16":
        wb = w.to(torch.bfloat16)
        return (lambda x: F.linear(x, wb)), wb.float(), "F.linear"
    scheme, grid = kind.split(" ", 1)
    if scheme == "int4":
        packed, scale, minimum = quantize_int4_grouped(w, int(grid[1:]))
        layer = CUDAQuantLinear.from_int4(packed, scale, minimum)
        ref = dequantize_int4(packed, scale, minimum)
    else:
        q, scale = quantize_int8_grouped(w, 32) if grid == "g32" else quantize_int8_per_channel(w)
        ref = dequantize_int8(q, scale)
        if grid == "row planes":  # per row, forced through the planes, to compare with _weight_int8pack_mm
            g = next(g for g in (256, 128, 64, 32) if w.shape[1] % g == 0)
            tg, sz = int8_to_tinygemm_planes(q, scale, g)
            layer = CUDAQuantLinear("int8-planes", torch.ops.aten._convert_weight_to_int4pack(tg, 8),
                                    sz.to(torch.bfloat16), g, w.shape[1], w.shape[0], None)
        else:
            layer = CUDAQuantLinear.from_int8(q, scale)
    return (None if layer is None else (layer, ref, layer.kind))


def time_us(fn, x: torch.Tensor) -> float:
    for _ in range(5):
        fn(x)
    torch.cuda.synchronize()
    times = []
    for _ in range(TIMED_CALLS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return statistics.median(times)


def check_conversion_on_cpu() -> list[str]:
    """The conversion maths, on the bfloat16 grid where it must be exact."""
    failures = []
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g) * 0.05
    packed, scale, minimum = quantize_int4_grouped(w, 64)
    tg, sz = int4_to_tinygemm(packed, scale, minimum)
    step = float(scale.max())
    if not (tinygemm_dequantize(tg, sz.to(torch.bfloat16)) - dequantize_int4(packed, scale, minimum)).abs().max() < step / 4:
        failures.append("int4 conversion")
    q, s = quantize_int8_grouped(w, 32)
    s = s.to(torch.bfloat16).float()
    tg, sz = int8_to_tinygemm_planes(q, s, 32)
    planes = tinygemm_dequantize(tg, sz)
    if not torch.equal(planes[:, :256] + planes[:, 256:], dequantize_int8(q, s)):
        failures.append("int8 planes conversion")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a smoke test of this script)")
    opts = parser.parse_args(argv)
    device = torch.device(opts.device)
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    started = time.perf_counter()
    failures = check_conversion_on_cpu()
    print(f"conversion maths (CPU): {'ok' if not failures else 'FAIL ' + ', '.join(failures)}")
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(device) if on_cuda else device}")
    if on_cuda:
        probe = tinygemm_works(device)
        print(f"tinygemm layout probe: {'ok' if probe else 'FAIL (every layer would keep dequantizing)'}")
        if not probe:
            failures.append("layout probe")
    header = f"{'shape':<14}{'layer':<6}{'out x in':>14}  {'kind':<16}{'runs as':<12}{'err':>9}{'us (M=1)':>10}{'x bf16':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    for shape, layers in (TINY if opts.tiny else SHAPES).items():
        for name, (out, inn) in layers.items():
            w = torch.randn(out, inn, device=device if on_cuda else "cpu", generator=None) * 0.02
            x = torch.randn(CHECK_ROWS, inn, device=w.device, dtype=torch.bfloat16)
            bf16_us = None
            for kind in KINDS:
                label = f"{shape:<14}{name:<6}{f'{out} x {inn}':>14}  {kind:<16}"
                if kind != "bf16" and not on_cuda:
                    print(f"{label}{'-':<12}{'skipped: needs CUDA':>27}")
                    continue
                try:
                    built = build(kind, w)
                except (RuntimeError, ValueError) as e:
                    built, why = None, f"{type(e).__name__}: {e}"[:60]
                else:
                    why = "no kernel takes it"
                if built is None:
                    print(f"{label}{'-':<12}  {why}")
                    continue
                fn, ref_w, runs = built
                err = rel_err(fn(x), F.linear(x.float(), ref_w))
                ok = err < TOLERANCE
                if not ok:
                    failures.append(f"{shape} {name} {kind}")
                us = time_us(fn, x[:1]) if on_cuda else float("nan")
                if kind == "bf16":
                    bf16_us = us
                speed = f"{bf16_us / us:8.2f}" if on_cuda and bf16_us else f"{'-':>8}"
                print(f"{label}{runs:<12}{err:>9.2e}{'' if ok else ' FAIL'}{us:>10.1f}{speed}")
                del fn, ref_w, built
            del w, x
            if on_cuda:
                torch.cuda.empty_cache()
    print(f"\n{'all checks passed' if not failures else 'FAILED: ' + '; '.join(failures)} ({time.perf_counter() - started:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
