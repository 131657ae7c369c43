"""The chat app on a remote model (Pilot): replies, the host in the status line, failures kept."""

from __future__ import annotations

import asyncio

from apphelpers import make_app, messages, send, wait_for
from scripted import ScriptedModel
from serving import running_app, running_server

from engine.runtime.remote import RemoteModel


def _done(app):
    return lambda: app.chat_screen.job is None and any(m.role == "assistant" and m.status != "streaming" for m in messages(app))


def test_a_remote_model_answers_in_the_app_and_the_status_line_names_its_host(tmp_path, default_gguf):
    asyncio.run(_answers(tmp_path, default_gguf))


async def _answers(tmp_path, default_gguf):
    with running_server(ScriptedModel(default_gguf, ["Hello from afar."])) as url:
        remote = RemoteModel(url, "scripted")
        app = make_app(tmp_path, remote)
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: app.model is not None, what="the model")
            await send(pilot, "hi")
            await wait_for(pilot, _done(app), what="the reply")
            reply = messages(app)[-1]
            assert (reply.status, reply.content) == ("complete", "Hello from afar.")
            assert f"scripted · remote · {remote.host}" in str(app.query_one("StatusBar").render())


def test_a_stream_that_breaks_keeps_the_partial_reply_with_the_error(tmp_path):
    asyncio.run(_breaks(tmp_path))


async def _breaks(tmp_path):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def chat(request):
        async def body():
            yield b'data: {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Partial"}}]}\n\n'
        return StreamingResponse(body(), media_type="text/event-stream")  # ends with no finish reason

    app_server = Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])
    with running_app(app_server) as url:
        app = make_app(tmp_path, RemoteModel(url, "m"))
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: app.model is not None, what="the model")
            await send(pilot, "hi")
            await wait_for(pilot, _done(app), what="the reply")
            user, reply = messages(app)[-2:]
            assert user.content == "hi"
            assert (reply.status, reply.content) == ("error", "Partial")
            assert "without a finish reason" in reply.meta["error"] and url.split("/")[2] in reply.meta["error"]


def test_the_picker_counts_a_remote_model_as_available_and_names_its_host(tmp_path):
    from chatapp.screens.models import availability

    from engine.hub.registry import load_registry

    path = tmp_path / "models.toml"
    path.write_text('default = "far"\n[models.far]\nsource = "remote"\nbase_url = "http://gpu-box:8000/v1"\nmodel = "m"\n')
    assert availability(load_registry([path])) == {"far": True}
