"""Quantized drop-ins for `nn.Linear` and `nn.Embedding`, the kernel choice per device, and the model swap.

Kernels, measured on the 2-core AVX-512 BF16/VNNI CPU this project targets (README,
"Quantization"): the four layer linears of all 30 layers of the default model, one token,
weights streamed from memory as in real decoding:

| kernel (bfloat16 activations)                          | ms per token | weights read |
|--------------------------------------------------------|-------------:|-------------:|
| bfloat16, oneDNN prepacked (`engine.model.packing`)          |    11.2-12.3 |       212 MB |
| fbgemm dynamic INT8 (`quantized.linear_dynamic`)       |         14.7 |       106 MB |
| INT8 per row, `aten._weight_int8pack_mm`               |     7.4-10.0 |       106 MB |
| INT8 as two nibble planes, `_weight_int4pack_mm_for_cpu`, group 32 / 128 | 9.3 / 7.0 | 106 MB |
| INT4 g32 / g64, `_weight_int4pack_mm_for_cpu`          |    4.5 / 4.2 |        53 MB |

These streaming figures move by 20% from run to run on this VM; in the whole model, alternated
in one process, INT8 decoded at 17.4 ms a token (median 19.0) through the nibble planes against
19.7 (median 22.5) through `_weight_int8pack_mm`, and the planes take per-group scales, which
`_weight_int8pack_mm` cannot. Both schemes therefore run PyTorch's INT4 CPU kernel, INT8 as two
nibble planes (`quant.cpu_kernel`): they read fewer bytes than bfloat16 and, unlike fbgemm's
dynamic path, leave the activations alone. fbgemm quantizes each call's activations to 8 bits with one scale,
and the default model's activation outliers (up to 2800 at the `w2` input, against a typical
0.1) cost mean KL 0.015 per decoded token; weight-only INT8 measures 0.003. The kernel is slow
with float32 activations, so a quantized model runs in bfloat16 on CPU unless told otherwise;
prefill (many rows) dequantizes and runs the dense matmul, which is faster there.

`engine.load(DIR)` on CPU swaps every layer for its `CPUQuantLinear` form, which holds only the
kernel's layout. The modules here keep the stored form (what `quant` writes) and build a
kernel copy on first use on CPU. On CUDA in bfloat16 the loader swaps every layer for its
`CUDAQuantLinear` form once (`pack_for_cuda`: tinygemm for INT4 and grouped INT8,
`quant.cuda_kernel`). Elsewhere (MPS, float32, shapes a kernel refuses) they dequantize the
weight to the activation dtype and call `F.linear`, gpt-fast's weight-only form: correct
everywhere, a memory saving but not a speed-up unless `torch.compile` fuses the cast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine import RequestError

from .cpu_kernel import KERNEL_DTYPES, CPUQuantLinear
from .cuda_kernel import CUDAQuantLinear
from .policy import LAYER_LINEARS, layer_group_size
from .schemes import (
    GROUP_SIZES,
    dequantize_int4,
    dequantize_int8,
    int8_groups,
    quantize_int4_grouped,
    quantize_int8_grouped,
    quantize_int8_per_channel,
    unpack_int4,
)

SCHEMES = ("int8", "int4")


def _cpu_kernel(x: torch.Tensor) -> bool:
    """Whether `x` goes to PyTorch's CPU weight-only kernels (else: dequantize and `F.linear`)."""
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16, torch.float32)


class _KernelCache(nn.Module):
    """A module holding a kernel-ready copy of its buffers, dropped whenever the buffers change."""

    _kernel: CPUQuantLinear | bool | None  # built on first CPU call; False: the kernel does not apply

    def _drop_kernel_cache(self) -> None:
        raise NotImplementedError

    def packed_for_cpu(self, dtype: torch.dtype) -> CPUQuantLinear | None:
        raise NotImplementedError

    def _cpu_kernel_for(self, x: torch.Tensor) -> CPUQuantLinear | None:
        """The kernel copy for `x` (built on first use, rebuilt for another dtype), or None
        where `x` does not go to the CPU kernel or the layer does not fit it."""
        if not (_cpu_kernel(x) and x.dtype in KERNEL_DTYPES):
            return None
        if self._kernel is None or (self._kernel and self._kernel.dtype != x.dtype):
            self._kernel = self.packed_for_cpu(x.dtype) or False
        return self._kernel or None

    def _apply(self, fn, recurse=True):
        self._drop_kernel_cache()  # moved or cast: the cached copy is stale
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._drop_kernel_cache()
        super()._load_from_state_dict(*args, **kwargs)


