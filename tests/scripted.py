"""A scripted backend for UI-logic tests: the real tokenizer, template and streaming layer of the
default model, with replies taken from a script instead of a network.

It is a real `engine.backends.base.Model`: chat() renders the real template, counts real tokens,
and streams through the real stop/cancel machinery; only the token ids come from the script.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from engine.backends.base import Model
from engine.formats.gguf import read_gguf
from engine.sampling import SamplingParams
from engine.template import ChatTemplate
from engine.tokenizer import load_tokenizer


class ScriptedModel(Model):
    backend = "scripted"

    def __init__(self, gguf_path, replies: list[str], *, delay: float = 0.0, context_length: int = 8192, tools: bool = True) -> None:
        with read_gguf(gguf_path) as f:
            self.tokenizer = load_tokenizer(f.metadata)
        # The default model's template has no tool format; the built-in ChatML one does.
        source = None if tools else f.metadata["tokenizer.chat_template"]
        self.template = ChatTemplate.from_gguf_metadata({"tokenizer.chat_template": source} if source else {}, bos_token="", eos_token="")
        self.name, self.path = "scripted", gguf_path
        self.context_length = context_length
        self.replies = list(replies)
        self.delay = delay
        self.received: list[list[dict]] = []  # the messages of every rendered prompt, in order

    def logits(self, ids):
        raise NotImplementedError("the scripted model has no logits")

    def count_prompt_tokens(self, messages, *, tools=None):
        # Counting renders too; only the prompt actually sent is recorded in `received`.
        prompt = self.template.render(messages, add_generation_prompt=True, tools=tools)
        return len(self.tokenizer.encode(prompt, add_special=True, parse_special=True))

    def render_chat(self, messages, *, tools=None):
        self.received.append([dict(m) for m in messages])
        return super().render_chat(messages, tools=tools)

    def _token_ids(self, prompt_ids: list[int], params: SamplingParams, cache) -> Iterator[int]:
        reply = self.replies.pop(0) if self.replies else "(no more scripted replies)"
        for token in self.tokenizer.encode(reply, add_special=False, parse_special=True):
            if self.delay:
                time.sleep(self.delay)
            yield token
        yield self.tokenizer.token_to_id("<|im_end|>")
