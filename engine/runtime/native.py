"""The native backend: our PyTorch Transformer on CUDA, MPS or CPU."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import RequestError
from ..formats.gguf import read_gguf
from ..model.cache import KVCache, PromptCache
from ..model.config import ModelArgs
from ..model.decoder import Transformer
from ..model.device import pick_device, pick_dtype, release_freed_memory
from ..model.load_gguf import load_gguf_model
from ..model.memory import fit_context
from ..model.packing import can_pack, pack_linears
from .base import Model
from .inspect import attention_row
from .probs import ProbRecorder
from .runner import DecodeRunner
from .sampling import SamplingParams
from .static import default_decode_path
from .static import supports as static_supports

DECODE_PATHS = ("auto", "static", "plain")

if TYPE_CHECKING:
    from ..text.hf_text import HFTextSide
    from .grammar import Constraint


class NativeModel(Model):
    backend = "native"
    records_token_probs = True

    def __init__(
        self,
        path: Path,
        *,
        name: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        context_length: int | None = None,
        pack_weights: bool = True,
        decode: str = "auto",
    ) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        with read_gguf(self.path) as gguf:
            self.metadata = gguf.metadata
            self.args = ModelArgs.from_gguf(gguf.metadata, frozenset(gguf.tensors))
            self._load_text_side(gguf.metadata)  # before the weights: a bad vocabulary fails fast
            context, note = fit_context(self.args, dtype=self.dtype, device=self.device, name=self.name,
                                        context=min(context_length or self.args.context_length, self.args.context_length),
                                        chosen=context_length is not None)
            self.model: Transformer = load_gguf_model(gguf, self.args, dtype=self.dtype, device=self.device)
        self._finish_load(pack_weights, context, decode)
        self.load_notes = (note,) if note else ()

    def _finish_load(self, pack_weights: bool, context_length: int | None, decode: str = "auto") -> None:
        # On CPU, prepacked oneDNN weights decode ~1.3x faster (engine/model/packing.py). The quant
        # command asks for the plain modules, since it swaps them itself.
        if pack_weights and can_pack(self.device, self.dtype):
            pack_linears(self.model)
        if self.device.type == "cpu":
            release_freed_memory()
        self.sampling_defaults = {}
        self.context_length = min(context_length or self.args.context_length, self.args.context_length)
        self.decode_path = decode
        self.retry_in_bfloat16 = True  # a float16 overflow switches to bfloat16 once (base._explain_non_finite)

    @property
    def decode_path(self) -> str:
        """How generation decodes: "static" (fixed-shape KV buckets, CUDA graphs on CUDA:
        engine/runtime/static.py) or "plain" (the decoder over a growing KV cache). "auto", the
        default, is `static.default_decode_path` for the device: static on CUDA and MPS (where a
        new shape every token plans or compiles kernels again), plain on a CPU (measured 3%
        faster there: docs/performance.md); plain for dynamic NTK RoPE, which the static path
        cannot run. `logits` always runs plain."""
        return self._decode_path

    @decode_path.setter
    def decode_path(self, value: str) -> None:
        if value not in DECODE_PATHS:
            raise RequestError(f"decode must be one of {', '.join(DECODE_PATHS)}, got {value!r}")
        if value == "static" and not static_supports(self.args):
            raise RequestError("the static decode path does not run dynamic NTK RoPE; use decode='plain'")
        if value == "auto":
            value = default_decode_path(self.device) if static_supports(self.args) else "plain"
        self._decode_path = value

    @classmethod
    def from_transformer(
        cls,
        model: Transformer,
        metadata: dict | None,
        *,
        path: Path,
        name: str | None = None,
        device: torch.device,
        dtype: torch.dtype,
        context_length: int | None = None,
        text_side: HFTextSide | None = None,
        pack_weights: bool = True,
        decode: str = "auto",
    ) -> NativeModel:
        """Wrap a Transformer built elsewhere (a Hugging Face folder, a quantized checkpoint) with
        its tokenizer and chat template: `text_side` from Hugging Face tokenizer files, else
        GGUF-style `metadata`. Packs any float linears on CPU unless `pack_weights` is False."""
        self = cls.__new__(cls)
        self.path, self.name = Path(path), name or Path(path).name
        self.device, self.dtype = device, dtype
        self.metadata, self.args = metadata or {}, model.args
        if text_side is not None:
            self.tokenizer, self.template = text_side.tokenizer, text_side.template
        else:
            self._load_text_side(self.metadata)
        self.model = model
        self._finish_load(pack_weights, context_length, decode)
        return self

    @classmethod
    def from_hf_folder(
        cls,
        folder: Path,
        *,
        name: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        context_length: int | None = None,
        pack_weights: bool = True,
        decode: str = "auto",
    ) -> NativeModel:
        """A Hugging Face checkpoint folder: config.json, safetensors weights (engine/formats/hf.py)
        and its tokenizer files (engine/text/hf_text.py)."""
        from ..formats.hf_files import generation_defaults
        from ..model.load_hf import load_hf_weights, read_hf_config
        from ..text.hf_text import load_hf_text_side

        device = pick_device(device)
        dtype = pick_dtype(dtype, device)
        args = read_hf_config(folder)
        text_side = load_hf_text_side(folder)  # before the weights: a bad tokenizer fails fast
        context, note = fit_context(args, dtype=dtype, device=device, name=name or Path(folder).name,
                                    context=min(context_length or args.context_length, args.context_length),
                                    chosen=context_length is not None)
        model = load_hf_weights(folder, args, dtype=dtype, device=device)
        self = cls.from_transformer(model, None, path=folder, name=name, device=device, dtype=dtype,
                                    context_length=context, text_side=text_side, pack_weights=pack_weights,
                                    decode=decode)
        self.load_notes = (note,) if note else ()
        self.sampling_defaults = generation_defaults(Path(folder))
        return self

    def new_cache(self, max_seq_len: int) -> KVCache:
        return KVCache(self.args, min(max_seq_len, self.context_length), dtype=self.dtype, device=self.device)

    def fall_back_to_bfloat16(self) -> bool:
        """After a float16 overflow: convert the float16 weights to bfloat16 in place (norms stay
        float32) and drop the runner with its float16 KV storage. False where this run is not
        float16 or `retry_in_bfloat16` is off. CPU prepacked weights are float32/bfloat16 only,
        so a float16 model holds plain tensors here."""
        if self.dtype != torch.float16 or not self.retry_in_bfloat16:
            return False
        with torch.no_grad():
            for tensor in [*self.model.parameters(), *self.model.buffers()]:
                if tensor.dtype == torch.float16:
                    tensor.data = tensor.data.to(torch.bfloat16)
        self.dtype = torch.bfloat16
        self.__dict__.pop("_runner", None)
        return True

    @property
    def runner(self) -> DecodeRunner:
        """The per-token machinery around `self.model`, rebuilt if the model object is replaced
        (quantization tests swap in a copy)."""
        runner = self.__dict__.get("_runner")
        if runner is None or runner.model is not self.model:
            runner = self._runner = DecodeRunner(self.model, device=self.device, dtype=self.dtype)
        return runner

    def clear_cache(self) -> None:
        runner = self.__dict__.get("_runner")
        if runner is not None:
            runner.clear_static()

    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        ids = self.encode_prompt(ids) if len(ids) else []
        if not ids:
            return torch.empty(0, self.args.vocab_size)
        return self.runner.logits(ids, self.new_cache(len(ids)))

    def _token_ids(self, prompt_ids: list[int], params: SamplingParams, cache: PromptCache | None,
                   forced: deque[int] | None = None, record: ProbRecorder | None = None,
                   constraint: Constraint | None = None) -> Iterator[int]:
        if self.decode_path == "static":
            return self.runner.static_token_ids(prompt_ids, params, self.tokenizer.vocab_size,
                                                context_length=self.context_length, cache=cache, forced=forced,
                                                record=record, constraint=constraint)
        return self.runner.plain_token_ids(prompt_ids, params, self.tokenizer.vocab_size,
                                           context_length=self.context_length, cache=cache, forced=forced,
                                           record=record, constraint=constraint)

    def attention(self, ids: Sequence[int], position: int) -> torch.Tensor:
        """What the query at `position` attended to, after softmax: float32 (n_layers, n_heads,
        position + 1) on the CPU, recomputed through an explicit attention path
        (engine/runtime/inspect.py); generation keeps its fused kernels."""
        ids = list(ids)
        if position >= self.context_length:
            raise RequestError(f"position {position} is past the context window of {self.context_length} tokens")
        return attention_row(self.model, ids, position, device=self.device, rope=self.runner.rope)
