"""The token and attention inspector (F4 / palette "Inspect reply") under Pilot: probabilities
recorded with a real reply, moving across tokens, switching layer and head, closing; the GGUF
backend's message; snapshots of the token view and the attention view on a tiny native model."""

from __future__ import annotations

import pytest

import engine
from apphelpers import messages, send, wait_for
from chatapp.app import ChatApp
from chatapp.screens.inspector import InspectorScreen
from chatapp.store import Store
from tiny_models import TinyConfig, write_tiny_llama

SHORT = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 10}
SIZE = (110, 40)


def attention_text(app) -> str:
    return str(app.screen.query_one("#attention-view").render())


def detail_text(app) -> str:
    return str(app.screen.query_one("#token-detail").render())


def app_with_conversation(tmp_path, model) -> ChatApp:
    store = Store(tmp_path / "history.db")
    store.create_conversation(settings=SHORT)  # reopened at start
    return ChatApp(store=store, load_model=lambda name: model)


async def reply_then_inspect(pilot, app):
    await wait_for(pilot, lambda: app.model_ready.is_set(), what="the model")
    await send(pilot, "Name a colour.")
    await wait_for(pilot, lambda: app.chat_screen.job is None and len(messages(app)) == 2, what="the reply")
    reply = messages(app)[-1]
    await pilot.press("f4")
    await wait_for(pilot, lambda: isinstance(app.screen, InspectorScreen), what="the inspector")
    return reply


def test_inspector_on_a_real_reply_moves_across_tokens_layers_and_heads(tmp_path, default_model):
    async def run():
        app = app_with_conversation(tmp_path, default_model)
        async with app.run_test(size=SIZE) as pilot:
            reply = await reply_then_inspect(pilot, app)
            rows = reply.meta["token_probs"]
            assert len(rows) == reply.meta["completion_tokens"] and len(rows[0][3]) == 10
            assert reply.meta["prompt_ids"] == default_model.encode_chat(
                [{"role": "user", "content": "Name a colour."}])
            assert f"Token 1/{len(rows)}" in detail_text(app) and f"p = {rows[0][2]:.4f}" in detail_text(app)
            await wait_for(pilot, lambda: "Strongest" in attention_text(app), what="attention")
            assert "layer 0/29, mean over 9 heads" in attention_text(app)
            await pilot.press("right")
            assert f"Token 2/{len(rows)}" in detail_text(app)
            await wait_for(pilot, lambda: "Strongest" in attention_text(app), what="attention of token 2")
            await pilot.press("down", "down", "right_square_bracket", "right_square_bracket")
            text = attention_text(app)
            assert "layer 2/29, head 1/8 (KV group 0: heads 0-2)" in text
            position = len(reply.meta["prompt_ids"])  # token 2 was predicted from the first reply token
            expected = default_model.attention(reply.meta["prompt_ids"] + [rows[0][0]], position)[2, 1]
            top = int(expected.argmax())
            assert f"{expected[top]:7.3f}  #{top:<5}" in text
            await pilot.press("escape")
            assert not isinstance(app.screen, InspectorScreen)
        app.store.close()

    import asyncio
    asyncio.run(run())
