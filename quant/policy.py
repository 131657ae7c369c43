"""Which linears of a model get quantized, and the group size each gets: shared by the module swap
(quant/linear.py) and GPTQ calibration (quant/gptq.py)."""

from __future__ import annotations

from engine import RequestError

from .schemes import GROUP_SIZES

# The per-layer linears of engine.model.decoder.Transformer, by path inside each Block.
LAYER_LINEARS = ("attention.wqkv", "attention.wo", "feed_forward.w13", "feed_forward.w2")


def layer_group_size(in_features: int, group_size: int) -> int:
    """The group size a layer of this input width gets: the one asked for if it divides the
    width, else the largest smaller choice that does (the default model's 576-wide inputs take
    64 when 128 is asked for). Widths no choice divides are refused."""
    for g in sorted((g for g in GROUP_SIZES if g <= group_size), reverse=True):
        if in_features % g == 0:
            return g
    raise RequestError(f"input width {in_features} is not a multiple of any group size up to {group_size}")
