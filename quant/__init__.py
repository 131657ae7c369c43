"""Weight quantization for the native engine: INT8 and INT4, both in groups of inputs.

`quant.schemes` is the tensor math, `quant.linear` the module swap (`quantize_model`). Names are
re-exported lazily so that importing `quant` (for example for `--help`) does not load torch.
"""

_EXPORTS = {
    "quantize_model": "linear",
    "Int8Linear": "linear",
    "Int4Linear": "linear",
    "quantize_int8_per_channel": "schemes",
    "quantize_int8_grouped": "schemes",
    "CPUQuantLinear": "cpu_kernel",
    "CUDAQuantLinear": "cuda_kernel",
    "pack_for_cuda": "linear",
    "dequantize_int8": "schemes",
    "quantize_int4_grouped": "schemes",
    "pack_int4": "schemes",
    "unpack_int4": "schemes",
    "dequantize_int4": "schemes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
