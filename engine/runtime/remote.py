"""A model served elsewhere, over the OpenAI chat-completions API (vLLM, SGLang, llama-server,
Ollama, LM Studio, `chatapp serve`): the same `Model` interface and the same events as a local one.

The official `openai` client does the HTTP and the server-sent events; this module maps its
chunks onto TextDelta / GenerationResult and every way the exchange can fail onto one
RemoteError whose message names the host and what to check. Nothing here has a tokenizer: the
server renders the template and counts the tokens, so token-level calls (logits, encode_chat)
are refused with a clear error.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..errors import RemoteError, RequestError
from ..model.cache import PromptCache
from ..results import Event, GenerationResult, ReasoningDelta, TextDelta
from ..text.toolcalls import CLOSE_TAG, OPEN_TAG, ToolCall
from .base import Model
from .probs import checked_top
from .remote_logprobs import LEGACY_TOP, ReplyRows
from .sampling import SamplingParams

CONNECT_TIMEOUT = 5.0  # seconds to open a connection: an unreachable host fails fast
READ_TIMEOUT = 300.0  # seconds between two pieces of a reply (a long prompt's prefill comes first)

# OpenAI's finish reasons -> ours ("tool_calls" ends the reply as an end-of-turn token would).
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "stop", "function_call": "stop", "content_filter": "stop"}


class RemoteModel(Model):
    """`spec`-less construction is for tests and scripts; engine.load builds it from models.toml."""

    backend = "remote"
    is_remote = True
    # Asked of the server as OpenAI `logprobs` (runtime/remote_logprobs.py): a server that ignores the
    # field gives a reply without them, never an error.
    records_token_probs = True

    def __init__(self, base_url: str, model: str, *, name: str | None = None, api_key: str | None = None,
                 api_key_env: str | None = None, timeout: float = READ_TIMEOUT,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        import openai

        self.base_url, self.remote_model = base_url.rstrip("/"), model
        self.name = name or model
        self.host = urlsplit(base_url).netloc or base_url
        self.api_key_env = api_key_env
        if api_key is None and api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise RemoteError(f"model {self.name!r}: the environment variable {api_key_env} (api_key_env in "
                                  f"models.toml) is not set: export it with the key of the server at {self.host}")
        # Servers without keys still need a non-empty value in the header the client sends.
        self._client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "none", max_retries=0,
                                     timeout=openai.Timeout(timeout, connect=connect_timeout))
        self.sampling_defaults = {}
        self.context_length = self._check_server()

    @property
    def where(self) -> str:
        return f"remote · {self.host}"

    @property
    def supports_tools(self) -> bool:
        return True  # the server renders the tools with its own template

    # ---- what a remote model cannot do -------------------------------------------------------

    def logits(self, ids: Sequence[int]):
        raise RequestError(f"logits are not available on a remote model ({self.name} at {self.host}): "
                           "use a local model for perplexity and logits")

    def _token_ids(self, prompt_ids, params, cache):  # pragma: no cover - chat/generate are overridden
        raise RequestError(f"token-level generation is not available on a remote model ({self.name} at {self.host})")

    def encode_chat(self, messages: list[dict], *, tools: list[dict] | None = None, reasoning=None) -> list[int]:
        raise RequestError(f"token counts are not available on a remote model ({self.name} at {self.host}): "
                           "its server renders and counts the prompt")

    def render_chat(self, messages: list[dict], *, tools: list[dict] | None = None, reasoning=None) -> str:
        raise RequestError(f"the chat template of a remote model ({self.name} at {self.host}) stays on its server")

    # ---- generation --------------------------------------------------------------------------

    def chat(self, messages: list[dict], params: SamplingParams | Mapping[str, Any] | None = None, *,
             tools: list[dict] | None = None, tool_choice: Any = None, response_format: Any = None,
             should_stop: Callable[[], bool] | None = None,
             cache: PromptCache | None = None, reasoning=None, token_probs: int | None = None,
             stream_probs: bool = False, **overrides: Any) -> Iterator[Event]:
        """Streams `POST /chat/completions`. The server keeps its own prefix cache (`cache` is
        accepted for the interface and unused). `reasoning` goes as the fields vLLM, SGLang and
        `chatapp serve` read: `chat_template_kwargs.enable_thinking` and `thinking_budget`; the
        server's `reasoning_content` (or `reasoning`) deltas come back as ReasoningDelta.
        tool_choice and response_format go to the server as they are. `token_probs=K` asks for
        `logprobs: true, top_logprobs: K` and fills the result's `token_probs` from the reply
        (the tokens the server reports: ours and OpenAI's leave the end token out)."""
        request = self._request(params, overrides)
        if token_probs is not None:
            request.update(logprobs=True, top_logprobs=checked_top(token_probs))
        if tools:
            request["tools"] = tools
        if tool_choice is not None and tools:
            request["tool_choice"] = tool_choice
        if response_format is not None:
            request["response_format"] = response_format
        extra = _reasoning_fields(reasoning)
        if extra:
            request["extra_body"] = extra
        return self._stream("chat", dict(messages=messages, **request), should_stop, stream_probs)

    def generate(self, prompt: str | Sequence[int], params: SamplingParams | Mapping[str, Any] | None = None, *,
                 should_stop: Callable[[], bool] | None = None, cache: PromptCache | None = None,
                 token_probs: int | None = None, stream_probs: bool = False, **overrides: Any) -> Iterator[Event]:
        """Streams `POST /completions` (raw text in, text out); `token_probs=K` asks for the legacy
        `logprobs: K` (at most 5 alternatives there, OpenAI's limit; no token ids)."""
        if not isinstance(prompt, str):
            raise RequestError(f"a remote model ({self.name} at {self.host}) takes a text prompt, not token ids")
        if not prompt:
            raise RequestError("the prompt is empty")
        request = self._request(params, overrides)
        if token_probs is not None:
            request["logprobs"] = min(checked_top(token_probs), LEGACY_TOP)
        return self._stream("completion", dict(prompt=prompt, **request), should_stop, stream_probs)

    def _request(self, params, overrides) -> dict:
        p = self.sampling_params(params, **overrides)
        # The OpenAI fields only: top_k, min_p and the repetition penalty are not part of the API,
        # and strict servers refuse unknown fields.
        request = dict(model=self.remote_model, max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p,
                       stream=True, stream_options={"include_usage": True})
        if p.stop:
            request["stop"] = list(p.stop)
        if p.seed is not None:
            request["seed"] = p.seed
        return request

    def _stream(self, kind: str, request: dict, should_stop: Callable[[], bool] | None,
                stream_probs: bool = False) -> Iterator[Event]:
        start = time.perf_counter()
        first = None
        text, thought, finish, usage = "", "", None, None
        calls: dict[int, dict] = {}  # tool_calls deltas by index: id, name, arguments text
        pieces, thought_pieces = 0, 0
        rows = ReplyRows(kind)
        create = self._client.chat.completions.create if kind == "chat" else self._client.completions.create
        with self._errors("the request"):
            stream = create(**request)
        try:
            with self._errors("the reply stream"):
                for chunk in stream:
                    if should_stop is not None and should_stop():
                        finish = "cancelled"
                        break
                    choices = getattr(chunk, "choices", None)
                    if not isinstance(choices, list):
                        raise RemoteError(f"{self.host} sent a malformed stream (a chunk without 'choices'): "
                                          "is base_url an OpenAI-compatible endpoint (usually ending in /v1)?")
                    if getattr(chunk, "usage", None) is not None:
                        usage = chunk.usage
                    for choice in choices:
                        rows.read(choice)
                        thinking = _choice_reasoning(choice) if kind == "chat" else ""
                        if thinking:
                            first = first or time.perf_counter()
                            thought += thinking
                            thought_pieces += 1
                            yield ReasoningDelta(thinking, rows.take() if stream_probs else ())
                        piece = _choice_text(choice, kind, calls, self.host)
                        if piece:
                            first = first or time.perf_counter()
                            text += piece
                            pieces += 1
                            yield TextDelta(piece, rows.take() if stream_probs else ())
                        if getattr(choice, "finish_reason", None):
                            finish = _FINISH.get(choice.finish_reason, "stop")
        finally:
            stream.close()  # closing the connection is how a server learns to stop generating
        if finish is None:
            raise RemoteError(f"the stream from {self.host} ended without a finish reason (the server stopped "
                              "mid-reply?): the partial reply is kept")
        tool_calls, unparsed = _tool_calls(calls)
        if unparsed:  # left as text, where the caller's parser reports what is wrong with it
            text += unparsed
            yield TextDelta(unparsed)
        end = time.perf_counter()
        first = first or end
        details = getattr(usage, "prompt_tokens_details", None)
        spent = getattr(getattr(usage, "completion_tokens_details", None), "reasoning_tokens", None)
        yield GenerationResult(
            text=text, finish_reason=finish,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or pieces + thought_pieces),
            prompt_seconds=first - start, generation_seconds=end - first,
            cached_tokens=int(getattr(details, "cached_tokens", 0) or 0),
            tool_calls=tuple(tool_calls),
            reasoning=thought,
            # the server's count where it gives one, else one token per streamed piece
            reasoning_tokens=spent if isinstance(spent, int) and spent > 0 else thought_pieces,
            token_probs=rows.all(),
        )

    # ---- the server --------------------------------------------------------------------------

    def _check_server(self) -> int:
        """Reach the server once at load (a wrong host or key fails here, not mid-conversation);
        the context window, where the server says it (vLLM's max_model_len), else 0: unknown."""
        with self._errors("the model list"):
            listed = self._client.models.list()
            entries = list(getattr(listed, "data", None) or [])
        ids = [getattr(e, "id", None) for e in entries]
        if ids and self.remote_model not in ids:
            raise RemoteError(f"{self.host} does not serve a model named {self.remote_model!r} (it serves: "
                              f"{', '.join(map(str, ids))}): fix 'model' in models.toml")
        for e in entries:
            if getattr(e, "id", None) == self.remote_model:
                extra = getattr(e, "model_extra", None) or {}
                for key in ("max_model_len", "context_length"):
                    if isinstance(extra.get(key), int) and extra[key] > 0:
                        return extra[key]
        return 0

    def _errors(self, what: str):
        return _RemoteErrors(self, what)


