"""What every backend shares: chat() on top of a chat template and a raw generate()."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..errors import ContextOverflowError
from ..results import Event
from ..template import ChatTemplate
from ..tokenizer import BPETokenizer


class Model(ABC):
    """A loaded model: tokenizer, chat template, logits and streaming generation."""

    backend: str
    name: str
    path: Path
    tokenizer: BPETokenizer
    template: ChatTemplate
    context_length: int

    @abstractmethod
    def logits(self, ids: Sequence[int]):
        """Next-token logits at every position: float32 tensor of shape [len(ids), vocab]."""

    @abstractmethod
    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = 512,
        temperature: float = 0.7,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[Event]:
        """Raw completion of `prompt` (text is tokenized with special tokens parsed)."""

    def render_chat(self, messages: list[dict], *, tools: list[dict] | None = None) -> str:
        return self.template.render(messages, add_generation_prompt=True, tools=tools)

    def chat(self, messages: list[dict], *, tools: list[dict] | None = None, **sampling) -> Iterator[Event]:
        """OpenAI-style messages in; TextDelta events out, then one GenerationResult."""
        return self.generate(self.render_chat(messages, tools=tools), **sampling)

    def encode_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special=True, parse_special=True)
        else:
            ids = list(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.context_length:
            raise ContextOverflowError(
                f"the prompt is {len(ids)} tokens, but the context window of {self.name} is "
                f"{self.context_length} tokens: shorten it, or start a new conversation"
            )
        return ids
