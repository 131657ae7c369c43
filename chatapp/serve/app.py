"""`chatapp serve`: one loaded model behind the OpenAI API (Starlette routes, SSE streaming).

POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health. Requests take
turns on the model (queue.py); prefix reuse carries across requests through one PromptCache (the
llama.cpp backend reuses its own context by itself), so the next turn of a conversation
prefills only its new tokens. Per-token logprobs (chat `logprobs`/`top_logprobs`, legacy
`logprobs: N`) come from the engine's `token_probs` (schema.py, logprobs.py).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine import (ContextOverflowError, EngineError, GenerationResult, Model, Reasoning, ReasoningDelta, RequestError,
                    TextDelta)

from .logprobs import LogprobFormat, PendingRows
from .queue import Generation, QueueFull, Turns
from .replies import ChunkWriter, ToolReply, chat_response, completion_response, finish_reason, sendable
from .schema import ChatRequest, CompletionRequest, ValidationError, error_body, first_error

MAX_WAITING = 8  # requests waiting for the model beyond the one generating; more get a 429


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", *,
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, error_body(message, type_, param=param, code=code)


class Server:
    """The routes' state: the model, its prompt cache, the turns, the key."""

    def __init__(self, model: Model, *, api_key: str | None = None, max_waiting: int = MAX_WAITING) -> None:
        from engine.model.cache import PromptCache

        self.model, self.api_key = model, api_key
        self.cache = PromptCache()
        self.turns = Turns(max_waiting)
        self.created = int(time.time())

    # ---- checks --------------------------------------------------------------------------------

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "invalid or missing API key: send the header 'Authorization: Bearer <key>' with the "
                                "key given to chatapp serve --api-key", code="invalid_api_key")

    async def body(self, request: Request, schema):
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None
        try:
            parsed = schema.model_validate(data)
        except ValidationError as e:
            param, message = first_error(e)
            raise ApiError(400, message, param=param) from None
        if parsed.model != self.model.name:
            raise ApiError(404, f"the model {parsed.model!r} does not exist here: this server serves {self.model.name!r} "
                                "(GET /v1/models)", param="model", code="model_not_found")
        return parsed

    def fit(self, ids: list[int], limit: int | None) -> int:
        """The reply's token budget; a 400 saying by how much a prompt overflows the window."""
        window = self.model.context_length
        if len(ids) >= window:
            over = len(ids) - window + 1
            raise ApiError(400, f"the prompt is {len(ids)} tokens, {over} more than the context window of {window} "
                                "tokens leaves room for (one token of reply at least): shorten the messages",
                           param="messages", code="context_length_exceeded")
        room = window - len(ids)
        return min(limit, room) if limit else room

    def check_logprobs(self, req) -> LogprobFormat | None:
        """The formatter of the request's logprobs; None when it asks for none, or when the model
        records none (every engine backend does), whose reply then has `"logprobs": null` as
        servers without logprobs answer."""
        if req.token_probs is None or not self.model.records_token_probs:
            return None
        return LogprobFormat(self.model.tokenizer)

    def params(self, req, max_tokens: int):
        try:
            return self.model.sampling_params(req.sampling(), max_tokens=max_tokens)
        except ValueError as e:
            raise ApiError(400, str(e)) from None

    # ---- routes ------------------------------------------------------------------------------

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": self.model.name, "waiting": self.turns.waiting})

    async def models(self, request: Request) -> JSONResponse:
        self.check_key(request)
        entry = {"id": self.model.name, "object": "model", "created": self.created, "owned_by": "chatapp",
                 "max_model_len": self.model.context_length}
        return JSONResponse({"object": "list", "data": [entry]})

    async def chat(self, request: Request):
        self.check_key(request)
        req: ChatRequest = await self.body(request, ChatRequest)
        probs = self.check_logprobs(req)
        try:  # the grammar that makes "required", a named tool and response_format real
            tools, constraint = self.model.constrain(req.offered_tools(), req.choice(), req.response_format)
        except EngineError as e:
            raise ApiError(400, str(e)) from None
        messages = [m.for_template() for m in req.messages]
        chosen = req.reasoning()
        reasoning = Reasoning(**chosen) if chosen else None
        ids = await asyncio.to_thread(self._encode,
                                      lambda: self.model.encode_chat(messages, tools=tools, reasoning=reasoning))
        params = self.params(req, self.fit(ids, req.reply_limit))
        generation = await self._start(ids, params, reasoning, constraint, probs=req if probs else None)
        if req.stream:
            return EventSourceResponse(self._chat_chunks(req, tools, generation, probs), ping=15)
        result, text = await _collect(generation, request)
        logprobs = probs.chat(result.token_probs) if probs else None
        return JSONResponse(chat_response(req.model, ToolReply(text, tools), result, logprobs))

    async def completions(self, request: Request):
        self.check_key(request)
        req: CompletionRequest = await self.body(request, CompletionRequest)
        probs = self.check_logprobs(req)
        tok = self.model.tokenizer
        ids = await asyncio.to_thread(self._encode, lambda: tok.encode(req.prompt, add_special=True, parse_special=True))
        params = self.params(req, self.fit(ids, req.reply_limit))
        generation = await self._start(ids, params, probs=req if probs else None)
        # A completion is the raw continuation: a think block stays in its text, markers and all.
        generation = _RawText(generation, self.model.think_markers, req.prompt)
        if req.stream:
            return EventSourceResponse(self._completion_chunks(req, generation, probs), ping=15)
        result, text = await _collect(generation, request)
        logprobs = probs.completion(result.token_probs) if probs else None
        return JSONResponse(completion_response(req.model, result, text, logprobs))

    # ---- generation ----------------------------------------------------------------------------

    @staticmethod
    def _encode(encode) -> list[int]:
        try:
            return encode()
        except EngineError as e:  # a template that cannot render these messages
            raise ApiError(400, str(e), param="messages") from None

    async def _start(self, ids: list[int], params, reasoning: Reasoning | None = None, constraint=None,
                     probs=None) -> Generation:
        """Queue the generation; `probs`: the request, when its logprobs are to be recorded."""
        try:
            await self.turns.take()
        except QueueFull as e:
            raise ApiError(429, str(e), "rate_limit_exceeded", code="queue_full") from None
        hooks = {"constraint": constraint} if constraint is not None else {}
        if probs is not None:  # a stream sends each delta's rows with it
            hooks.update(token_probs=probs.token_probs, stream_probs=probs.stream)
        make = lambda should_stop: self.model.generate(ids, params, should_stop=should_stop, cache=self.cache,
                                                       reasoning=reasoning, **hooks)
        return Generation(make, self.turns)

    async def _chat_chunks(self, req: ChatRequest, tools, generation: Generation, probs: LogprobFormat | None):
        out = ChunkWriter(req.model, "chat")
        rows = PendingRows(probs.chat, probs.kept) if probs else None
        take = lambda: rows.take() if rows else None
        yield _data(out.choice(delta={"role": "assistant", "content": ""}))
        text, sent = "", ""
        try:
            async for event in generation.events():
                if rows and not isinstance(event, GenerationResult):
                    rows.add(event.token_probs)
                if isinstance(event, TextDelta):
                    text += event.text
                    upto = sendable(text) if tools else len(text)
                    if upto > len(sent):
                        yield _data(out.choice(text=text[len(sent):upto], logprobs=take()))
                        sent = text[:upto]
                elif isinstance(event, ReasoningDelta):  # the convention most servers use
                    yield _data(out.choice(delta={"reasoning_content": event.text}, logprobs=take()))
                else:
                    result = event
        except EngineError as e:
            yield _data(error_body(str(e), "server_error"))
            return
        if rows:
            rows.add_rest(result)
        reply = ToolReply(text, tools)
        rest = reply.rest_after(sent)
        if rest:
            yield _data(out.choice(text=rest, logprobs=take()))
        if reply.calls:
            yield _data(out.tool_calls(reply.calls, take()))
        yield _data(out.choice(delta={}, finish=finish_reason(result, reply.calls), logprobs=take()))
        if req.include_usage:
            yield _data(out.usage(result))
        yield {"data": "[DONE]"}

    async def _completion_chunks(self, req: CompletionRequest, generation: Generation, probs: LogprobFormat | None):
        out = ChunkWriter(req.model, "completion")
        rows = PendingRows(probs.completion, probs.kept) if probs else None
        try:
            async for event in generation.events():
                if isinstance(event, TextDelta):
                    if rows:
                        rows.add(event.token_probs)
                    yield _data(out.choice(text=event.text, logprobs=rows.take() if rows else None))
                elif isinstance(event, GenerationResult):  # a completion is its text, as unstreamed
                    result = event
        except EngineError as e:
            yield _data(error_body(str(e), "server_error"))
            return
        if rows:
            rows.add_rest(result)
        yield _data(out.choice(text="", finish=finish_reason(result, []), logprobs=rows.take() if rows else None))
        if req.include_usage:
            yield _data(out.usage(result))
        yield {"data": "[DONE]"}