class _RemoteErrors:
    """Every failure of an exchange with the server -> one RemoteError line naming the host."""

    def __init__(self, model: RemoteModel, what: str) -> None:
        self.model, self.what = model, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, tb) -> bool:
        if error is None or isinstance(error, (RemoteError, GeneratorExit)) or not isinstance(error, Exception):
            return False
        raise RemoteError(self._message(error)) from error

    def _message(self, e: Exception) -> str:
        import openai

        host, m = self.model.host, self.model
        detail = _api_message(e)
        if isinstance(e, openai.APITimeoutError):
            return f"{host} did not answer in time ({self.what}): is the server overloaded or stuck?"
        if isinstance(e, openai.APIConnectionError) and self.what == "the reply stream":  # the server died mid-reply
            return f"the connection to {host} broke during the reply ({e.__cause__ or e}): the partial reply is kept"
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e.__context__
            why = f": {cause}" if cause else ""
            return f"cannot reach {host} ({m.base_url}){why}: is the server running, and is base_url right?"
        if isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError)):
            fix = f"set {m.api_key_env} to the server's key" if m.api_key_env else "set api_key_env in models.toml"
            return f"{host} refused the API key (HTTP {e.status_code}: {detail}): {fix}"
        if isinstance(e, openai.NotFoundError):
            return f"{host} has no {self.what} for model {m.remote_model!r} (HTTP 404: {detail}): check 'model' and base_url"
        if isinstance(e, openai.APIStatusError):
            return f"{host} answered HTTP {e.status_code} to {self.what}: {detail}"
        if isinstance(e, openai.APIError):  # an error event inside the stream
            return f"{host} reported an error mid-reply: {detail} (the partial reply is kept)"
        if isinstance(e, (json.JSONDecodeError, ValueError, TypeError, AttributeError)):
            return f"{host} sent a malformed stream ({type(e).__name__}: {e}): is base_url an OpenAI-compatible endpoint?"
        # The connection broke mid-stream (the server died): the HTTP library's own error types.
        return f"the connection to {host} broke during {self.what} ({type(e).__name__}: {e}): the partial reply is kept"


