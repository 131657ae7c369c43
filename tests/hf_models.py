"""Tiny random Llama, Mistral, Qwen2, Qwen3 and SmolLM3 models built with transformers, saved as
Hugging Face safetensors folders, and converted to F32 GGUF the way llama.cpp's
convert_hf_to_gguf.py does."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from tiny_models import SPECIALS, add_tiny_vocabulary, vocabulary

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "smollm3": "SmolLM3ForCausalLM"}
# GGUF architecture per family: llama.cpp's converter writes Mistral as 'llama'.
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "smollm3": "smollm3"}
PERMUTED_ARCHS = ("llama", "smollm3")  # converted by LlamaModel, Q/K rows permuted
VOCAB = len(vocabulary()[0])  # the tiny GGUF vocabulary, so llama.cpp can load the converted files


@dataclass(frozen=True)
class HFTiny:
    family: str  # "llama" | "mistral" | "qwen2" | "qwen3" | "smollm3"
    tied: bool = False
    rope: dict[str, Any] | None = None  # rope_scaling, transformers 4.x style
    rope_theta: float = 10000.0
    max_positions: int = 256
    n_layers: int = 2
    extra: dict[str, Any] = field(default_factory=dict)  # more config keys (sliding window, ...)
    seed: int = 0

    def config(self):
        import transformers

        cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig, "qwen2": transformers.Qwen2Config,
               "qwen3": transformers.Qwen3Config, "smollm3": transformers.SmolLM3Config}
        kwargs = dict(
            hidden_size=64, intermediate_size=96, num_hidden_layers=self.n_layers, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=self.max_positions, rms_norm_eps=1e-5,
            tie_word_embeddings=self.tied, rope_theta=self.rope_theta, **self.extra,
        )
        if self.rope is not None:
            kwargs["rope_scaling"] = dict(self.rope)
        if self.family == "qwen3":
            kwargs.setdefault("head_dim", 16)  # its config class would default to 128
        if self.family == "smollm3":  # its config class's token ids lie outside the tiny vocabulary
            kwargs.update(pad_token_id=None, bos_token_id=None, eos_token_id=None)
        if self.family == "mistral":
            kwargs.setdefault("sliding_window", None)
        config = cls[self.family](**kwargs)
        config.architectures = [ARCHITECTURES[self.family]]
        return config


def build_hf_model(spec: HFTiny):
    """A float32 transformers model with random weights large enough to make attention matter."""
    import transformers

    cls = {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM,
           "qwen2": transformers.Qwen2ForCausalLM, "qwen3": transformers.Qwen3ForCausalLM,
           "smollm3": transformers.SmolLM3ForCausalLM}[spec.family]
    model = cls._from_config(spec.config(), attn_implementation="eager", dtype=torch.float32)
    g = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * noise)
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(0.5 * noise)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                p.copy_(0.3 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.08 * noise)
    return model.eval()


def save_hf_model(model, folder: Path, *, max_shard_size: str | None = None) -> Path:
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(folder, **kwargs)
    return folder


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: each head's halves to adjacent pairs."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(config: dict[str, Any], head_dim: int) -> np.ndarray:
    """convert_hf_to_gguf.py's `rope_freqs.weight` for rope_type llama3."""
    rope = config["rope_parameters"]
    base, factor = rope["rope_theta"], rope["factor"]
    low, high, old = rope["low_freq_factor"], rope["high_freq_factor"], rope["original_max_position_embeddings"]
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def write_gguf_from_hf(model, path: Path) -> Path:
    """An F32 GGUF of a Llama, Qwen2, Qwen3 or SmolLM3 transformers model, as llama.cpp's
    converter writes it: arch 'llama' and 'smollm3' with Q/K rows permuted, 'qwen2' unpermuted
    with Q/K/V biases, 'qwen3' unpermuted with `attn_q_norm`/`attn_k_norm` and its head size as
    the key/value length, llama3 RoPE scaling as the `rope_freqs.weight` tensor, linear and
    yarn as metadata. SmolLM3's layers without RoPE have no GGUF key: llama.cpp assumes every
    fourth, so another pattern is refused here."""
    config = model.config.to_dict()
    family = config["model_type"]
    arch = GGUF_ARCH[family]
    n_heads, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_heads
    if family == "smollm3":
        every_fourth = [int((i + 1) % 4 != 0) for i in range(config["num_hidden_layers"])]
        if config["no_rope_layers"] != every_fourth:
            raise ValueError(f"llama.cpp's smollm3 runs every fourth layer without RoPE, not {config['no_rope_layers']}")
    rope = config.get("rope_parameters") or {}

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-random-{family}")
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    if config.get("head_dim") is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    elif kind not in ("default", "llama3"):
        raise ValueError(f"llama.cpp's converter has no GGUF form for rope_type {kind!r}")
    w.add_vocab_size(config["vocab_size"])
    add_tiny_vocabulary(w)

    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}

    def add(name: str, value: np.ndarray) -> None:
        w.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))

    add("token_embd.weight", state["model.embed_tokens.weight"])
    add("output_norm.weight", state["model.norm.weight"])
    if not config["tie_word_embeddings"]:
        add("output.weight", state["lm_head.weight"])
    if kind == "llama3":
        add("rope_freqs.weight", llama3_rope_factors(config, head_dim))
    for i in range(config["num_hidden_layers"]):
        h, b = f"model.layers.{i}.", f"blk.{i}."
        for ours, theirs, heads in (("attn_q", "q_proj", n_heads), ("attn_k", "k_proj", n_kv), ("attn_v", "v_proj", None)):
            for part in ("weight", "bias"):
                value = state.get(f"{h}self_attn.{theirs}.{part}")
                if value is None:
                    continue
                if arch in PERMUTED_ARCHS and heads is not None:
                    value = llama_cpp_permute(value, heads)
                add(f"{b}{ours}.{part}", value)
        add(b + "attn_output.weight", state[h + "self_attn.o_proj.weight"])
        for ours, theirs in (("attn_q_norm", "q_norm"), ("attn_k_norm", "k_norm")):
            if f"{h}self_attn.{theirs}.weight" in state:
                add(f"{b}{ours}.weight", state[f"{h}self_attn.{theirs}.weight"])
        add(b + "attn_norm.weight", state[h + "input_layernorm.weight"])
        add(b + "ffn_norm.weight", state[h + "post_attention_layernorm.weight"])
        add(b + "ffn_gate.weight", state[h + "mlp.gate_proj.weight"])
        add(b + "ffn_up.weight", state[h + "mlp.up_proj.weight"])
        add(b + "ffn_down.weight", state[h + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_raw_safetensors(path: Path, header: dict[str, Any], data: bytes) -> Path:
    """A safetensors file with exactly this header and data section, valid or not."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tokenizer_files(folder: Path) -> Path:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens, _, merges = vocabulary()
    ids = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=ids, merges=[tuple(m.split(" ")) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML,
        "bos_token": None, "eos_token": "<|im_end|>", "model_max_length": 256,
    }))
    generation = json.loads((folder / "generation_config.json").read_text())
    generation.update(eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], bos_token_id=ids["<|endoftext|>"])
    (folder / "generation_config.json").write_text(json.dumps(generation))
    return folder
