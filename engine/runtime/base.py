"""What every backend shares: chat() on top of a chat template and a raw generate()."""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ContextOverflowError, NumericalError, RequestError
from ..model.cache import PromptCache
from ..results import Event, GenerationResult
from ..text.reasoning import Reasoning, ThinkMarkers, find_markers, starts_inside, with_switch
from ..text.template import ChatTemplate
from ..text.tokenizer import Tokenizer, load_tokenizer
from .generate import stream_text
from .probs import CountedTokens, ProbRecorder, with_token_probs
from .sampling import SamplingParams

if TYPE_CHECKING:
    from .grammar import Constraint


class Model(ABC):
    """A loaded model: tokenizer, chat template, logits and streaming generation."""

    backend: str
    name: str
    path: Path
    tokenizer: Tokenizer
    template: ChatTemplate
    context_length: int
    # Recommended sampling (models.toml, generation_config.json): applied under the caller's
    # explicit arguments in generate()/chat(). Possibly empty; keys as SamplingParams'.
    sampling_defaults: dict[str, float | int]
    # A model served elsewhere (runtime/remote.py): no tokenizer or template here, and its
    # server, not a ChatSession, fits the conversation to the window and keeps the prefix cache.
    is_remote: bool = False
    # Whether generate()/chat() can record per-token probabilities (`token_probs`).
    records_token_probs: bool = False
    # What the load chose that the caller did not ask for (a context shortened to fit memory),
    # one line each, for the app to say.
    load_notes: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        """Where it runs, for a status line: the backend, or a remote model's host."""
        return self.backend

    def _load_text_side(self, metadata: dict) -> None:
        """Tokenizer and chat template from GGUF metadata: the same for every backend."""
        self.tokenizer = load_tokenizer(metadata)
        token_text = lambda t: "" if t is None else self.tokenizer.token_bytes(t).decode("utf-8", "replace")
        self.template = ChatTemplate.from_gguf_metadata(
            metadata, bos_token=token_text(self.tokenizer.bos_id), eos_token=token_text(self.tokenizer.eos_id)
        )

    def clear_cache(self) -> None:
        """Forget what the model's own KV store holds (llama.cpp's context, the native static
        decoder's buckets), so the next prompt is prefilled from its start. Sessions' caches are
        theirs to reset (`ChatSession.reset`)."""

    @abstractmethod
    def logits(self, ids: Sequence[int]):
        """Next-token logits at every position: float32 tensor of shape [len(ids), vocab]."""

    @abstractmethod
    def _token_ids(self, prompt_ids: list[int], params: SamplingParams, cache: PromptCache | None,
                   forced: deque[int] | None = None, record: ProbRecorder | None = None,
                   constraint: Constraint | None = None) -> Iterator[int]:
        """The backend's step generator: prefill `prompt_ids` (reusing what `cache` holds), then
        yield one sampled id at a time. Ids put in `forced` (the reasoning budget's close
        marker) are yielded and fed in place of sampling, oldest first; `record` sees each
        step's logits and token (engine/runtime/probs.py); each draw is made under
        `constraint`'s mask when there is one (engine/runtime/grammar.py) and reported to it.
        The keyword hooks are passed only when set, so a backend may take only what it needs."""

    def sampling_params(self, params: SamplingParams | Mapping[str, Any] | None = None, **overrides: Any) -> SamplingParams:
        """The request's settings, resolved once: SamplingParams' defaults < the model's
        `sampling_defaults` < `params` (a SamplingParams sets every field; a mapping, only its
        own) < keyword `overrides` (SamplingParams fields; None means "not chosen")."""
        return SamplingParams.merged(getattr(self, "sampling_defaults", None), params, overrides)

    def generate(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | Mapping[str, Any] | None = None,
        *,
        should_stop: Callable[[], bool] | None = None,
        cache: PromptCache | None = None,
        reasoning: Reasoning | None = None,
        token_probs: int | None = None,
        stream_probs: bool = False,
        constraint: Constraint | None = None,
        **overrides: Any,
    ) -> Iterator[Event]:
        """Raw completion of `prompt` (text is tokenized with special tokens parsed).

        Yields TextDelta events, then one GenerationResult. `should_stop` is polled between
        tokens; when it returns True generation ends with finish_reason "cancelled". A
        `cache` (from a ChatSession) keeps the KV cache between calls: only the tokens after
        the longest common prefix with the last call are prefilled. Sampling comes from
        `params` and keyword `overrides` (SamplingParams fields, e.g. `max_tokens=8,
        temperature=0`) over the model's `sampling_defaults` (`sampling_params`). A
        `constraint` (engine/runtime/grammar.py) masks every draw.

        `token_probs=K` records each token's probability and the K most likely alternatives
        (engine/runtime/probs.py) into the result's `token_probs`; with `stream_probs=True` each
        delta also carries the rows of its own tokens as it streams.

        For a model that thinks first (`think_markers`), its block streams as ReasoningDelta
        events; `reasoning.budget` closes the block after that many tokens.
        """
        start = time.perf_counter()
        params = self.sampling_params(params, **overrides)
        ids = self.encode_prompt(prompt)
        cache = cache if cache is not None else PromptCache()
        markers = self.think_markers
        budget = reasoning.budget if reasoning is not None and markers is not None else None
        # The budget's hook: ids the step generator feeds before it samples again.
        forced: deque[int] | None = deque() if budget is not None else None
        inside = markers is not None and starts_inside(self.tokenizer.decode(ids[-8:]), markers)
        hooks: dict[str, Any] = {"forced": forced} if forced is not None else {}
        if constraint is not None:
            hooks["constraint"] = constraint
        recorder = None
        if token_probs is not None:
            if not self.records_token_probs:
                raise RequestError(f"{self.name} ({self.where}) does not record token probabilities")
            recorder = hooks["record"] = ProbRecorder(token_probs)
        notes: list[str] = []  # filled if the run had to change (see _explain_non_finite)
        tokens = CountedTokens(
            _explain_non_finite(lambda: self._token_ids(ids, params, cache, **hooks), self, cache, notes))
        events = stream_text(
            tokens,
            self.tokenizer,
            prompt_tokens=len(ids),
            max_tokens=params.max_tokens,
            stop=params.stop,
            should_stop=should_stop,
            start_time=start,
            markers=markers,
            inside=inside,
            budget=budget,
            forced=forced,
        )
        if recorder is not None:
            events = with_token_probs(events, recorder, self.tokenizer, tokens if stream_probs else None)
        return _with_cache_count(events, cache, notes)

    def attention(self, ids: Sequence[int], position: int):
        """What the query at `position` attended to, after softmax: float32 tensor of shape
        [n_layers, n_heads, position + 1]. Only the native engine computes it."""
        raise RequestError(f"the attention view needs the native engine; {self.name} runs on {self.where} "
                           "(load it with the native backend)")

    @property
    def think_markers(self) -> ThinkMarkers | None:
        """The reasoning block this model writes (`<think>`…`</think>`), from its tokenizer and
        chat template; None for models that answer straight away."""
        if "_think_markers" not in self.__dict__:
            self._think_markers = find_markers(self.template.source or "", self.tokenizer.token_to_id)
        return self._think_markers

    @property
    def thinking_switch(self) -> str | None:
        """How thinking is turned on/off: "enable_thinking" (a template variable), "/no_think"
        (a switch in the system message), or None where the template offers neither."""
        source = self.template.source or ""
        if "enable_thinking" in source:
            return "enable_thinking"
        return "/no_think" if "/no_think" in source else None

    def render_chat(self, messages: list[dict], *, tools: list[dict] | None = None,
                    reasoning: Reasoning | None = None) -> str:
        thinking = reasoning.thinking if reasoning is not None else None
        switch = self.thinking_switch if thinking is not None else None
        if switch == "enable_thinking":
            return self.template.render(messages, add_generation_prompt=True, tools=tools, enable_thinking=thinking)
        if switch == "/no_think":
            messages = with_switch(messages, thinking)
        return self.template.render(messages, add_generation_prompt=True, tools=tools)

    def encode_chat(self, messages: list[dict], *, tools: list[dict] | None = None,
                    reasoning: Reasoning | None = None) -> list[int]:
        """The token ids of the rendered chat prompt (what chat() would prefill).

        Templates that write `{{ bos_token }}` themselves (Llama 2, Llama 3, Mistral) would get a
        second BOS from a vocabulary that adds one, so the rendered BOS text is dropped first, as
        llama.cpp's common/chat.cpp does (and a trailing EOS text where the vocabulary adds EOS).
        """
        text = self.render_chat(messages, tools=tools, reasoning=reasoning)
        tok = self.tokenizer
        # The texts the template renders for `bos_token` / `eos_token`, set once at load.
        bos, eos = self.template.bos_token, self.template.eos_token
        if tok.add_bos and tok.bos_id is not None and bos and text.startswith(bos):
            text = text[len(bos):]
        if tok.add_eos and tok.eos_id is not None and eos and text.endswith(eos):
            text = text[: -len(eos)]
        return tok.encode(text, add_special=True, parse_special=True)

    def count_prompt_tokens(self, messages: list[dict], *, tools: list[dict] | None = None) -> int:
        return len(self.encode_chat(messages, tools=tools))

    @property
    def supports_tools(self) -> bool:
        """Whether the chat template renders a `tools` list (else tool schemas would be dropped)."""
        return "tools" in self.template.source

    def chat(
        self,
        messages: list[dict],
        params: SamplingParams | Mapping[str, Any] | None = None,
        *,
        tools: list[dict] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        response_format: Mapping[str, Any] | None = None,
        should_stop: Callable[[], bool] | None = None,
        cache: PromptCache | None = None,
        reasoning: Reasoning | None = None,
        token_probs: int | None = None,
        stream_probs: bool = False,
        **overrides: Any,
    ) -> Iterator[Event]:
        """OpenAI-style messages in; TextDelta (and ReasoningDelta) events out, then one
        GenerationResult. Sampling as in `generate`; `reasoning` turns thinking on/off and
        limits it. A message's stored reasoning is never part of what the model is sent.
        `tool_choice` ("none", "auto", "required" or {"type": "function", "function": {"name":
        ...}}) and `response_format` ({"type": "json_object"} or {"type": "json_schema",
        "json_schema": {"schema": ...}}) constrain the reply with a grammar
        (`engine.runtime.grammar.chat_constraint`)."""
        tools, constraint = self.constrain(tools, tool_choice, response_format)
        return self.generate(self.encode_chat(messages, tools=tools, reasoning=reasoning), params,
                             should_stop=should_stop, cache=cache, reasoning=reasoning,
                             token_probs=token_probs, stream_probs=stream_probs, constraint=constraint,
                             **overrides)

    def constrain(self, tools: list[dict] | None, tool_choice: Any = None,
                  response_format: Any = None) -> tuple[list[dict] | None, Constraint | None]:
        """(the tools the template shows, the grammar constraint or None) of a chat request;
        RequestError for a bad tool_choice or response_format."""
        if tool_choice is None and response_format is None and not tools:
            return tools, None
        from .grammar import chat_constraint

        return chat_constraint(self.tokenizer, self.template, tools, tool_choice, response_format)

    def encode_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special=True, parse_special=True)
        else:
            ids = list(prompt)
        if not ids:
            raise RequestError("the prompt is empty")
        if len(ids) >= self.context_length:
            raise ContextOverflowError(
                f"the prompt is {len(ids)} tokens, but the context window of {self.name} is "
                f"{self.context_length} tokens: shorten it, or start a new conversation"
            )
        return ids