def int8_scale_dtype(shape: tuple[int, ...]) -> torch.dtype:
    """How INT8 scales are stored: per group ([out, groups]) in float16, half a byte per weight
    less at group 32 than float32 (`quantize_int8_grouped` already rounds them there); per row
    ([out]) in float32, as format version 1 wrote them."""
    return torch.float16 if len(shape) == 2 else torch.float32


def int8_scale_storage(scale: torch.Tensor) -> torch.Tensor:
    """`scale` in its stored dtype (`int8_scale_dtype`), refusing what float16 cannot hold."""
    stored = scale.to(int8_scale_dtype(tuple(scale.shape)))
    if stored.dtype == torch.float16 and not stored.isfinite().all():
        raise ValueError("INT8 group scales overflow float16: the weights are too large for this scheme")
    return stored


class Int8Linear(_KernelCache):
    """y = x @ (q * scale).T + bias: q int8 [out, in], scale float32 per row [out] or per group [out, in/g]."""

    def __init__(self, weight_q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if weight_q.dtype != torch.int8 or weight_q.dim() != 2:
            raise ValueError(f"Int8Linear needs an int8 [out, in] weight, got {weight_q.dtype} {tuple(weight_q.shape)}")
        try:
            groups = int8_groups(weight_q, scale)
        except ValueError as e:
            raise ValueError(f"Int8Linear: {e}") from None
        self.out_features, self.in_features = weight_q.shape
        self.group_size = self.in_features // groups if scale.dim() == 2 else None  # None: per row
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("scale", int8_scale_storage(scale))
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self._kernel = None
        self._scale_cast: torch.Tensor | None = None  # per-row scales in the activation dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int | None = None) -> Int8Linear:
        """Per output row, or in groups of `group_size` inputs."""
        w = linear.weight.detach()
        q, scale = quantize_int8_per_channel(w) if group_size is None else quantize_int8_grouped(w, group_size)
        return cls(q, scale, linear.bias)

    def extra_repr(self) -> str:
        grid = "per row" if self.group_size is None else f"group_size={self.group_size}"
        return f"in_features={self.in_features}, out_features={self.out_features}, {grid}, bias={self.bias is not None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self._cpu_kernel_for(x)
        if kernel is not None:
            return kernel(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if _cpu_kernel(x) and self.group_size is None:  # float32, or a shape the INT4 kernel does not take
            if self._scale_cast is None or self._scale_cast.dtype != x.dtype:
                self._scale_cast = self.scale.to(x.dtype)
            y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features), self.weight_q, self._scale_cast)
            y = y.view(*x.shape[:-1], self.out_features)
            return y if bias is None else y + bias
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_int8(self.weight_q, self.scale, dtype)

    def packed_for_cpu(self, dtype: torch.dtype) -> CPUQuantLinear | None:
        return CPUQuantLinear.from_int8(self.weight_q, self.scale, self.bias, dtype=dtype)

    def packed_for_cuda(self) -> CUDAQuantLinear | None:
        return CUDAQuantLinear.from_int8(self.weight_q, self.scale, self.bias)

    def _drop_kernel_cache(self) -> None:
        self._kernel = self._scale_cast = None


