"""The chat app on a remote model records the reply's token probabilities for the inspector
(asked of the server as OpenAI logprobs), and no prompt ids: the server keeps its tokens."""

from __future__ import annotations

import asyncio

import pytest
from apphelpers import make_app, messages, send, wait_for
from serving import running_server

from chatapp.inspection import tokens_from_meta
from chatapp.screens.inspector import InspectorScreen
from engine.runtime.remote import RemoteModel


@pytest.mark.slow
def test_a_remote_reply_keeps_its_token_probabilities(tmp_path):
    asyncio.run(_records(tmp_path))


async def _records(tmp_path):
    import engine

    local = engine.load("smollm2-135m", backend="gguf", context_length=2048)
    with running_server(local) as url:
        app = make_app(tmp_path, RemoteModel(url, local.name))
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: app.model is not None, what="the model")
            await send(pilot, "Say hello.")
            await wait_for(pilot, lambda: app.chat_screen.job is None and any(
                m.role == "assistant" and m.status != "streaming" for m in messages(app)), what="the reply")
            reply = messages(app)[-1]
            # The inspector shows the probabilities; attention needs weights this process holds.
            await pilot.press("f4")
            await wait_for(pilot, lambda: isinstance(app.screen, InspectorScreen), what="the inspector")
            attention = str(app.screen.query_one("#attention-view").render())
            assert f"needs the native engine; {local.name} is served by remote" in attention
    tokens = tokens_from_meta(reply.meta)
    assert reply.status == "complete" and "prompt_ids" not in reply.meta
    # The ids came back too (the "id" our server sends, as llama-server does): their bytes are the reply.
    assert tokens and b"".join(local.tokenizer.token_bytes(t.id) for t in tokens).decode() == reply.content
    assert all(0 < t.prob <= 1 and len(t.top) == 10 and t.id >= 0 for t in tokens)