def non_finite_cause(model: Model) -> str:
    """What NaN/Inf logits mean for this model: float16 overflow only where the run is float16."""
    dtype = str(getattr(model, "dtype", "")).removeprefix("torch.")
    where = f"{model.name}: non-finite logits (NaN/Inf)"
    if model.backend == "gguf":
        return (f"{where} from llama.cpp: the model's weights hold NaN/Inf or values its kernels overflow on; "
                "the file is probably damaged (re-download or re-convert it)")
    if dtype == "float32":
        return (f"{where} in a float32 run: the model's weights hold NaN/Inf (float32 does not overflow "
                "on sane weights); the file is probably damaged (re-download or re-convert it)")
    if dtype == "float16":
        return f"{where} in a float16 run: float16 overflow; run it with --dtype bfloat16 (or float32)"
    return (f"{where} in a {dtype} run; try --dtype float32, and if that fails too the weights hold NaN/Inf")


def _explain_non_finite(make_token_ids: Callable[[], Iterator[int]], model: Model, cache: PromptCache,
                        notes: list[str]) -> Iterator[int]:
    """The step generator, with non-finite logits explained by the run (the sampler sees logits,
    not the run). A float16 run that overflows before its first token is switched to bfloat16
    (same range as float32) and started again, once; `notes` says so."""
    started = False
    try:
        for token in make_token_ids():
            started = True
            yield token
    except NumericalError:
        fall_back = getattr(model, "fall_back_to_bfloat16", None)
        if started or fall_back is None or not fall_back():
            raise NumericalError(non_finite_cause(model)) from None
        notes.append(f"{model.name}: float16 overflowed (non-finite logits); switched the model to bfloat16 "
                     "and answered again (load it with --dtype bfloat16 to skip this)")
        cache.ids, cache.kv, cache.reused = [], None, 0  # the cache held float16 keys and values
        yield from _explain_non_finite(make_token_ids, model, cache, notes)


def _with_cache_count(events: Iterator[Event], cache: PromptCache, notes: list[str]) -> Iterator[Event]:
    for event in events:
        if isinstance(event, GenerationResult):
            event = dataclasses.replace(event, cached_tokens=cache.reused, notes=tuple(notes))
        yield event
