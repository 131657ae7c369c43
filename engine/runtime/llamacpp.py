"""The GGUF fast path: llama.cpp (through llama-cpp-python) behind the same Model interface.

Tokenizer, chat template, samplers, stop handling and result events are ours, exactly as on the
native backend; llama.cpp computes the logits. Its context is the KV cache: `llm.input_ids[:n_tokens]`
are the cached positions, and a new prompt reuses the longest common prefix.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import ContextOverflowError, ModelFormatError, RequestError
from ..formats.gguf import read_gguf
from ..model.cache import PromptCache, common_prefix
from ..model.gguf_hparams import check_gguf_hparams
from .base import Model
from .grammar import Constraint, apply_bitmask
from .probs import ProbRecorder
from .sampling import SamplingParams

N_BATCH = 512


THREADS_ENV = "CHATAPP_THREADS"


def pick_threads(requested: int | None = None) -> int:
    """CPU threads for llama.cpp: `requested`, else $CHATAPP_THREADS, else the physical cores,
    less one while other processes keep the machine busy (1-minute load average >= 1).

    llama.cpp's threads spin-wait for each other at every op: with one core taken by someone
    else, all-cores decoding stalls on the slowest thread (0.9 tok/s on 2 busy cores)."""
    if requested is None and os.environ.get(THREADS_ENV, "").strip():
        raw = os.environ[THREADS_ENV].strip()
        try:
            requested = int(raw)
        except ValueError:
            raise RequestError(f"{THREADS_ENV}={raw!r} is not a number of threads (an integer >= 1)") from None
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise RequestError(f"threads must be an integer >= 1, got {requested!r}")
        return requested
    cores = physical_cores()
    try:
        busy = os.getloadavg()[0] >= 1.0
    except OSError:
        busy = False
    return max(1, cores - 1) if busy else cores


def physical_cores() -> int:
    """Physical cores this process may run on (hyperthread siblings counted once)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    pairs, physical = set(), "0"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "physical id":
                    physical = value.strip()
                elif key.strip() == "core id":
                    pairs.add((physical, value.strip()))
    except OSError:
        pass
    return max(1, min(usable, len(pairs) or usable))


@functools.cache
def _llama_class() -> type:
    """llama_cpp.Llama, blind to the file's chat templates.

    Its constructor compiles every `tokenizer.chat_template*` it finds in `self.metadata` with
    its own Jinja environment: a template bomb costs seconds and gigabytes at load, and a broken
    variant we never use raises there. Templates are ours to render (engine/text, sandboxed), so
    this subclass's `metadata` drops those keys as the constructor stores them: nothing global
    is patched, and llama.cpp itself never reads them at load.
    """
    import llama_cpp

    class TemplateBlindLlama(llama_cpp.Llama):
        @property
        def metadata(self) -> dict[str, str]:
            return self._metadata_without_templates

        @metadata.setter
        def metadata(self, value: dict[str, str]) -> None:
            self._metadata_without_templates = {
                k: v for k, v in value.items() if not k.startswith("tokenizer.chat_template")
            }

    return TemplateBlindLlama


class LlamaCppModel(Model):
    backend = "gguf"
    records_token_probs = True

    def __init__(
        self,
        path: Path,
        *,
        name: str | None = None,
        context_length: int | None = None,
        n_threads: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        # Validate with our reader first: a corrupt file gets our typed error, not a crash in C.
        with read_gguf(self.path) as gguf:
            self.metadata = gguf.metadata
        # llama.cpp aborts the process on some hyperparameters it never checks (a block count
        # past 512, an RMS epsilon of NaN): refuse them here, by name.
        check_gguf_hparams(self.metadata, self.path.name)
        self._load_text_side(self.metadata)
        arch = self.metadata.get("general.architecture")
        trained = self.metadata.get(f"{arch}.context_length")
        if not isinstance(trained, int) or trained <= 0:
            raise ModelFormatError(f"{self.path.name}: GGUF metadata lacks '{arch}.context_length'")
        self.context_length = min(context_length or trained, trained)
        threads = pick_threads(n_threads)
        try:
            # verbose=False keeps llama.cpp's own logging out of the user's terminal.
            self.llm = _llama_class()(
                model_path=str(self.path),
                n_ctx=self.context_length,
                n_batch=N_BATCH,
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=False,
                verbose=verbose,
            )
        except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
            raise ModelFormatError(f"{self.path.name}: llama.cpp could not load it ({e})") from None
        self.n_vocab = self.llm.n_vocab()
        self.sampling_defaults = {}

    @property
    def cached_ids(self) -> list[int]:
        return list(self.llm.input_ids[: self.llm.n_tokens])

    def _last_logits(self) -> torch.Tensor:
        # A view of llama.cpp's logits buffer: valid until the next decode, so sample before it.
        pointer = self.llm._ctx.get_logits_ith(-1)
        return torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)))

    def prefill(self, prompt_ids: list[int]) -> int:
        """Bring the context to `prompt_ids`, reusing the cached prefix; returns tokens reused."""
        if len(prompt_ids) >= self.context_length:
            raise ContextOverflowError(f"{len(prompt_ids)} tokens do not fit the context window of {self.context_length}")
        reuse = common_prefix(self.cached_ids, prompt_ids)
        reuse = min(reuse, len(prompt_ids) - 1)  # decode at least one token to get fresh logits
        self.llm.n_tokens = reuse  # eval() drops the cache past n_tokens
        self.llm.eval(prompt_ids[reuse:])
        return reuse

    def _token_ids(self, prompt_ids: list[int], params: SamplingParams, cache: PromptCache | None,
                   forced: deque[int] | None = None, record: ProbRecorder | None = None,
                   constraint: Constraint | None = None) -> Iterator[int]:
        # llama.cpp's context is the cache for every caller: prefix reuse needs no session.
        reused = self.prefill(prompt_ids)
        if cache is not None:
            cache.reused = reused
        sampler, processors = params.sampler(), params.processors()
        history = list(prompt_ids)
        while True:
            forced_token = forced.popleft() if forced else None  # the reasoning budget closes the block
            if forced_token is None or record is not None:
                logits = self._last_logits()
                for process in processors:
                    logits = process(history, logits)
            if forced_token is None:
                mask = constraint.bitmask() if constraint is not None else None
                # the grammar (engine/runtime/grammar.py): disallowed tokens -> -inf
                token = sampler(logits if mask is None else apply_bitmask(logits, mask))
            else:
                token = forced_token
            if record is not None:  # the probabilities the sampler saw (engine/runtime/probs.py)
                record(logits, token)
            if constraint is not None:
                constraint.advance(token)
            yield token
            history.append(token)
            if self.llm.n_tokens >= self.context_length:
                return  # the context window is full
            self.llm.eval([token])

    def clear_cache(self) -> None:
        self.llm.reset()

    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        """All-position logits, asking llama.cpp for an output row at every token of each batch."""
        ids = self.encode_prompt(ids) if len(ids) else []
        out = torch.empty(len(ids), self.n_vocab, dtype=torch.float32)
        self.llm.n_tokens = 0
        self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        for start in range(0, len(ids), N_BATCH):
            chunk = ids[start : start + N_BATCH]
            self.llm._batch.set_batch(batch=chunk, n_past=start, logits_all=True)
            self.llm._ctx.decode(self.llm._batch)
            rows = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(len(chunk), self.n_vocab))
            out[start : start + len(chunk)] = torch.from_numpy(rows)
            self.llm.input_ids[start : start + len(chunk)] = chunk
            self.llm.n_tokens = start + len(chunk)
        return out
