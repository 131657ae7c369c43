"""ModelArgs: the shape of a LLaMA-style decoder, read from GGUF metadata or a Hugging Face config.json.

One model, with switches: `qkv_bias` (Qwen2), `qk_norm` (Qwen3), `no_rope_layers` (SmolLM3),
`sliding_window` (Mistral; Qwen2/Qwen3/SmolLM3 when their config turns it on), and
`rope_scaling` (linear, dynamic NTK, YaRN, Llama 3). Anything else a config asks for that the
engine does not run is refused by name, never approximated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import ModelFormatError
from .gguf_hparams import check_gguf_hparams

ROPE_SCALING_KINDS = ("linear", "dynamic", "yarn", "llama3")

# Hugging Face `architectures` entry -> its `model_type`: the families this engine runs.
HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3", "SmolLM3ForCausalLM": "smollm3",
}
# GGUF `general.architecture` values this engine runs. 'llama' and 'smollm3' files hold Q/K rows
# permuted for llama.cpp's adjacent-pair RoPE (its converter treats SmolLM3 as Llama).
GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3", "smollm3")
# llama.cpp has no GGUF key for SmolLM3's layers without RoPE: it hard-codes every fourth
# (layer i skips RoPE when (i + 1) % 4 == 0, src/models/smollm3.cpp), as SmolLM3's config defaults.
SMOLLM3_NO_ROPE_INTERVAL = 4


@dataclass(frozen=True)
class RopeScaling:
    """How rotary frequencies are stretched beyond the trained context, as transformers does it.

    kind:
    - "linear": every inverse frequency divided by `factor` (positions compressed).
    - "llama3": low frequencies divided by `factor`, high ones kept, a blend between
      `low_freq_factor` and `high_freq_factor` (Llama 3.1/3.2).
    - "dynamic": dynamic NTK. Up to `original_context` positions, plain RoPE. A forward pass
      whose last position `end` lies beyond it rotates its new queries and keys with the base
      raised to base * (factor * end / original_context - (factor - 1)) ** (d / (d - 2));
      keys already cached keep the rotation they were cached with. That is transformers'
      behaviour for calls of growing length (its frequencies follow the longest call since the
      last short one; ours are a function of each call's end only).
    - "yarn": frequencies blended between interpolated (/ factor) and original by a ramp over
      the dimensions whose wavelength falls between `beta_fast` and `beta_slow` rotations in
      `original_context` positions; cos and sin are multiplied by `attention_factor`.
    """

    kind: str
    factor: float
    original_context: int = 0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    attention_factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True  # yarn: round the ramp's ends to whole dimensions

    def __post_init__(self) -> None:
        if self.kind not in ROPE_SCALING_KINDS:
            raise ModelFormatError(
                f"RoPE scaling {self.kind!r} is not supported by the native engine (it runs {', '.join(ROPE_SCALING_KINDS)})"
            )
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise ModelFormatError(f"RoPE scaling {self.kind!r}: factor must be a positive number, got {self.factor}")
        if self.kind in ("llama3", "dynamic", "yarn") and self.original_context <= 0:
            raise ModelFormatError(f"RoPE scaling {self.kind!r} needs the original context length")
        if self.kind == "llama3" and not self.high_freq_factor > self.low_freq_factor > 0:
            raise ModelFormatError("RoPE scaling 'llama3': high_freq_factor must exceed low_freq_factor > 0")
        if self.kind == "yarn" and not (self.attention_factor > 0 and self.beta_fast > 0 and self.beta_slow > 0):
            raise ModelFormatError("RoPE scaling 'yarn': attention_factor, beta_fast and beta_slow must be positive")


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    norm_eps: float
    rope_base: float
    rope_dim: int
    context_length: int
    tied_output: bool
    rope_scaling: RopeScaling | None = None
    qkv_bias: bool = False  # a bias on the Q, K and V projections (Qwen2)
    # Each query sees only the `sliding_window` most recent positions, itself included (Mistral,
    # and Qwen2 with use_sliding_window), except in `full_attention_layers`, which see all.
    sliding_window: int | None = None
    full_attention_layers: tuple[int, ...] = ()
    qk_norm: bool = False  # RMSNorm over each head's queries and keys (head_dim weights) before RoPE (Qwen3)
    no_rope_layers: tuple[int, ...] = ()  # layers whose attention rotates nothing (SmolLM3's NoPE layers)

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "vocab_size", "context_length"):
            if getattr(self, name) <= 0:
                raise ModelFormatError(f"model config: {name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ModelFormatError(
                f"model config: {self.n_heads} attention heads are not a multiple of {self.n_kv_heads} KV heads"
            )
        if self.rope_dim % 2 or not 0 < self.rope_dim <= self.head_dim:
            raise ModelFormatError(f"model config: RoPE dimension {self.rope_dim} does not fit head dim {self.head_dim}")
        if not (self.norm_eps > 0 and math.isfinite(self.rope_base) and self.rope_base > 1):
            raise ModelFormatError("model config: norm epsilon and RoPE base must be positive numbers")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ModelFormatError(f"model config: sliding window must be positive, got {self.sliding_window}")
        if not isinstance(self.full_attention_layers, tuple) or not all(
            isinstance(i, int) and 0 <= i < self.n_layers for i in self.full_attention_layers
        ):
            raise ModelFormatError(f"model config: full_attention_layers {self.full_attention_layers!r} are not layer indices")
        if not isinstance(self.no_rope_layers, tuple) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < self.n_layers for i in self.no_rope_layers
        ):
            raise ModelFormatError(f"model config: no_rope_layers {self.no_rope_layers!r} are not layer indices")
        if not isinstance(self.qk_norm, bool):
            raise ModelFormatError(f"model config: qk_norm must be true or false, got {self.qk_norm!r}")

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of one layer, or None where it attends to the whole context."""
        return None if layer in self.full_attention_layers else self.sliding_window

    def layer_uses_rope(self, layer: int) -> bool:
        """Whether one layer rotates its queries and keys (False for SmolLM3's NoPE layers)."""
        return layer not in self.no_rope_layers

    @classmethod
    def from_gguf(cls, metadata: dict[str, Any], tensor_names: set[str] | frozenset[str]) -> ModelArgs:
        """Arch 'llama' or 'smollm3' (Q/K rows permuted by the converter; smollm3 without RoPE in
        every fourth layer), 'qwen2' (not permuted, Q/K/V biases) or 'qwen3' (not permuted, Q/K norms)."""
        check_gguf_hparams(metadata)
        arch = metadata.get("general.architecture")
        if arch not in GGUF_ARCHITECTURES:
            raise ModelFormatError(
                f"architecture {arch!r} is not supported by the native engine yet "
                f"(it runs {', '.join(repr(a) for a in GGUF_ARCHITECTURES)} models)"
            )

        def get(key: str, default: Any = None, kind: type = int) -> Any:
            value = metadata.get(f"{arch}.{key}", default)
            if value is None:
                raise ModelFormatError(f"GGUF metadata lacks '{arch}.{key}'")
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ModelFormatError(f"GGUF metadata '{arch}.{key}' should be an integer, got {value!r}")
            if kind is float and not isinstance(value, (int, float)):
                raise ModelFormatError(f"GGUF metadata '{arch}.{key}' should be a number, got {value!r}")
            return kind(value)

        for key in ("attention.sliding_window", "attention.sliding_window_pattern"):
            if f"{arch}.{key}" in metadata:
                # llama.cpp runs neither arch with a window; neither do we, rather than guess.
                raise ModelFormatError(f"GGUF metadata '{arch}.{key}': sliding-window GGUF models are not supported")
        dim = get("embedding_length")
        n_heads = get("attention.head_count")
        head_dim = get("attention.key_length", dim // n_heads if n_heads else 0)
        tokens = metadata.get("tokenizer.ggml.tokens")
        vocab = get("vocab_size", len(tokens) if isinstance(tokens, list) else None)
        if get("attention.value_length", head_dim) != head_dim:
            raise ModelFormatError(f"GGUF metadata '{arch}.attention.value_length' differs from the key length: not supported")
        n_layers = get("block_count")
        no_rope = ()
        if arch == "smollm3":
            no_rope = tuple(i for i in range(n_layers) if (i + 1) % SMOLLM3_NO_ROPE_INTERVAL == 0)
        return cls(
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=get("attention.head_count_kv", n_heads),
            head_dim=head_dim,
            ffn_dim=get("feed_forward_length"),
            vocab_size=vocab,
            norm_eps=get("attention.layer_norm_rms_epsilon", kind=float),
            rope_base=get("rope.freq_base", 10000.0, kind=float),
            rope_dim=get("rope.dimension_count", head_dim),
            context_length=get("context_length"),
            tied_output="output.weight" not in tensor_names,
            rope_scaling=_gguf_rope_scaling(metadata, arch),
            qkv_bias="blk.0.attn_q.bias" in tensor_names,
            qk_norm=arch == "qwen3",
            no_rope_layers=no_rope,
        )

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelArgs:
        """A Hugging Face config.json (as a dict) of a Llama, Mistral, Qwen2, Qwen3 or SmolLM3 causal LM.

        Reads both the transformers 4.x layout (`rope_theta`, `rope_scaling`) and 5.x
        (`rope_parameters`). Where a key is absent, transformers' default for that family is used.
        The context length is `max_position_embeddings`; with dynamic NTK, `factor` times that
        (running past the trained length is what dynamic scaling is for); with YaRN, the larger
        of it and `original_max_position_embeddings * factor`.
        """
        return _args_from_hf_config(cls, config)


def _gguf_rope_scaling(metadata: dict[str, Any], arch: str) -> RopeScaling | None:
    # Llama 3.1-style scaling is not in the metadata: converters store the per-frequency
    # divisors as the tensor `rope_freqs.weight`, which the model loader applies.
    kind = metadata.get(f"{arch}.rope.scaling.type", "none")
    factor = metadata.get(f"{arch}.rope.scaling.factor", 1.0)
    if kind in ("none", None) or factor in (0, 1, 1.0):
        return None
    original = metadata.get(f"{arch}.rope.scaling.original_context_length", 0)
    if kind == "linear":
        return RopeScaling(kind="linear", factor=float(factor), original_context=int(original))
    if kind == "yarn":
        # llama.cpp's YaRN is transformers' with its defaults (beta 32/1, ramp ends rounded,
        # attention factor 0.1 ln(factor) + 1); refuse the keys that would change it.
        for key in ("attn_factor", "yarn_log_multiplier", "yarn_ext_factor", "yarn_attn_factor",
                    "yarn_beta_fast", "yarn_beta_slow"):
            if f"{arch}.rope.scaling.{key}" in metadata:
                raise ModelFormatError(f"GGUF metadata '{arch}.rope.scaling.{key}' is not supported by the native engine")
        return RopeScaling(kind="yarn", factor=float(factor), original_context=int(original),
                           attention_factor=_yarn_mscale(float(factor)))
    raise ModelFormatError(f"RoPE scaling {kind!r} in GGUF metadata is not supported by the native engine (it runs linear and yarn)")


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _args_from_hf_config(cls: type[ModelArgs], config: dict[str, Any]) -> ModelArgs:
    if not isinstance(config, dict):
        raise ModelFormatError("config.json is not a JSON object")
    architectures = config.get("architectures")
    model_type = config.get("model_type")
    if architectures is not None:
        if not (isinstance(architectures, list) and len(architectures) == 1 and architectures[0] in HF_ARCHITECTURES):
            raise ModelFormatError(
                f"architecture {architectures!r} is not supported by the native engine "
                f"(it runs {', '.join(HF_ARCHITECTURES)})"
            )
        expected = HF_ARCHITECTURES[architectures[0]]
        if model_type is not None and model_type != expected:
            raise ModelFormatError(f"config.json: architecture {architectures[0]} does not match model_type {model_type!r}")
        model_type = expected
    if model_type not in HF_ARCHITECTURES.values():
        raise ModelFormatError(
            f"model_type {model_type!r} is not supported by the native engine (it runs {', '.join(HF_ARCHITECTURES.values())})"
        )

    def integer(key: str, default: Any = ...) -> int:
        value = config.get(key, default)
        if value is ...:
            raise ModelFormatError(f"config.json lacks {key!r}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelFormatError(f"config.json: {key!r} should be an integer, got {value!r}")
        return value

    def number(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ModelFormatError(f"config.json: {key!r} should be a number, got {value!r}")
        return float(value)

    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise ModelFormatError(f"config.json: hidden_act {act!r} is not supported (the engine runs SwiGLU with silu)")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise ModelFormatError(f"config.json: {key} is not supported by the native engine")
    if config.get("quantization_config") is not None:
        method = config["quantization_config"].get("quant_method") if isinstance(config["quantization_config"], dict) else None
        raise ModelFormatError(
            f"config.json: pre-quantized checkpoints (quantization_config, method {method!r}) are not supported; "
            f"use the float checkpoint"
        )

    dim = integer("hidden_size")
    n_layers = integer("num_hidden_layers")
    n_heads = integer("num_attention_heads")
    n_kv_heads = n_heads if config.get("num_key_value_heads") is None else integer("num_key_value_heads")
    # Qwen3's config class defaults head_dim to 128, not hidden_size / heads.
    default_head_dim = 128 if model_type == "qwen3" else (dim // n_heads if n_heads > 0 else 0)
    head_dim = default_head_dim if config.get("head_dim") is None else integer("head_dim")
    max_positions = integer("max_position_embeddings")

    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ModelFormatError(f"config.json: rope_scaling {rope!r} is not an object")
    theta = rope.get("rope_theta", config.get("rope_theta", 2000000.0 if model_type == "smollm3" else 10000.0))
    partial = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ModelFormatError(f"config.json: partial_rotary_factor {partial!r} (partial RoPE) is not supported")
    scaling = _hf_rope_scaling(rope, max_positions, number)
    context = max_positions
    if scaling is not None and scaling.kind == "dynamic":
        # Dynamic NTK exists to run past the trained length: allow `factor` times it.
        context = int(max_positions * scaling.factor)
    elif scaling is not None and scaling.kind == "yarn":
        context = max(max_positions, int(scaling.original_context * scaling.factor))

    no_rope = _hf_no_rope_layers(config, n_layers, integer) if model_type == "smollm3" else ()
    window, full_layers = _hf_sliding_window(config, model_type, n_layers, integer, no_rope)
    return cls(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        ffn_dim=integer("intermediate_size"),
        vocab_size=integer("vocab_size"),
        norm_eps=number("rms_norm_eps", config.get("rms_norm_eps", 1e-6)),
        rope_base=number("rope_theta", theta),
        rope_dim=head_dim,
        context_length=context,
        tied_output=bool(config.get("tie_word_embeddings", False)),
        rope_scaling=scaling,
        qkv_bias=model_type == "qwen2",
        sliding_window=window,
        full_attention_layers=full_layers,
        qk_norm=model_type == "qwen3",
        no_rope_layers=no_rope,
    )


def _hf_no_rope_layers(config: dict[str, Any], n_layers: int, integer) -> tuple[int, ...]:
    """SmolLM3's layers without RoPE. Its config's `no_rope_layers` has one flag per layer,
    1 = uses RoPE, 0 = does not; absent, every `no_rope_layer_interval`-th layer (default 4)
    goes without, as transformers' SmolLM3Config fills it in."""
    flags = config.get("no_rope_layers")
    if flags is None:
        interval = integer("no_rope_layer_interval", SMOLLM3_NO_ROPE_INTERVAL)
        if interval <= 0:
            raise ModelFormatError(f"config.json: no_rope_layer_interval must be positive, got {interval}")
        flags = [int((i + 1) % interval != 0) for i in range(n_layers)]
    if not (isinstance(flags, list) and len(flags) == n_layers
            and all(f in (0, 1) and not isinstance(f, float) for f in flags)):
        raise ModelFormatError(f"config.json: no_rope_layers {flags!r} is not one 0/1 flag per layer (1 = uses RoPE)")
    return tuple(i for i, uses_rope in enumerate(flags) if not uses_rope)


def _hf_rope_scaling(rope: dict[str, Any], max_positions: int, number) -> RopeScaling | None:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind in ("default", None):
        return None
    if kind not in ROPE_SCALING_KINDS:
        raise ModelFormatError(
            f"config.json: RoPE scaling {kind!r} is not supported by the native engine (it runs {', '.join(ROPE_SCALING_KINDS)})"
        )
    original = rope.get("original_max_position_embeddings", max_positions)
    if isinstance(original, bool) or not isinstance(original, int):
        raise ModelFormatError(f"config.json: original_max_position_embeddings should be an integer, got {original!r}")
    factor = rope.get("factor")
    if factor is None and kind == "yarn":
        factor = max_positions / original  # as transformers infers it
    factor = number("rope factor", factor)
    if kind == "linear":
        return RopeScaling(kind="linear", factor=factor)
    if kind == "dynamic":
        return RopeScaling(kind="dynamic", factor=factor, original_context=max_positions)
    if kind == "llama3":
        return RopeScaling(
            kind="llama3", factor=factor, original_context=original,
            low_freq_factor=number("low_freq_factor", rope.get("low_freq_factor")),
            high_freq_factor=number("high_freq_factor", rope.get("high_freq_factor")),
        )
    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(factor, number("mscale", mscale)) / _yarn_mscale(factor, number("mscale_all_dim", mscale_all_dim))
        else:
            attention_factor = _yarn_mscale(factor)
    return RopeScaling(
        kind="yarn", factor=factor, original_context=original,
        attention_factor=number("attention_factor", attention_factor),
        beta_fast=number("beta_fast", rope.get("beta_fast") or 32),
        beta_slow=number("beta_slow", rope.get("beta_slow") or 1),
        truncate=bool(rope.get("truncate", True)),
    )


def _hf_sliding_window(
    config: dict[str, Any], model_type: str, n_layers: int, integer, no_rope: tuple[int, ...] = ()
) -> tuple[int | None, tuple[int, ...]]:
    """(window, layers that ignore it), with transformers' semantics for each family.

    Llama has no window. Mistral applies `sliding_window` (default 4096, null for none) to every
    layer. Qwen2 and Qwen3 apply it only when `use_sliding_window` is true, and then to the layers
    that `layer_types` marks "sliding_attention", or by default to layers from `max_window_layers`
    on. SmolLM3 likewise, its default being its layers without RoPE (`no_rope`).
    """
    if model_type == "llama":
        return None, ()
    if model_type == "mistral":
        window = integer("sliding_window", 4096) if config.get("sliding_window", 4096) is not None else None
        return window, ()
    if not config.get("use_sliding_window", False) or config.get("sliding_window") is None:
        return None, ()
    window = integer("sliding_window")
    layer_types = config.get("layer_types")
    if layer_types is None and model_type == "smollm3":
        layer_types = ["sliding_attention" if i in no_rope else "full_attention" for i in range(n_layers)]
    elif layer_types is None:
        first = integer("max_window_layers", 28)
        layer_types = ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
    if not (isinstance(layer_types, list) and len(layer_types) == n_layers
            and set(layer_types) <= {"sliding_attention", "full_attention"}):
        raise ModelFormatError(f"config.json: layer_types {layer_types!r} is not one attention type per layer")
    full = tuple(i for i, t in enumerate(layer_types) if t == "full_attention")
    return (None, ()) if len(full) == n_layers else (window, full)
