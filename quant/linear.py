"""Quantized drop-ins for `nn.Linear`, the kernel choice per device, and the model swap.

Kernels (measured on the 2-core AVX-512 VNNI CPU this project targets, see the README):
- INT8 decode on CPU (one token per call): fbgemm's dynamic INT8 linear
  (`torch.ops.quantized.linear_dynamic`). It quantizes the activations per call (one uint8
  scale per call) and multiplies int8 x uint8 with int32 accumulation; a 1x576 @ 576x1728
  product takes ~30 us, several times faster than bfloat16. Quantizing activations costs
  accuracy: on the default model, teacher-forced decode gives mean KL ~0.015 against float
  (weight-only: ~0.003). PyTorch marks quantized-tensor creation as deprecated (torchao is the
  successor); we only need it once, to prepack.
- INT8 otherwise (prefill, CUDA, MPS, a CPU build without fbgemm): `F.linear(x, q.to(x.dtype)) *
  scale`, gpt-fast's weight-only form. It is exact dequantization (the scale is per output
  row); on GPU `torch.compile` can fuse the cast into the matmul.
- INT4 everywhere: dequantize the whole weight to the activation dtype, then `F.linear`. Correct
  on every device but it rebuilds the float weight each call, so it saves memory, not time.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .schemes import (
    INT4_GROUP_SIZES,
    dequantize_int4,
    dequantize_int8,
    quantize_int4_grouped,
    quantize_int8_per_channel,
)

SCHEMES = ("int8", "int4")


@functools.cache
def fbgemm_available() -> bool:
    """Whether this PyTorch build can run fbgemm's dynamic INT8 linear on CPU."""
    engines = torch.backends.quantized.supported_engines
    return "fbgemm" in engines or "x86" in engines  # "x86" dispatches linear to fbgemm


@functools.cache
def _cpu_has_vnni() -> bool:
    # Without VNNI, fbgemm multiplies uint8 x int8 pairs into saturating int16, so activations
    # must use 7 bits ("reduce_range"). With VNNI the full 8 bits are safe and halve the
    # activation rounding error. Unknown CPUs get the safe choice.
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


