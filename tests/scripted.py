"""A scripted backend for UI-logic tests: the real tokenizer, template and streaming layer of the
default model, with replies taken from a script instead of a network.

It is a real `engine.runtime.base.Model`: chat() renders the real template, counts real tokens,
and streams through the real stop/cancel machinery; only the token ids come from the script.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from engine.formats.gguf import read_gguf
from engine.runtime.base import Model
from engine.runtime.sampling import SamplingParams
from engine.text.template import ChatTemplate
from engine.text.tokenizer import load_tokenizer


class ScriptedModel(Model):
    backend = "scripted"

    def __init__(self, gguf_path, replies: list[str], *, delay: float = 0.0, context_length: int = 8192, tools: bool = True,
                 template: str | None = None) -> None:
        with read_gguf(gguf_path) as f:
            self.tokenizer = load_tokenizer(f.metadata)
        # The default model's template has no tool format; the built-in ChatML one does.
        source = template or (None if tools else f.metadata["tokenizer.chat_template"])
        self.template = ChatTemplate.from_gguf_metadata({"tokenizer.chat_template": source} if source else {}, bos_token="", eos_token="")
        self.name, self.path = "scripted", gguf_path
        self.context_length = context_length
        self.replies = list(replies)
        self.delay = delay
        self.received: list[list[dict]] = []  # the messages of every prompt generated from, in order
        self.sampled_with: list[SamplingParams] = []  # the settings of every generation, in order
        self.constraints: list = []  # the grammar constraint of every generation (None: none), in order
        self.sampling_defaults = {}
        self._encoded: dict[tuple[int, ...], list[dict]] = {}

    def logits(self, ids):
        raise NotImplementedError("the scripted model has no logits")

    def encode_chat(self, messages, *, tools=None, reasoning=None):
        ids = super().encode_chat(messages, tools=tools, reasoning=reasoning)
        self._encoded[tuple(ids)] = [dict(m) for m in messages]  # candidates while fitting the context
        return ids

    def _token_ids(self, prompt_ids: list[int], params: SamplingParams, cache, forced=None,
                   constraint=None) -> Iterator[int]:
        # (a grammar constraint is ignored: the script is the reply)
        self.received.append(self._encoded.get(tuple(prompt_ids), []))
        self.sampled_with.append(params)
        self.constraints.append(constraint)
        self.prompts = [*getattr(self, "prompts", []), self.tokenizer.decode(prompt_ids)]
        reply = self.replies.pop(0) if self.replies else "(no more scripted replies)"
        script = self.tokenizer.encode(reply, add_special=False, parse_special=True)
        while script:
            if forced:  # the reasoning budget closed the block: the script skips to its answer
                while forced:
                    yield forced.popleft()
                answer = reply.partition("</think>")[2].lstrip()
                script = self.tokenizer.encode(answer, add_special=False, parse_special=True)
                continue
            if self.delay:
                time.sleep(self.delay)
            yield script.pop(0)
        yield self.tokenizer.token_to_id("<|im_end|>")
