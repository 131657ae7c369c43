"""The static-shape decoder (engine/runtime/static.py) against the plain path: `Transformer.forward`
with a `KVCache`, on tiny random models, float32 logits to 1e-5, step by step."""

from __future__ import annotations

import pytest
import torch

from engine.errors import ContextOverflowError
from engine.model.cache import KVCache
from engine.model.config import ModelArgs, RopeScaling
from engine.model.decoder import Transformer
from engine.runtime.static import PREFILL_LENGTHS, StaticDecoder, bucket_capacity, supports

ATOL = 1e-5
VOCAB = 300


def tiny_model(*, seed: int = 0, window: int | None = None, full_layers: tuple[int, ...] = (), n_layers: int = 2,
               rope_scaling: RopeScaling | None = None, dtype: torch.dtype = torch.float32,
               device: str = "cpu") -> Transformer:
    """A tiny GQA decoder with weights large enough that attention patterns matter."""
    args = ModelArgs(
        dim=64, n_layers=n_layers, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96, vocab_size=VOCAB,
        norm_eps=1e-5, rope_base=10000.0, rope_dim=16, context_length=256, tied_output=False,
        rope_scaling=rope_scaling, sliding_window=window, full_attention_layers=full_layers,
    )
    torch.manual_seed(seed)
    model = Transformer(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "wqkv" in name:
                p.copy_(0.3 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    model.to(device)
    for name, p in model.named_parameters():  # as the loaders: norms and RoPE frequencies stay float32
        if not name.endswith("norm.weight"):
            p.data = p.data.to(dtype)
    return model.eval()


class Plain:
    """The reference: the current path, a `KVCache` driven as the native backend drives it."""

    def __init__(self, model: Transformer) -> None:
        self.model = model
        self.kv = KVCache(model.args, model.args.context_length, dtype=model.tok_embeddings.weight.dtype,
                          device=model.inv_freq.device)

    @torch.inference_mode()
    def feed(self, ids: list[int]) -> torch.Tensor:
        tokens = torch.tensor([ids], device=self.model.inv_freq.device)
        return self.model(tokens, self.kv, last_only=True)[0]  # (1, vocab)


def tokens(n: int, seed: int) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def run_both(plain: Plain, static: StaticDecoder, prompt: list[int], steps: list[int]) -> float:
    """Prefill `prompt` then decode `steps` one at a time on both paths; the largest logit difference."""
    worst = (plain.feed(prompt) - static.prefill(prompt)).abs().max().item()
    for token in steps:
        worst = max(worst, (plain.feed([token]) - static.decode(token)).abs().max().item())
    assert plain.kv.offset == static.offset
    return worst


@pytest.mark.parametrize("window, full_layers", [(None, ()), (24, ()), (24, (1,))],
                         ids=["full", "window", "window-and-full-layer"])
def test_decode_equals_plain_path_across_buckets(window, full_layers):
    model = tiny_model(window=window, full_layers=full_layers)
    # The CUDA configuration (padded prefill, every bucket kept), run eagerly here.
    plain, static = Plain(model), StaticDecoder(model, min_bucket=16, prefill_lengths=PREFILL_LENGTHS, keep_buckets=True)
    assert static.step == "eager"
    # 11 prompt tokens (padded to 16) and 110 decode steps: buckets 16, 32, 64 and 128.
    assert run_both(plain, static, tokens(11, 1), tokens(110, 2)) < ATOL
    assert static.offset == 121 and static.capacity == 128
    assert list(static.buckets()) == [16, 32, 64, 128]


@pytest.mark.parametrize("window", [None, 24])
def test_trim_and_prefix_reuse_equal_plain_path(window):
    model = tiny_model(window=window, seed=3)
    plain, static = Plain(model), StaticDecoder(model, min_bucket=16, prefill_lengths=PREFILL_LENGTHS)
    assert run_both(plain, static, tokens(40, 4), tokens(60, 5)) < ATOL  # 100 positions, bucket 128
    # Regenerate: drop the last 25 generated tokens and decode others.
    assert plain.kv.trim(25) == static.trim(25) == 25
    assert run_both(plain, static, tokens(3, 6), tokens(30, 7)) < ATOL
    # A new turn sharing the first 30 positions: back to 30, a 45-token prompt (padded to 64).
    plain.kv.trim(plain.kv.offset - 30)
    static.trim(static.offset - 30)
    assert static.offset == 30
    assert run_both(plain, static, tokens(45, 8), tokens(20, 9)) < ATOL
    assert static.offset == 95


def test_reset_starts_in_the_smallest_bucket_and_reuses_storage():
    model = tiny_model(seed=5)
    static = StaticDecoder(model, min_bucket=16, prefill_lengths=PREFILL_LENGTHS, keep_buckets=True)
    run_both(Plain(model), static, tokens(20, 1), tokens(20, 2))
    assert static.capacity == 64
    static.reset()
    assert static.offset == 0 and static.capacity == 0
    assert run_both(Plain(model), static, tokens(5, 3), tokens(30, 4)) < ATOL
    assert list(static.buckets()) == [16, 32, 64]  # no new storage for the second conversation


def test_eager_step_frees_outgrown_buckets():
    model = tiny_model(seed=5)
    static = StaticDecoder(model, min_bucket=16)  # eager on a CPU: nothing to keep per bucket
    assert static.keep_buckets is False
    assert run_both(Plain(model), static, tokens(20, 1), tokens(20, 2)) < ATOL
    assert list(static.buckets()) == [64]  # 16 and 32 were freed as the reply outgrew them
    static.reset()
    assert run_both(Plain(model), static, tokens(5, 3), tokens(3, 4)) < ATOL
    assert list(static.buckets()) == [16]


def test_long_prompt_in_padded_chunks_up_to_the_context_end():
    model = tiny_model(seed=6, window=40)
    plain, static = Plain(model), StaticDecoder(model, min_bucket=16, prefill_lengths=(8, 32))
    # 200 tokens: six full 32-token chunks, the rest padded to 8.
    assert run_both(plain, static, tokens(200, 1), tokens(45, 2)) < ATOL
    # 245 filled of 256: a 9-token chunk cannot be padded to 32 there, so it runs at its length.
    assert run_both(plain, static, tokens(9, 3), tokens(2, 4)) < ATOL
    assert static.offset == 256 and static.capacity == 256
    with pytest.raises(ContextOverflowError):
        static.decode(1)
    with pytest.raises(ContextOverflowError):
        static.prefill([1])


def test_token_as_device_tensor_and_rope_scaling():
    model = tiny_model(seed=7, rope_scaling=RopeScaling(kind="yarn", factor=4.0, original_context=64,
                                                        attention_factor=1.2))
    plain, static = Plain(model), StaticDecoder(model, min_bucket=16, prefill_lengths=PREFILL_LENGTHS)
    worst = (plain.feed(tokens(12, 1)) - static.prefill(tokens(12, 1))).abs().max().item()
    for token in tokens(80, 2):
        worst = max(worst, (plain.feed([token]) - static.decode(torch.tensor([token]))).abs().max().item())
    assert worst < ATOL


def test_bucket_sizes_and_refusals():
    assert [bucket_capacity(n, 3000, 256) for n in (1, 256, 257, 1500, 2049, 3000)] == [256, 256, 512, 2048, 3000, 3000]
    with pytest.raises(ContextOverflowError):
        bucket_capacity(3001, 3000, 256)
    dynamic = tiny_model(rope_scaling=RopeScaling(kind="dynamic", factor=2.0, original_context=64))
    assert not supports(dynamic.args)
    with pytest.raises(ValueError, match="dynamic NTK"):
        StaticDecoder(dynamic)
    with pytest.raises(ValueError, match="CUDA"):
        StaticDecoder(tiny_model(), step="graph", min_bucket=16) if not torch.cuda.is_available() else StaticDecoder(
            tiny_model(), step="bogus")


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@CUDA
@pytest.mark.parametrize("window", [None, 24])
def test_cuda_graph_replay_equals_eager(window):
    model = tiny_model(window=window, seed=8, dtype=torch.bfloat16, device="cuda")
    eager = StaticDecoder(model, min_bucket=16, step="eager")
    graph = StaticDecoder(model, min_bucket=16, step="graph")
    prompt, steps = tokens(11, 1), tokens(100, 2)
    worst = (eager.prefill(prompt).float() - graph.prefill(prompt).float()).abs().max().item()
    for token in steps:
        worst = max(worst, (eager.decode(token).float() - graph.decode(token).float()).abs().max().item())
    assert worst < 2e-2  # bfloat16: the same kernels, replayed; differences only from kernel choice
    graph.trim(50)
    eager.trim(50)
    for token in tokens(20, 3):  # replaying the already captured graphs after a trim
        assert (eager.decode(token).float() - graph.decode(token).float()).abs().max().item() < 2e-2


@CUDA
def test_cuda_graph_float32_equals_plain_path():
    model = tiny_model(seed=9, device="cuda")
    plain, static = Plain(model), StaticDecoder(model, min_bucket=16, step="graph")
    assert run_both(plain, static, tokens(11, 1), tokens(100, 2)) < 1e-4


def test_compiled_step_equals_plain_path_and_never_recompiles_inside_a_bucket():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = tiny_model(seed=10)
    plain, static = Plain(model), StaticDecoder(model, min_bucket=128, step="compile")
    assert run_both(plain, static, tokens(11, 1), tokens(1, 2)) < ATOL  # the first decode compiles
    compiled = counters["stats"]["unique_graphs"]  # one more per compilation, recompiles included
    assert compiled >= 1
    # 100 more steps in the same 128-key bucket: new positions and tokens, no new graph.
    assert run_both(plain, static, tokens(5, 3), tokens(100, 4)) < ATOL
    assert static.capacity == 128 and static.offset == 117
    assert counters["stats"]["unique_graphs"] == compiled


def test_gpu_check_script_runs_on_cpu_with_a_tiny_shape():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "tools/gpu_check_static.py", "--tiny", "--device", "cpu", "--kinds", "eager", "--steps", "4"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    table = [line for line in out.stdout.splitlines() if line.startswith("| tiny |")]
    assert [row.split(" | ")[1] for row in table] == ["eager", "plain"]


def test_growing_a_bucket_works_outside_inference_mode():
    """Found on the H200: the buckets are made under prefill's inference mode, so `ensure` called
    from ordinary code (as the GPU check script does) must not write into them outside it."""
    model = tiny_model()
    plain, static = Plain(model), StaticDecoder(model, min_bucket=16, prefill_lengths=PREFILL_LENGTHS)
    static.prefill(tokens(40, 6))  # makes the 64 bucket, under inference mode
    static.reset()
    prompt = tokens(12, 7)
    worst = (plain.feed(prompt) - static.prefill(prompt)).abs().max().item()
    static.ensure(40)  # back into the kept 64 bucket, copying the 12 filled positions
    assert static.capacity == 64
    worst = max(worst, (plain.feed([5]) - static.decode(5)).abs().max().item())
    assert worst < ATOL