class _RawText:
    """A generation's events with its reasoning written back into the text between the model's
    markers (the engine splits them apart; a raw completion has no field for them). The
    whitespace the engine drops after each marker comes back as one newline / a blank line."""

    def __init__(self, generation: Generation, markers, prompt: str) -> None:
        self.generation, self.markers = generation, markers
        self.opened = markers is not None and prompt.rstrip().endswith(markers.open)  # the prompt opened it

    async def events(self, **kw):
        thinking = False
        async for event in self.generation.events(**kw):
            if isinstance(event, ReasoningDelta):
                opening = "" if thinking or self.opened else self.markers.open + "\n"
                thinking = True
                yield TextDelta(opening + event.text, event.token_probs)
            elif isinstance(event, TextDelta) and thinking:
                thinking = False
                yield TextDelta(self.markers.close + "\n\n" + event.text, event.token_probs)
            else:
                yield event


def _data(body: dict) -> dict:
    return {"data": json.dumps(body, ensure_ascii=False)}


async def _collect(generation: Generation, request: Request) -> tuple[GenerationResult, str]:
    text, result = "", None
    try:
        async for event in generation.events(disconnected=request.is_disconnected):
            if isinstance(event, TextDelta):
                text += event.text
            elif isinstance(event, GenerationResult):
                result = event
    except ContextOverflowError as e:
        raise ApiError(400, str(e), code="context_length_exceeded") from None
    except RequestError as e:
        raise ApiError(400, str(e)) from None
    except EngineError as e:
        raise ApiError(500, str(e), "server_error") from None
    if result is None:
        raise ApiError(500, "the generation ended without a result", "server_error")
    return result, text


def build_app(model: Model, *, api_key: str | None = None, max_waiting: int = MAX_WAITING) -> Starlette:
    server = Server(model, api_key=api_key, max_waiting=max_waiting)

    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body, status_code=e.status)

    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return JSONResponse(error_body(message.get(e.status_code, str(e.detail))), status_code=e.status_code)

    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={ApiError: api_error, HTTPException: http_error})
    app.state.server = server
    return app


def serve(model: Model, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          log_level: str = "info", **uvicorn_options: Any) -> None:
    """Run the server until Ctrl-C (uvicorn)."""
    import uvicorn

    uvicorn.run(build_app(model, api_key=api_key), host=host, port=port, log_level=log_level, **uvicorn_options)


__all__ = ["ApiError", "Server", "build_app", "serve"]
