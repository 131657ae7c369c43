"""Quantized drop-ins for `nn.Linear` and `nn.Embedding`, the kernel choice per device, and the model swap.

Kernels, measured on the 2-core AVX-512 BF16/VNNI CPU this project targets (README,
"Quantization"): the four layer linears of all 30 layers of the default model, one token,
weights streamed from memory as in real decoding:

| kernel (bfloat16 activations)                    | ms per token | weights read |
|--------------------------------------------------|-------------:|-------------:|
| bfloat16, oneDNN prepacked (`engine.packing`)    |         11.2 |       212 MB |
| fbgemm dynamic INT8 (`quantized.linear_dynamic`) |         14.7 |       106 MB |
| INT8 weight-only, `aten._weight_int8pack_mm`     |          7.4 |       106 MB |
| INT4 g32 weight-only, `_weight_int4pack_mm_for_cpu` |        8.0 |        53 MB |
| INT4 g64 weight-only, `_weight_int4pack_mm_for_cpu` |        3.8 |        53 MB |

So on CPU both schemes run PyTorch's own weight-only kernels: they read fewer bytes than
bfloat16 and, unlike fbgemm's dynamic path, leave the activations alone. fbgemm quantizes each
call's activations to 8 bits with one scale, and the default model's activation outliers (up to
2800 at the `w2` input, against a typical 0.1) cost mean KL 0.015 per decoded token; weight-only
INT8 measures 0.003. (Those kernels are slow in float32 activations, 62 ms for the same work, so
a quantized model runs in bfloat16 on CPU unless told otherwise.)

Elsewhere (CUDA, MPS, float32 on a CPU without the ops) the layers dequantize the weight to the
activation dtype and call `F.linear`, gpt-fast's weight-only form: correct everywhere, a
memory saving but not a speed-up unless `torch.compile` fuses the cast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .schemes import (
    INT4_GROUP_SIZES,
    dequantize_int4,
    dequantize_int8,
    quantize_int4_grouped,
    quantize_int8_per_channel,
    unpack_int4,
)

SCHEMES = ("int8", "int4")


def _cpu_kernel(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16, torch.float32)


class _KernelCache(nn.Module):
    """A module holding a kernel-ready copy of its buffers, dropped whenever the buffers change."""

    def _drop_kernel_cache(self) -> None:
        raise NotImplementedError

    def _apply(self, fn, recurse=True):
        self._drop_kernel_cache()  # moved or cast: the cached copy is stale
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._drop_kernel_cache()
        super()._load_from_state_dict(*args, **kwargs)


class Int8Linear(_KernelCache):
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
        self._scale_cast: torch.Tensor | None = None  # the scale in the activation dtype, built on first call

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        q, scale = quantize_int8_per_channel(linear.weight.detach())
        return cls(q, scale, linear.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if _cpu_kernel(x):
            if self._scale_cast is None or self._scale_cast.dtype != x.dtype:
                self._scale_cast = self.scale.to(x.dtype)
            y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features), self.weight_q, self._scale_cast)
            y = y.view(*x.shape[:-1], self.out_features)
            return y if bias is None else y + bias
        return F.linear(x, self.weight_q.to(x.dtype), None) * self.scale.to(x.dtype) + (0 if bias is None else bias)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_int8(self.weight_q, self.scale, dtype)

    def _drop_kernel_cache(self) -> None:
        self._scale_cast = None


class Int8Embedding(nn.Module):
    """A token table stored as int8 rows with one float32 scale per row; lookups dequantize rows.

    With a tied head, `Int8Linear(table.weight_q, table.scale)` shares the same two tensors, so
    the table is held once and the logits use the fast INT8 kernel.
    """

    def __init__(self, weight_q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        if weight_q.dtype != torch.int8 or weight_q.dim() != 2 or scale.shape != weight_q.shape[:1]:
            raise ValueError(f"Int8Embedding needs int8 [vocab, dim] and [vocab] scales, got {weight_q.dtype} "
                             f"{tuple(weight_q.shape)} and {tuple(scale.shape)}")
        self.num_embeddings, self.embedding_dim = weight_q.shape
        self.dtype = dtype  # the model's activation dtype
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("scale", scale.float())

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> Int8Embedding:
        q, scale = quantize_int8_per_channel(embedding.weight.detach())
        return cls(q, scale, embedding.weight.dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return (self.weight_q[tokens].float() * self.scale[tokens, None]).to(self.dtype)  # (..., dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8"


class Int4Linear(_KernelCache):
    """y = x @ W.T + bias, W stored as packed 4-bit codes with a float16 scale and min per group."""

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
        # Scales and minimums are held (and saved) in float16, as GGML's Q4_1 holds them: 4 bytes
        # a group instead of 8, which at group size 32 is 0.125 bits a weight saved. The source
        # grid of a Q4_1 model is float16 already, so nothing moves there.
        scale, minimum = scale.to(torch.float16), minimum.to(torch.float16)
        if not (scale.isfinite().all() and minimum.isfinite().all()):
            raise ValueError("INT4 scales or minimums overflow float16: the weights are too large for this scheme")
        self.register_buffer("weight_packed", weight_packed)
        self.register_buffer("scale", scale)
        self.register_buffer("minimum", minimum)
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self._kernel: tuple[torch.Tensor, torch.Tensor] | None = None  # the CPU kernel's layout, built on first call

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 32) -> Int4Linear:
        packed, scale, minimum = quantize_int4_grouped(linear.weight.detach(), group_size)
        return cls(packed, scale, minimum, linear.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_int4(self.weight_packed, self.scale, self.minimum, dtype)

    def _kernel_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self._kernel is None or self._kernel[1].dtype != dtype:
            # The kernel computes (q - 8) * scale + zero per group, so zero = min + 8 * scale;
            # scales and zeros travel as [groups, out, 2] in the activation dtype.
            codes = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(self.weight_packed).to(torch.int32), 1)
            scale, minimum = self.scale.float(), self.minimum.float()
            scales_zeros = torch.stack((scale, minimum + 8 * scale), dim=-1).transpose(0, 1)
            self._kernel = codes, scales_zeros.contiguous().to(dtype)
        return self._kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if _cpu_kernel(x):
            codes, scales_zeros = self._kernel_weights(x.dtype)
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, self.in_features), codes, self.group_size, scales_zeros)
            y = y.view(*x.shape[:-1], self.out_features)
            return y if bias is None else y + bias
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def _drop_kernel_cache(self) -> None:
        self._kernel = None


# The per-layer linears of engine.model.Transformer, by path inside each Block.
LAYER_LINEARS = ("attention.wqkv", "attention.wo", "feed_forward.w13", "feed_forward.w2")


def layer_group_size(in_features: int, group_size: int) -> int:
    """The group size an INT4 layer of this input width gets: the one asked for if it divides the
    width, else the largest smaller choice that does (the default model's 576-wide inputs take
    64 when 128 is asked for). Widths no choice divides are refused."""
    for g in sorted((g for g in INT4_GROUP_SIZES if g <= group_size), reverse=True):
        if in_features % g == 0:
            return g
    raise ValueError(f"input width {in_features} is not a multiple of any INT4 group size up to {group_size}")


def quantize_model(
    model: nn.Module,
    scheme: str,
    group_size: int = 32,
    *,
    hessians: dict[str, torch.Tensor] | None = None,
    progress=None,
) -> dict:
    """Swap the Transformer's linear layers (and token table) for INT8 or INT4 ones, in place; return a report.

    hessians: INT4 only, from `quant.gptq.collect_hessians` (name -> H): those layers are rounded
    with GPTQ instead of to nearest.

    Policy, the same for both schemes:
    - every layer's wqkv, wo, w13 and w2 get `scheme` (INT4: `group_size` where it divides the
      input width, else the largest smaller group size that does, recorded per tensor);
    - the token embedding and the output head get INT8 per row. The head is the largest single
      matrix (49152 x 576 for the default model: 21% of its weights) and the logits are
      sensitive, so it stays at 8 bits even for INT4, as llama.cpp keeps it at 6-8 bits in its
      4-bit types. A tied head shares the embedding's int8 table;
    - RMSNorm scales stay float32.
    All layers are checked first, so a bad request changes nothing.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    if scheme == "int4" and group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"INT4 group size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    if hessians and scheme != "int4":
        raise ValueError("GPTQ calibration applies to int4 only")

    targets: list[tuple[str, nn.Module, str, nn.Linear]] = []  # (full name, parent, attribute, linear)
    for i, layer in enumerate(model.layers):
        for path in LAYER_LINEARS:
            parent_path, attr = path.rsplit(".", 1)
            parent = layer.get_submodule(parent_path)
            targets.append((f"layers.{i}.{path}", parent, attr, getattr(parent, attr)))
    for name, _, _, linear in targets:
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"{name} is {type(linear).__name__}, not nn.Linear: is the model already quantized?")
        if scheme == "int4":
            try:
                layer_group_size(linear.in_features, group_size)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
    if not isinstance(model.tok_embeddings, nn.Embedding) or not (model.output is None or isinstance(model.output, nn.Linear)):
        raise ValueError("the token embedding or output head is not a float module: is the model already quantized?")

    quantized: dict[str, dict] = {}
    steps = len(targets) + 1
    for n, (name, parent, attr, linear) in enumerate(targets):
        if scheme == "int8":
            new = Int8Linear.from_linear(linear)
            quantized[f"{name}.weight"] = {"scheme": "int8"}
        else:
            g = layer_group_size(linear.in_features, group_size)
            if hessians and name in hessians:
                from .gptq import gptq_int4

                new = Int4Linear(*gptq_int4(linear.weight.detach(), hessians[name], g), linear.bias)
                rounding = "gptq"
            else:
                new = Int4Linear.from_linear(linear, g)
                rounding = "nearest"
            quantized[f"{name}.weight"] = {"scheme": "int4", "group_size": g, "rounding": rounding}
        setattr(parent, attr, new)
        if progress is not None:
            progress(n + 1, steps)

    tied = model.output is None
    table = Int8Embedding.from_embedding(model.tok_embeddings)
    model.tok_embeddings = table
    quantized["tok_embeddings.weight"] = {"scheme": "int8", "role": "token embedding" + (" and tied output head" if tied else "")}
    if tied:
        model.output = Int8Linear(table.weight_q, table.scale)
    else:
        model.output = Int8Linear.from_linear(model.output)
        quantized["output.weight"] = {"scheme": "int8", "role": "output head"}
    if progress is not None:
        progress(steps, steps)

    kept_float = {}
    for name, _ in model.named_parameters():
        if name.endswith("norm.weight"):
            kept_float[name] = "RMSNorm scale: one float per channel, and every activation is multiplied by it"
        else:
            kept_float[name] = "not a layer the quantizer handles"
    return {
        "scheme": scheme,
        "group_size": group_size if scheme == "int4" else None,
        "tied_output": tied,
        "quantized": quantized,
        "kept_float": kept_float,
    }