def _api_message(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
    return str(getattr(e, "message", "") or e)


def _choice_text(choice, kind: str, calls: dict[int, dict], host: str) -> str:
    """The text a chunk's choice adds; its tool_calls deltas are merged into `calls`."""
    if kind == "completion":
        piece = getattr(choice, "text", None)
        return piece if isinstance(piece, str) else ""
    delta = getattr(choice, "delta", None)
    if delta is None:
        return ""
    for tc in getattr(delta, "tool_calls", None) or []:
        index = getattr(tc, "index", None)
        if not isinstance(index, int):
            raise RemoteError(f"{host} sent a malformed tool call delta (no index)")
        call = calls.setdefault(index, {"id": None, "name": "", "arguments": ""})
        call["id"] = getattr(tc, "id", None) or call["id"]
        fn = getattr(tc, "function", None)
        if fn is not None:
            call["name"] += getattr(fn, "name", None) or ""
            call["arguments"] += getattr(fn, "arguments", None) or ""
    piece = getattr(delta, "content", None)
    return piece if isinstance(piece, str) else ""


def _reasoning_fields(reasoning) -> dict:
    """The request fields that carry a Reasoning: vLLM's and SGLang's `chat_template_kwargs`
    switch, and the budget as `thinking_budget` (servers without one ignore unknown fields)."""
    if reasoning is None:
        return {}
    out: dict[str, Any] = {}
    if reasoning.thinking is not None:
        out["chat_template_kwargs"] = {"enable_thinking": reasoning.thinking}
    if reasoning.budget is not None:
        out["thinking_budget"] = reasoning.budget
    return out


def _choice_reasoning(choice) -> str:
    """A chat delta's reasoning: `reasoning_content` (DeepSeek, vLLM, llama-server, ours) or
    `reasoning` (OpenRouter, Ollama, newer vLLM), extra fields of the client's delta model."""
    delta = getattr(choice, "delta", None)
    for name in ("reasoning_content", "reasoning"):
        piece = getattr(delta, name, None)
        if isinstance(piece, str) and piece:
            return piece
    return ""


def _tool_calls(calls: dict[int, dict]) -> tuple[list[ToolCall], str]:
    """The streamed calls, parsed; those whose arguments are not a JSON object come back as
    tagged text for the caller's parser to report."""
    parsed, unparsed = [], ""
    for index in sorted(calls):
        call = calls[index]
        raw = json.dumps({"name": call["name"], "arguments": call["arguments"]}, ensure_ascii=False)
        try:
            arguments = json.loads(call["arguments"] or "{}")
        except json.JSONDecodeError:
            arguments = None
        if not call["name"] or not isinstance(arguments, dict):
            unparsed += f"{OPEN_TAG}\n{raw}\n{CLOSE_TAG}"
            continue
        parsed.append(ToolCall(id=call["id"] or f"call_{index}", name=call["name"], arguments=arguments, raw=raw))
    return parsed, unparsed
