"""A chat session: one conversation's KV cache kept across turns, and the context-window policy.

Turn N prefills only the tokens after the longest common prefix with what turn N-1 left in the
cache, so regenerate and edit trim the cache back instead of starting over. Before a turn would
overflow the window, the oldest turns are dropped (the system prompt stays) and the result says
how many messages were left out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..errors import RequestError
from ..model.cache import PromptCache
from ..results import Event, GenerationResult
from ..text.reasoning import Reasoning
from .base import Model
from .context import fit_to_context
from .sampling import SamplingParams


class ChatSession:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.cache = PromptCache()

    def chat(
        self,
        messages: list[dict],
        params: SamplingParams | Mapping[str, Any] | None = None,
        *,
        tools: list[dict] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        response_format: Mapping[str, Any] | None = None,
        should_stop: Callable[[], bool] | None = None,
        reasoning: Reasoning | None = None,
        token_probs: int | None = None,
        **overrides: Any,
    ) -> Iterator[Event]:
        """Like Model.chat (tool_choice and response_format too), with prefix reuse and the
        overflow policy; ContextOverflowError when the newest message alone does not fit.
        `token_probs` as in Model.generate."""
        model = self.model
        if token_probs is not None and not model.records_token_probs:
            raise RequestError(f"{model.name} ({model.where}) does not record token probabilities")
        if model.is_remote:  # its server renders, counts and caches the prompt
            yield from model.chat(messages, params, tools=tools, tool_choice=tool_choice,
                                  response_format=response_format, should_stop=should_stop,
                                  reasoning=reasoning, token_probs=token_probs, **overrides)
            return
        tools, constraint = model.constrain(tools, tool_choice, response_format)
        params = model.sampling_params(params, **overrides)
        fitted = fit_to_context(
            messages,
            lambda msgs: model.encode_chat(msgs, tools=tools, reasoning=reasoning),
            context_length=model.context_length,
            reply_tokens=params.max_tokens,
        )
        room = model.context_length - fitted.prompt_tokens
        params = dataclasses.replace(params, max_tokens=max(1, min(params.max_tokens, room)))
        events = model.generate(fitted.ids, params, should_stop=should_stop, cache=self.cache, reasoning=reasoning,
                                token_probs=token_probs, constraint=constraint)
        for event in events:
            if isinstance(event, GenerationResult):
                event = dataclasses.replace(event, dropped_messages=fitted.dropped)
            yield event

    def reset(self) -> None:
        """Forget the cached tokens (the storage is kept for the next turn)."""
        self.cache.ids, self.cache.reused = [], 0
        if self.cache.kv is not None:
            self.cache.kv.reset()
