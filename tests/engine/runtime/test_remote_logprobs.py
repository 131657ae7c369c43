"""A remote model's token_probs (`token_probs=K` -> OpenAI logprobs): a round trip through our own
server equals the local model's rows; servers that ignore the field, or answer it malformed,
give no rows and no error."""

from __future__ import annotations

import json

import pytest
from scripted import ScriptedModel
from serving import running_app, running_server

from engine import TextDelta
from engine.runtime.remote import RemoteModel

MESSAGES = [{"role": "user", "content": "Say hi in French with an emoji"}]


@pytest.fixture(scope="module")
def gguf_model():
    import engine

    return engine.load("smollm2-135m", backend="gguf", context_length=2048)


def _same(remote_rows, local_rows, *, ids=True):
    assert len(remote_rows) == len(local_rows) > 3
    for r, row in zip(remote_rows, local_rows):
        assert (r.id if ids else row.id, r.text) == (row.id, row.text)
        assert r.prob == pytest.approx(row.prob, abs=1e-5)
        assert [(i if ids else j, s) for (i, s, _), (j, _, _) in zip(r.top, row.top)] == [(i, s) for i, s, _ in row.top]
        assert [p for _, _, p in r.top] == pytest.approx([p for _, _, p in row.top], abs=1e-5)


def test_a_round_trip_through_our_server_gives_the_local_rows(gguf_model):
    local = list(gguf_model.chat(MESSAGES, max_tokens=20, temperature=0, token_probs=4))[-1]
    reply_rows = [r for r in local.token_probs if r.id not in gguf_model.tokenizer.eos_ids]  # no end token sent
    local_completion = list(gguf_model.generate("The capital of France is", max_tokens=6, temperature=0,
                                                token_probs=4))[-1]
    with running_server(gguf_model) as url:
        remote = RemoteModel(url, gguf_model.name)
        *deltas, result = list(remote.chat(MESSAGES, max_tokens=20, temperature=0, token_probs=4, stream_probs=True))
        completion = list(remote.generate("The capital of France is", max_tokens=6, temperature=0, token_probs=4))[-1]
    assert result.text == local.text
    _same(result.token_probs, reply_rows)
    assert [r for d in deltas for r in d.token_probs] == list(result.token_probs)  # each delta with its own
    # Legacy completions carry no ids, and their alternatives are keyed by text.
    assert completion.text == local_completion.text
    _same(completion.token_probs, local_completion.token_probs, ids=False)
    assert {r.id for r in completion.token_probs} == {-1}


def test_a_server_that_ignores_logprobs_gives_no_rows(default_gguf):
    with running_server(ScriptedModel(default_gguf, ["Hello there."])) as url:  # records no probabilities
        *deltas, result = list(RemoteModel(url, "scripted").chat(MESSAGES, token_probs=3, stream_probs=True))
    assert result.text == "Hello there." and result.token_probs == ()
    assert all(d.token_probs == () for d in deltas)


def test_malformed_logprobs_give_no_rows_and_keep_the_reply():
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})

    def chunk(content, logprobs, finish=None):
        choice = {"index": 0, "delta": {"content": content}, "logprobs": logprobs, "finish_reason": finish}
        return f"data: {json.dumps({'id': 'x', 'object': 'chat.completion.chunk', 'choices': [choice]})}\n\n".encode()

    good = {"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": []}]}
    bad = {"content": [{"token": "!", "logprob": "very", "bytes": [33], "top_logprobs": []}]}

    async def chat(request):
        async def body():
            yield chunk("Hi", good)
            yield chunk("!", bad, "stop")
            yield b"data: [DONE]\n\n"
        return StreamingResponse(body(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])
    with running_app(app) as url:
        events = list(RemoteModel(url, "m").chat(MESSAGES, token_probs=0))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hi!"
    assert events[-1].finish_reason == "stop" and events[-1].token_probs == ()


def test_token_probs_out_of_range_is_refused_before_sending(default_gguf):
    with running_server(ScriptedModel(default_gguf, [])) as url:
        with pytest.raises(ValueError, match="token_probs must be an integer from 0 to 20"):
            RemoteModel(url, "scripted").chat(MESSAGES, token_probs=21)