class Int8Embedding(nn.Module):
    """A token table stored as int8 rows with float32 scales (per row or per group); lookups dequantize rows.

    With a tied head, `Int8Linear(table.weight_q, table.scale)` shares the same two tensors, so
    the table is held once and the logits use the fast INT8 kernel.
    """

    def __init__(self, weight_q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        if weight_q.dtype != torch.int8 or weight_q.dim() != 2:
            raise ValueError(f"Int8Embedding needs an int8 [vocab, dim] table, got {weight_q.dtype} {tuple(weight_q.shape)}")
        try:
            self.groups = int8_groups(weight_q, scale)
        except ValueError as e:
            raise ValueError(f"Int8Embedding: {e}") from None
        self.num_embeddings, self.embedding_dim = weight_q.shape
        self.dtype = dtype  # the model's activation dtype
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("scale", int8_scale_storage(scale))

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, group_size: int | None = None) -> Int8Embedding:
        w = embedding.weight.detach()
        q, scale = quantize_int8_per_channel(w) if group_size is None else quantize_int8_grouped(w, group_size)
        return cls(q, scale, embedding.weight.dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = self.weight_q[tokens].float().unflatten(-1, (self.groups, -1))  # (..., groups, dim / groups)
        return (rows * self.scale.view(self.num_embeddings, self.groups)[tokens, :, None]).flatten(-2).to(self.dtype)

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
        self._kernel = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 32) -> Int4Linear:
        packed, scale, minimum = quantize_int4_grouped(linear.weight.detach(), group_size)
        return cls(packed, scale, minimum, linear.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_int4(self.weight_packed, self.scale, self.minimum, dtype)

    def packed_for_cpu(self, dtype: torch.dtype) -> CPUQuantLinear | None:
        return CPUQuantLinear.from_int4(unpack_int4(self.weight_packed).to(torch.uint8), self.scale, self.minimum,
                                        self.bias, dtype=dtype)

    def packed_for_cuda(self) -> CUDAQuantLinear | None:
        return CUDAQuantLinear.from_int4(self.weight_packed, self.scale, self.minimum, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self._cpu_kernel_for(x)
        if kernel is not None:
            return kernel(x)
        return F.linear(x, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def _drop_kernel_cache(self) -> None:
        self._kernel = None


FLOAT16_MAX = float(torch.finfo(torch.float16).max)
HEAD_GROUP_SIZE = 32  # INT8 groups of the token table and output head, in both schemes

def int8_group_size(in_features: int, group_size: int | None) -> int | None:
    """An INT8 tensor's group size: as `layer_group_size`, but per row (None) where no group fits."""
    if group_size is None:
        return None
    try:
        return layer_group_size(in_features, group_size)
    except ValueError:
        return None


def _int8_entry(group_size: int | None, **extra) -> dict:
    return {"scheme": "int8", **({} if group_size is None else {"group_size": group_size}), **extra}


def quantize_model(
    model: nn.Module,
    scheme: str,
    group_size: int | None = 32,
    *,
    hessians: dict[str, torch.Tensor] | None = None,
    progress=None,
) -> dict:
    """Swap the Transformer's linear layers (and token table) for INT8 or INT4 ones, in place; return a report.

    hessians: INT4 only, from `quant.gptq.collect_hessians` (name -> H): those layers are rounded
    with GPTQ instead of to nearest.

    Policy, the same for both schemes:
    - every layer's wqkv, wo, w13 and w2 get `scheme` in groups of `group_size` inputs where it
      divides the input width, else the largest smaller group size that does (recorded per
      tensor). INT8 with `group_size=None`, or a width no group size divides, is per row;
    - the token embedding and the output head get INT8 in groups of 32 (GGML's Q8_0 grid), per
      row where 32 does not divide the width. The head is the largest single matrix (49152 x 576
      for the default model: 21% of its weights) and the logits are sensitive, so it stays at 8
      bits even for INT4, as llama.cpp keeps it at 6-8 bits in its 4-bit types. A tied head
      shares the embedding's int8 table;
    - RMSNorm scales stay float32.
    All layers are checked first, so a bad request changes nothing.
    """
    if scheme not in SCHEMES:
        raise RequestError(f"unknown quantization scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    if group_size not in GROUP_SIZES and not (scheme == "int8" and group_size is None):
        raise RequestError(f"{scheme.upper()} group size must be one of {GROUP_SIZES}, got {group_size}")
    if hessians and scheme != "int4":
        raise RequestError("GPTQ calibration applies to int4 only")

    targets: list[tuple[str, nn.Module, str, nn.Linear]] = []  # (full name, parent, attribute, linear)
    for i, layer in enumerate(model.layers):
        for path in LAYER_LINEARS:
            parent_path, attr = path.rsplit(".", 1)
            parent = layer.get_submodule(parent_path)
            targets.append((f"layers.{i}.{path}", parent, attr, getattr(parent, attr)))
    for name, _, _, linear in targets:
        if not isinstance(linear, nn.Linear):
            raise RequestError(f"{name} is {type(linear).__name__}, not nn.Linear: is the model already quantized?")
        if scheme == "int4":
            try:
                layer_group_size(linear.in_features, group_size)
            except ValueError as e:
                raise RequestError(f"{name}: {e}") from None
        # Scales (and INT4 minimums) are stored in float16: refuse weights they cannot hold now,
        # before any layer is swapped.
        limit = FLOAT16_MAX if scheme == "int4" else FLOAT16_MAX * 127
        if (scheme == "int4" or int8_group_size(linear.in_features, group_size)) and linear.weight.abs().max() > limit:
            raise RequestError(f"{name}: weights up to {float(linear.weight.abs().max()):.3g} do not fit the float16 "
                             f"scales of {scheme.upper()} (limit {limit:.3g})")
    if not isinstance(model.tok_embeddings, nn.Embedding) or not (model.output is None or isinstance(model.output, nn.Linear)):
        raise RequestError("the token embedding or output head is not a float module: is the model already quantized?")

    quantized: dict[str, dict] = {}
    steps = len(targets) + 1
    for n, (name, parent, attr, linear) in enumerate(targets):
        if scheme == "int8":
            g = int8_group_size(linear.in_features, group_size)
            new = Int8Linear.from_linear(linear, g)
            quantized[f"{name}.weight"] = _int8_entry(g)
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
    g = int8_group_size(model.tok_embeddings.embedding_dim, HEAD_GROUP_SIZE)
    table = Int8Embedding.from_embedding(model.tok_embeddings, g)
    model.tok_embeddings = table
    quantized["tok_embeddings.weight"] = _int8_entry(g, role="token embedding" + (" and tied output head" if tied else ""))
    if tied:
        model.output = Int8Linear(table.weight_q, table.scale)
    else:
        model.output = Int8Linear.from_linear(model.output, g)
        quantized["output.weight"] = _int8_entry(g, role="output head")
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
        "group_size": group_size,
        "tied_output": tied,
        "quantized": quantized,
        "kept_float": kept_float,
    }


def _swap_packed(model: nn.Module, pack) -> int:
    """Replace every INT8/INT4 linear of `model` by `pack(layer)` where that is not None; returns
    how many were replaced. The stored tensors go with the old modules: the weights are held once."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, (Int8Linear, Int4Linear)):
                packed = pack(child)
                if packed is not None:
                    setattr(module, name, packed)
                    swapped += 1
    return swapped


def pack_for_cpu(model: nn.Module, dtype: torch.dtype) -> int:
    """Each INT8/INT4 linear in its `CPUQuantLinear` form for activations in `dtype` (bfloat16 or
    float16), which holds only the kernel's layout. For inference on CPU: the packed modules do
    not save or move. Layers the kernel does not fit stay as they are."""
    return _swap_packed(model, lambda layer: layer.packed_for_cpu(dtype))


def pack_for_cuda(model: nn.Module) -> int:
    """Each INT8/INT4 linear of `model` (already on a CUDA device) in its `CUDAQuantLinear` form,
    once, at load time. Layers no kernel takes stay as they are and keep dequantizing per call."""
    return _swap_packed(model, lambda layer: layer.packed_for_cuda())


def quantize_for_inference(model: nn.Module, scheme: str, *, group_size: int | None = 32, dtype: torch.dtype) -> dict:
    """`quantize_model`, then each layer in its device's kernel layout (`pack_for_cpu` for 16-bit
    activations on CPU, `pack_for_cuda` in bfloat16 on CUDA), as loading a quantized folder
    does. The engine's bench reaches this through the "engine.model_quantizers" entry point,
    for models it builds in memory. Returns `quantize_model`'s report with "packed", how many
    layers went to a kernel layout."""
    report = quantize_model(model, scheme, group_size)
    device = model.norm.weight.device
    if device.type == "cpu" and dtype in KERNEL_DTYPES:
        report["packed"] = pack_for_cpu(model, dtype)
    elif device.type == "cuda" and dtype == torch.bfloat16:
        report["packed"] = pack_for_cuda(model)
    else:
        report["packed"] = 0
    return report
