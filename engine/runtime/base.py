"""What every backend shares: chat() on top of a chat template and a raw generate()."""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ContextOverflowError, RequestError
from ..model.cache import PromptCache
from ..results import Event, GenerationResult
from ..text.template import ChatTemplate
from ..text.tokenizer import Tokenizer, load_tokenizer
from .generate import stream_text
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

    @abstractmethod
    def logits(self, ids: Sequence[int]):
        """Next-token logits at every position: float32 tensor of shape [len(ids), vocab]."""

    @abstractmethod
    def _token_ids(self, prompt_ids: list[int], params: SamplingParams, cache: PromptCache | None,
                   constraint: Constraint | None = None) -> Iterator[int]:
        """The backend's step generator: prefill `prompt_ids` (reusing what `cache` holds), then
        yield one sampled id at a time, each drawn under `constraint`'s mask when there is one
        (engine/runtime/grammar.py) and reported to it."""

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
        """
        start = time.perf_counter()
        params = self.sampling_params(params, **overrides)
        ids = self.encode_prompt(prompt)
        cache = cache if cache is not None else PromptCache()
        # (a backend written before constraints takes three arguments: pass one only when set)
        tokens = (self._token_ids(ids, params, cache) if constraint is None
                  else self._token_ids(ids, params, cache, constraint))
        events = stream_text(
            tokens,
            self.tokenizer,
            prompt_tokens=len(ids),
            max_tokens=params.max_tokens,
            stop=params.stop,
            should_stop=should_stop,
            start_time=start,
        )
        return _with_cache_count(events, cache)

    def render_chat(self, messages: list[dict], *, tools: list[dict] | None = None) -> str:
        return self.template.render(messages, add_generation_prompt=True, tools=tools)

    def encode_chat(self, messages: list[dict], *, tools: list[dict] | None = None) -> list[int]:
        """The token ids of the rendered chat prompt (what chat() would prefill).

        Templates that write `{{ bos_token }}` themselves (Llama 2, Llama 3, Mistral) would get a
        second BOS from a vocabulary that adds one, so the rendered BOS text is dropped first, as
        llama.cpp's common/chat.cpp does (and a trailing EOS text where the vocabulary adds EOS).
        """
        text = self.render_chat(messages, tools=tools)
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
        **overrides: Any,
    ) -> Iterator[Event]:
        """OpenAI-style messages in; TextDelta events out, then one GenerationResult. Sampling
        as in `generate`. `tool_choice` ("none", "auto", "required" or {"type": "function",
        "function": {"name": ...}}) and `response_format` ({"type": "json_object"} or
        {"type": "json_schema", "json_schema": {"schema": ...}}) constrain the reply with a
        grammar (`engine.runtime.grammar.chat_constraint`)."""
        tools, constraint = self.constrain(tools, tool_choice, response_format)
        return self.generate(self.encode_chat(messages, tools=tools), params, should_stop=should_stop, cache=cache,
                             constraint=constraint, **overrides)

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


def _with_cache_count(events: Iterator[Event], cache: PromptCache) -> Iterator[Event]:
    for event in events:
        yield dataclasses.replace(event, cached_tokens=cache.reused) if isinstance(event, GenerationResult) else event
