"""The OpenAI response shapes built from our events, and the tool-call holdback of a stream.

A streamed reply that may contain a tool call is sent as text only up to where a call could
begin (a `<tool_call>` tag, `<|python_tag|>`, or a reply that opens with JSON); the rest waits
for the end, where the existing parsers (engine.parse_tool_calls) split it into text and
OpenAI `tool_calls`.
"""

from __future__ import annotations

import secrets
import time

from engine import GenerationResult, parse_tool_calls

_MARKERS = ("<tool_call>", "<|python_tag|>")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(result: GenerationResult) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }


def finish_reason(result: GenerationResult, calls: list) -> str:
    if calls:
        return "tool_calls"
    return "length" if result.finish_reason == "length" else "stop"


def sendable(text: str) -> int:
    """How many characters of a reply that may hold tool calls can be streamed now."""
    if not text.strip() or text.lstrip().startswith(("{", "[")):
        return 0
    starts = [i for i in (text.find(m) for m in _MARKERS) if i >= 0]
    if starts:
        return min(starts)
    for n in range(min(len(text), max(map(len, _MARKERS)) - 1), 0, -1):  # a marker's first characters
        if any(m.startswith(text[-n:]) for m in _MARKERS):
            return len(text) - n
    return len(text)


class ToolReply:
    """The reply split into content and calls, once the text is complete."""

    def __init__(self, text: str, tools: list[dict] | None) -> None:
        self.calls, self.content = [], text
        if tools:
            parsed = parse_tool_calls(text, [t["function"]["name"] for t in tools])
            if parsed.tool_calls:
                self.calls, self.content = parsed.tool_calls, parsed.content

    def rest_after(self, sent: str) -> str:
        """What is left to stream after `sent`, the text already streamed."""
        if not self.calls:
            return self.content[len(sent):]
        rest = self.content[len(sent.strip()):] if self.content.startswith(sent.strip()) else ""
        return rest if rest.strip() else ""


def chat_message(reply: ToolReply) -> dict:
    message: dict = {"role": "assistant", "content": reply.content if (reply.content or not reply.calls) else None}
    if reply.calls:
        message["tool_calls"] = [c.to_openai() for c in reply.calls]
    return message


def chat_response(request_model: str, reply: ToolReply, result: GenerationResult, logprobs: dict | None = None) -> dict:
    message = chat_message(reply)
    if result.reasoning:  # the reply's thinking, apart from its content
        message["reasoning_content"] = result.reasoning
    return {
        "id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": request_model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(result, reply.calls),
                     "logprobs": logprobs}],
        "usage": usage(result),
    }


def completion_response(request_model: str, result: GenerationResult, text: str | None = None,
                        logprobs: dict | None = None) -> dict:
    """`text`: what was streamed, where it differs from result.text (a think block kept in it)."""
    return {
        "id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": request_model,
        "choices": [{"index": 0, "text": result.text if text is None else text, "finish_reason": finish_reason(result, []),
                     "logprobs": logprobs}],
        "usage": usage(result),
    }


class ChunkWriter:
    """Chunks of one streamed response: same id, model and creation time on each."""

    def __init__(self, request_model: str, kind: str) -> None:
        self.kind = kind  # "chat" or "completion"
        self.base = {"id": new_id("chatcmpl" if kind == "chat" else "cmpl"),
                     "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                     "created": int(time.time()), "model": request_model}

    def choice(self, *, text: str | None = None, delta: dict | None = None, finish: str | None = None,
               logprobs: dict | None = None) -> dict:
        if self.kind == "chat":
            body = {"index": 0, "delta": delta if delta is not None else {"content": text}, "finish_reason": finish,
                    "logprobs": logprobs}
        else:
            body = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": logprobs}
        return {**self.base, "choices": [body]}

    def usage(self, result: GenerationResult) -> dict:
        return {**self.base, "choices": [], "usage": usage(result)}

    def tool_calls(self, calls: list, logprobs: dict | None = None) -> dict:
        deltas = [{"index": i, **c.to_openai()} for i, c in enumerate(calls)]
        return self.choice(delta={"tool_calls": deltas}, logprobs=logprobs)
