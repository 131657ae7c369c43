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
from chatapp.widgets.token_strip import TokenStrip
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
            # The mouse: a click on a token's cell selects that token.
            strip = app.screen.query_one(TokenStrip)
            line, x0, _x1, index = strip._cells[min(3, len(strip._cells) - 1)]
            inner = strip.content_region.offset - strip.region.offset  # padding and border
            assert await pilot.click(TokenStrip, offset=(inner.x + x0, inner.y + line))
            await pilot.pause()
            assert strip.selected == index and f"Token {index + 1}/{len(rows)}" in detail_text(app)
            await pilot.press("escape")
            assert not isinstance(app.screen, InspectorScreen)
        app.store.close()

    import asyncio
    asyncio.run(run())


def test_gguf_backend_shows_probabilities_and_says_attention_needs_the_native_engine(tmp_path, default_gguf):
    model = engine.load("smollm2-135m", backend="gguf")
    model.sampling_defaults = {}

    async def run():
        app = app_with_conversation(tmp_path, model)
        async with app.run_test(size=SIZE) as pilot:
            reply = await reply_then_inspect(pilot, app)
            rows = reply.meta["token_probs"]
            assert len(rows) == reply.meta["completion_tokens"]
            assert f"p = {rows[0][2]:.4f}" in detail_text(app)
            assert "Attention: needs the native engine; smollm2-135m runs on gguf" in attention_text(app)
            await pilot.press("right", "down", "escape")
            assert not isinstance(app.screen, InspectorScreen)
        app.store.close()

    import asyncio
    asyncio.run(run())


def test_thinking_and_tool_call_tokens_are_marked(tmp_path, default_gguf):
    """A stored reply that thought, answered and called a tool: each token says which part it is
    in, and the legend names the styles."""
    from scripted import ScriptedModel

    texts = ["<think>", "\n", "Sum", " it", "</think>", "\n\n", "Sure", ".", "<tool_call>", '{"name": "add"}', "</tool_call>"]
    rows = [[i, t, 0.5, [[i, t, 0.5]]] for i, t in enumerate(texts)]
    store = Store(tmp_path / "history.db")
    conv = store.create_conversation()
    store.add_message(conv.id, "user", "add them")
    reply = store.add_message(conv.id, "assistant", "Sure.", tool_calls=[
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}],
        meta={"model": "elsewhere", "token_probs": rows})
    store.update_message(reply.id, reasoning="Sum it")
    store.add_message(conv.id, "tool", "3", tool_call_id="c1", name="add")

    async def run():
        app = ChatApp(store=store, load_model=lambda name: ScriptedModel(default_gguf, ["x"]))
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.model_ready.is_set() and app.chat_screen.conversation_id, what="ready")
            await pilot.press("f4")
            await wait_for(pilot, lambda: isinstance(app.screen, InspectorScreen), what="the inspector")
            legend = str(app.screen.query_one("#inspector-legend").render())
            assert "thinking" in legend and "tool call" in legend
            seen = []
            for _ in texts:
                seen.append(detail_text(app).splitlines()[0].split(":")[0])
                await pilot.press("right")
            assert seen == [f"Token {i}/11 (thinking)" for i in range(1, 7)] + ["Token 7/11", "Token 8/11"] + \
                [f"Token {i}/11 (tool call)" for i in range(9, 12)]
        store.close()

    import asyncio
    asyncio.run(run())


# --- snapshots on a tiny native model ------------------------------------------------------------


@pytest.fixture
def tiny_app(tmp_path):
    path = write_tiny_llama(tmp_path / "tiny.gguf", TinyConfig(seed=3, weight_scale=0.3))
    model = engine.runtime.NativeModel(path, device="cpu", dtype="float32")
    store = Store(tmp_path / "history.db")
    conv = store.create_conversation(system_prompt="be brief")
    store.add_message(conv.id, "user", "hello there")
    prompt = model.encode_chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}])
    result = list(model.generate(prompt, max_tokens=8, temperature=0, token_probs=10))[-1]
    from chatapp.inspection import meta_rows

    store.add_message(conv.id, "assistant", result.text, meta={
        "model": model.name, "completion_tokens": result.completion_tokens,
        "token_probs": meta_rows(result), "prompt_ids": prompt})
    return ChatApp(store=store, load_model=lambda name: model)


async def open_inspector(pilot) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: app.model_ready.is_set() and app.chat_screen.conversation_id, what="ready")
    await pilot.press("f4")
    await wait_for(pilot, lambda: isinstance(app.screen, InspectorScreen), what="the inspector")
    await pilot.press("right", "right")
    await wait_for(pilot, lambda: "Strongest" in attention_text(app), what="attention")


def test_snapshot_token_view(snap_compare, tiny_app):
    assert snap_compare(tiny_app, terminal_size=SIZE, run_before=open_inspector)


def test_snapshot_attention_view_one_head(snap_compare, tiny_app):
    async def one_head(pilot):
        await open_inspector(pilot)
        await pilot.press("down", "right_square_bracket", "right_square_bracket")
        assert "layer 1/" in attention_text(pilot.app) and "head 1/" in attention_text(pilot.app)

    assert snap_compare(tiny_app, terminal_size=SIZE, run_before=one_head)