class Int8Linear(nn.Module):
    """y = x @ (q * scale[:, None]).T + bias, with q int8 [out, in] and one float32 scale per row."""

    def __init__(self, weight_q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if weight_q.dtype != torch.int8 or weight_q.dim() != 2 or scale.shape != weight_q.shape[:1]:
            raise ValueError(f"Int8Linear needs int8 [out, in] and [out] scales, got {weight_q.dtype} "
                             f"{tuple(weight_q.shape)} and {tuple(scale.shape)}")
        self.out_features, self.in_features = weight_q.shape
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("scale", scale.float())
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self._packed = None  # fbgemm's prepacked weight, built on first CPU call

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        q, scale = quantize_int8_per_channel(linear.weight.detach())
        return cls(q, scale, linear.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def _fbgemm_weight(self):
        if self._packed is None:
            # A zero row has scale 0, which a quantized tensor refuses; its q is all 0 anyway.
            # .double()/.float(): a module-wide .to(bfloat16) also casts these buffers.
            scale = torch.where(self.scale > 0, self.scale, torch.ones_like(self.scale)).double()
            zero_points = torch.zeros(self.out_features, dtype=torch.long)
            bias = None if self.bias is None else self.bias.float()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*quantized tensor creation.*deprecated")
                qweight = torch._make_per_channel_quantized_tensor(self.weight_q, scale, zero_points, 0)
                self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.numel() == x.shape[-1] and fbgemm_available():
            # One token (decode): fbgemm with the activations quantized for this call. Several
            # tokens (prefill) take the dequantizing path below, because fbgemm gives the whole
            # call one activation scale, and one token's outlier (the default model's w2 inputs
            # reach 2800 against a mean of 0.1) then zeroes every other token's activations.
            # fbgemm takes float32 activations; the cast is cheap next to the matmul.
            y = torch.ops.quantized.linear_dynamic(x.float(), self._fbgemm_weight(), not _cpu_has_vnni())
            return y.to(x.dtype)
        y = F.linear(x, self.weight_q.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_int8(self.weight_q, self.scale, dtype)

    def _apply(self, fn, recurse=True):
        self._packed = None  # moved or cast: the prepacked copy is stale
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._packed = None
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = None  # a TorchScript object: rebuilt on demand, never copied or pickled
        return state


class Int4Linear(nn.Module):
    """y = x @ W.T + bias, W stored as packed 4-bit codes with a float32 scale and min per group."""

    def __init__(
        self,
        weight_packed: torch.Tensor,
        scale: torch.Tensor,
        minimum: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        out, half_in = weight_packed.shape
        groups = scale.shape[-1] if scale.dim() == 2 else 0
        if (
            weight_packed.dtype != torch.uint8
            or scale.shape != (out, groups)
            or minimum.shape != scale.shape
            or not groups
            or (2 * half_in) % groups
        ):
            raise ValueError(f"Int4Linear needs packed uint8 [out, in/2] and [out, groups] scale and min, got "
                             f"{tuple(weight_packed.shape)}, {tuple(scale.shape)}, {tuple(minimum.shape)}")
        self.out_features, self.in_features = out, 2 * half_in
        self.group_size = self.in_features // groups
        self.register_buffer("weight_packed", weight_packed)
        self.register_buffer("scale", scale.float())
        self.register_buffer("minimum", minimum.float())
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 32) -> Int4Linear:
        packed, scale, minimum = quantize_int4_grouped(linear.weight.detach(), group_size)
        return cls(packed, scale, minimum, linear.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_int4(self.weight_packed, self.scale, self.minimum, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)


# The per-layer linears of engine.model.Transformer, by path inside each Block.
LAYER_LINEARS = ("attention.wqkv", "attention.wo", "feed_forward.w13", "feed_forward.w2")


def quantize_model(model: nn.Module, scheme: str, group_size: int = 32) -> dict:
    """Swap the Transformer's linear layers for INT8 or INT4 ones, in place; return a report.

    Quantized: every layer's wqkv, wo, w13 and w2. The report lists the names that were
    quantized and, for every floating-point tensor left as it was, why. All layers are checked
    first, so a bad request changes nothing.

    The output head stays float, tied or not. Tied, it is the embedding table. Untied, it could
    be swapped like the others, but `engine.model.Transformer.forward` reads `output.weight`
    instead of calling `self.output(x)`, so a swapped module would never run its kernel.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    if scheme == "int4" and group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"INT4 group size must be one of {INT4_GROUP_SIZES}, got {group_size}")

    targets: list[tuple[str, nn.Module, str, nn.Linear]] = []  # (full name, parent, attribute, linear)
    for i, layer in enumerate(model.layers):
        for path in LAYER_LINEARS:
            parent_path, attr = path.rsplit(".", 1)
            parent = layer.get_submodule(parent_path)
            targets.append((f"layers.{i}.{path}", parent, attr, getattr(parent, attr)))
    for name, _, _, linear in targets:
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"{name} is {type(linear).__name__}, not nn.Linear: is the model already quantized?")
        if scheme == "int4" and linear.in_features % group_size:
            raise ValueError(f"{name}: input width {linear.in_features} is not a multiple of group size {group_size}")

    quantized = []
    for name, parent, attr, linear in targets:
        if scheme == "int8":
            new = Int8Linear.from_linear(linear)
        else:
            new = Int4Linear.from_linear(linear, group_size)
        setattr(parent, attr, new)
        quantized.append(f"{name}.weight")

    kept_float = {}
    for name, param in model.named_parameters():
        if name == "tok_embeddings.weight":
            kept_float[name] = (
                "token embedding; also the tied output head (model.output is None), kept in float "
                "so the lookup and the logits stay exact" if model.output is None else
                "token embedding: a row lookup per token, no matmul to speed up"
            )
        elif name == "output.weight":
            kept_float[name] = (
                "untied output head: Transformer.forward reads output.weight directly instead of "
                "calling the module, so a quantized module there would not run"
            )
        elif name.endswith("norm.weight"):
            kept_float[name] = "RMSNorm scale: tiny, and every activation is multiplied by it"
        else:
            kept_float[name] = "not a Transformer linear layer"
    return {
        "scheme": scheme,
        "group_size": group_size if scheme == "int4" else None,
        "quantized": quantized,
        "kept_float": kept_float,
    }
