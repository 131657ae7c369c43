"""GPTQ rounding for the INT4 grouped format (Frantar et al. 2022, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers").

Plain rounding (`quant.schemes.quantize_int4_grouped`) minimises each weight's own error. GPTQ
minimises the error of the layer's output on real inputs, ||X W^T - X Q^T||^2, which depends on
the weights only through H = 2/n X^T X ([in, in], X the layer's n calibration inputs). It rounds
one input column at a time and moves that column's rounding error onto the columns not yet
rounded, weighted by how the inputs correlate (rows of the Cholesky factor of H^-1), so later
roundings cancel part of it. The output is exactly our INT4 format (codes 0..15, a scale and a
min per group of consecutive inputs, both float16-representable), so
`Int4Linear(*gptq_int4(linear.weight, hessians[name], group_size), linear.bias)` runs it unchanged.

Choices, measured on the bundled default model as mean KL against float32 on held-out text
(the numbers: tests/test_gptq.py):
- Group parameters are min/max, as in plain rounding, taken from the current, error-updated
  weights when the group's first column comes up (GPTQ's grouped variant). Blocks of columns
  are whole groups, so every update made so far has reached a group when it starts.
- Calibration runs as short sequences (SEQUENCE_LENGTH, below): one long sequence made GPTQ
  worse than plain rounding, 128-token sequences clearly better.
- Damping: 10% of the mean H diagonal (the reference uses 1%). Calibration texts here are
  short, often fewer tokens than a layer has inputs, and 1% let GPTQ fit the calibration text
  at the expense of other text (on the licence text after calibrating on the story, g64 KL
  0.40 against plain rounding's 0.35; 10%: 0.31). If the Cholesky factorisation fails, the
  damping grows tenfold, twice; then the layer is rounded plainly, with a warning.
- Fewer calibration tokens than the widest layer input (1536 for the default model) leave H
  rank-deficient: `collect_hessians` warns, since the result then fits the calibration text's
  kind of text and can be worse than plain rounding on others.
- An input that was exactly zero on every calibration token ("dead", H diagonal 0) keeps its
  weights and is rounded plainly: its error is invisible on the calibration data, so it is not
  spread onto other columns. (The reference zeroes such weights, which is right only if the
  input is always zero.)
- `act_order` (columns by decreasing H diagonal) needs "static groups" here, parameters from the
  original weights per group of consecutive columns, because the format has no per-column
  group index. Off by default: within noise of the default order on the default model (g64
  0.111 both, g128 0.133 against 0.143) and worse on random matrices (0.84 of plain's error
  against 0.78).
- Two ways to collect H: `collect_hessians` (every layer sees the float model's inputs; one
  pass) and `collect_hessians_sequential` (layer i sees the inputs that the already-rounded
  layers 0..i-1 produce, so it also corrects their error: ~10% lower KL, ~4x the time).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from engine import RequestError

from .policy import LAYER_LINEARS, layer_group_size
from .schemes import _check_group_size, _check_matrix, dequantize_int4, pack_int4, quantize_int4_grouped

DAMP = 0.1  # fraction of the mean Hessian diagonal added to the diagonal
DAMPING_RETRIES = 3  # damp, 10 * damp, 100 * damp

# Calibration text is cut into sequences of this many tokens, each run from position 0.
# Measured on the default model, GPTQ at g64 calibrated on 2048 tokens of the GPL text, mean KL
# on held-out GPL text / on the story in tests/data: one 2048-token sequence 0.45 / 0.39 (worse
# than plain rounding's 0.35 / 0.25), sequences of 512 0.29 / 0.32, of 256 0.19 / 0.25, of 128
# 0.21 / 0.21, of 64 0.20 / 0.21. The damage was in wqkv alone. Our reading: the first position
# of a sequence is an attention sink whose key and value every later query reads, and whose
# inputs point where ordinary tokens' barely do; as 1 token in 2048 it looks cheap to GPTQ,
# which pushes rounding error there. More sequences give it its real weight.
SEQUENCE_LENGTH = 128


class _InputGram:
    """A forward pre-hook that sums X^T X in float64 over the inputs of a linear layer."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.gram = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.rows = 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].reshape(-1, args[0].shape[-1]).double()  # (tokens, in)
        self.gram.addmm_(x.T, x)
        self.rows += x.shape[0]


def collect_hessians(
    model: nn.Module,
    token_ids: Sequence[int],
    *,
    sequence_length: int = SEQUENCE_LENGTH,
    chunk: int = 512,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Run the float model over the calibration tokens; return H = 2/n X^T X per layer linear.

    model: an `engine.model.decoder.Transformer`. Returns {"layers.{i}.attention.wqkv": H, ...}, one
    float64 [in, in] matrix for each of `quant.policy.LAYER_LINEARS` in every layer, over the
    n calibration tokens. The tokens are cut into independent sequences of `sequence_length`
    (see SEQUENCE_LENGTH for why), each run from position 0 through a fresh KV cache in passes of
    at most `chunk` tokens. `progress(tokens_done, total)` is called after each pass.
    """
    ids = _calibration_ids(model, token_ids, sequence_length, chunk)
    names = [f"layers.{i}.{path}" for i in range(len(model.layers)) for path in LAYER_LINEARS]
    hessians = _run_calibration(model, ids, names, sequence_length, chunk, progress=progress)
    _warn_if_short(ids, hessians)
    return hessians


def collect_hessians_sequential(
    model: nn.Module,
    token_ids: Sequence[int],
    group_size: int,
    *,
    damp: float = DAMP,
    sequence_length: int = SEQUENCE_LENGTH,
    chunk: int = 512,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """`collect_hessians`, but layer i's inputs come from the model with layers 0..i-1 already rounded.

    Each layer is rounded with `gptq_int4` as soon as its Hessians are in (group size per layer
    as `quant.linear.layer_group_size` picks it from `group_size`), so later layers are
    calibrated to correct the error of earlier ones; the float weights are put back before
    returning. `gptq_int4` is deterministic, so rounding each layer again with these Hessians,
    the same group size and the same `damp` reproduces exactly the rounding used here. Costs a
    forward pass per layer (each stopped after that layer) and GPTQ twice: ~4x the time of
    `collect_hessians`, for ~10% lower KL (tests/test_gptq.py). `progress(layers_done, layers)`.
    """
    ids = _calibration_ids(model, token_ids, sequence_length, chunk)
    hessians: dict[str, torch.Tensor] = {}
    float_weights: dict[str, torch.Tensor] = {}
    try:
        for i, layer in enumerate(model.layers):
            names = [f"layers.{i}.{path}" for path in LAYER_LINEARS]
            hessians.update(_run_calibration(model, ids, names, sequence_length, chunk, stop_after=layer))
            for name in names:
                linear = model.get_submodule(name)
                w = float_weights[name] = linear.weight.data
                rounded = gptq_int4(w, hessians[name], layer_group_size(linear.in_features, group_size), damp=damp)
                linear.weight.data = dequantize_int4(*rounded, dtype=w.dtype)
            if progress is not None:
                progress(i + 1, len(model.layers))
    finally:
        for name, w in float_weights.items():
            model.get_submodule(name).weight.data = w
    _warn_if_short(ids, hessians)
    return hessians


class _StopForward(Exception):
    """Raised after the last layer a calibration pass needs, to skip the rest of the model."""


def _stop_forward(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    raise _StopForward


def _calibration_ids(model: nn.Module, token_ids: Sequence[int], sequence_length: int, chunk: int) -> list[int]:
    if chunk < 1 or sequence_length < 1:
        raise RequestError(f"calibration sequences and chunks need at least one token, got {sequence_length} and {chunk}")
    ids = [int(t) for t in token_ids]
    vocab = model.args.vocab_size
    if not ids:
        raise RequestError("calibration needs at least one token: give it a non-empty text")
    if min(ids) < 0 or max(ids) >= vocab:
        raise RequestError(f"calibration token ids must lie in 0..{vocab - 1}")
    return ids


def _run_calibration(
    model: nn.Module,
    ids: list[int],
    names: list[str],
    sequence_length: int,
    chunk: int,
    *,
    progress: Callable[[int, int], None] | None = None,
    stop_after: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """H = 2/n X^T X for each named linear, over `ids` run as independent sequences."""
    from engine.model import KVCache

    embedding = model.tok_embeddings.weight
    window = min(sequence_length, model.args.context_length)
    grams: dict[str, _InputGram] = {}
    handles = []
    try:
        for name in names:
            module = model.get_submodule(name)
            grams[name] = _InputGram(module.in_features, embedding.device)
            handles.append(module.register_forward_pre_hook(grams[name]))
        if stop_after is not None:
            handles.append(stop_after.register_forward_hook(_stop_forward))
        with torch.inference_mode():
            for start in range(0, len(ids), window):
                sequence = ids[start : start + window]
                cache = KVCache(model.args, len(sequence), dtype=embedding.dtype, device=embedding.device)
                for c in range(0, len(sequence), chunk):
                    piece = sequence[c : c + chunk]
                    try:
                        model(torch.tensor([piece], dtype=torch.long, device=embedding.device), cache, last_only=True)
                    except _StopForward:
                        cache.advance(len(piece))  # the layers up to stop_after have cached these positions
                    if progress is not None:
                        progress(start + c + len(piece), len(ids))
    finally:
        for handle in handles:
            handle.remove()
    return {name: gram.gram * (2 / gram.rows) for name, gram in grams.items()}


def _warn_if_short(ids: list[int], hessians: dict[str, torch.Tensor]) -> None:
    widest = max(h.shape[0] for h in hessians.values())
    if len(ids) < widest:
        warnings.warn(
            f"GPTQ calibration on {len(ids)} tokens, fewer than the widest layer input ({widest}): the "
            f"result will fit this kind of text and may be worse than plain rounding on others; "
            f"give at least {widest} tokens of text like the model's real use",
            RuntimeWarning,
            stacklevel=3,
        )


def gptq_int4(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    group_size: int,
    *,
    damp: float = DAMP,
    block_size: int = 128,
    act_order: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight [out, in], H [in, in] -> (packed uint8 [out, in/2], scale f32 [out, groups], min f32 [out, groups]).

    The format of `quantize_int4_grouped`, with codes chosen to minimise the output error on the
    inputs H describes. `damp` is a fraction of H's mean diagonal; `block_size` (rounded up to
    whole groups) only trades memory traffic for Python steps. If H will not factorise even with
    100x the damping, the weight is rounded plainly and a RuntimeWarning says so.
    """
    _check_matrix(weight)
    out, in_features = weight.shape
    if in_features % 2:
        raise ValueError(f"INT4 packs two inputs per byte, so the input width must be even, got {in_features}")
    _check_group_size(in_features, group_size)
    if hessian.shape != (in_features, in_features):
        raise ValueError(f"the Hessian must be [in, in] = {(in_features, in_features)}, got {tuple(hessian.shape)}")
    if not torch.isfinite(hessian).all():
        raise ValueError("the Hessian has non-finite entries: were the calibration activations finite?")
    if not damp > 0:
        raise ValueError(f"damping must be a positive fraction of the mean Hessian diagonal, got {damp}")

    device = weight.device
    factor = _inverse_hessian_factor(hessian.to(device), damp)
    if factor is None:
        warnings.warn(
            f"GPTQ: the Hessian of a {out}x{in_features} layer is not positive definite even with "
            f"{damp * 10 ** (DAMPING_RETRIES - 1):g} x its mean diagonal added; that layer was rounded plainly",
            RuntimeWarning,
            stacklevel=2,
        )
        return quantize_int4_grouped(weight, group_size)

    # Transposed, so that an input column is a contiguous row: wt (in, out), updated in place as
    # rounding errors are spread onto the columns not yet rounded.
    wt = weight.detach().float().T.contiguous()
    groups = in_features // group_size
    grid = _GroupGrid(groups, out, device)
    if act_order:
        for group in range(groups):  # static groups, from the original weights
            grid.set(group, wt[group * group_size : (group + 1) * group_size])
        perm = torch.argsort(hessian.diagonal().to(device), descending=True, stable=True)
        wt, factor = wt[perm], factor[perm][:, perm]
        order = perm.tolist()
        block = max(block_size, 1)
    else:
        order = list(range(in_features))
        block = -(-max(block_size, 1) // group_size) * group_size  # whole groups per block
    factor = factor.float()
    codes_t = torch.zeros(in_features, out, device=device)  # (in, out), values 0..15

    for b0 in range(0, in_features, block):
        b1 = min(b0 + block, in_features)
        w_block, f_block = wt[b0:b1], factor[b0:b1, b0:b1]  # views: updates land in wt
        errors = torch.zeros(b1 - b0, out, device=device)  # rounding errors / pivot, (block, out)
        for j in range(b1 - b0):
            column = order[b0 + j]
            group = column // group_size
            if not act_order and column % group_size == 0:
                grid.set(group, w_block[j : j + group_size])
            scale, lo = grid.scale[group], grid.minimum[group]
            q = torch.round((w_block[j] - lo) * grid.inverse[group]).clamp_(0, 15)
            codes_t[column] = q
            err = errors[j]
            torch.sub(w_block[j], torch.addcmul(lo, q, scale), out=err)
            err /= f_block[j, j]
            w_block[j:].addr_(f_block[j, j:], err, alpha=-1)  # onto the rest of this block
        wt[b1:].addmm_(factor[b0:b1, b1:].T, errors, alpha=-1)  # the block's errors, onto later blocks
    return pack_int4(codes_t.T.to(torch.uint8)), grid.scale.T.contiguous(), grid.minimum.T.contiguous()


class _GroupGrid:
    """Per-group scale, min and 1/scale, stored (groups, out) so that a group's row is contiguous."""

    def __init__(self, groups: int, out: int, device: torch.device) -> None:
        self.scale = torch.zeros(groups, out, device=device)
        self.minimum = torch.zeros(groups, out, device=device)
        self.inverse = torch.zeros(groups, out, device=device)

    def set(self, group: int, columns: torch.Tensor) -> None:
        """Min/max parameters from a group's columns (group_size, out), rounded as plain rounding rounds them."""
        # float16-representable, as `Int4Linear` stores them: the codes are chosen on the grid it will use.
        lo = columns.amin(dim=0).half().float()
        scale = ((columns.amax(dim=0) - lo) / 15).half().float()
        self.minimum[group], self.scale[group] = lo, scale
        self.inverse[group] = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))  # constant group: q = 0


def _inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor | None:
    """Upper Cholesky factor U of (H + damping)^-1 (U^T U = H^-1), float64; None if H will not factorise."""
    h = hessian.double().clone()
    dead = h.diagonal() == 0
    h.diagonal()[dead] = 1  # uncoupled from every other column: its error stays its own
    base = h.diagonal().mean()
    for attempt in range(DAMPING_RETRIES):
        damped = h.clone()
        damped.diagonal().add_(damp * 10**attempt * base)
        lower, info = torch.linalg.cholesky_ex(damped)
        if info:
            continue
        upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
        if not info:
            return upper
    return None
