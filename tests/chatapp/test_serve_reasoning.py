"""Reasoning through `chatapp serve` (driven by the official openai client, the switch and budget
in `extra_body` as vLLM/SGLang clients send them) and back through our remote model."""

from __future__ import annotations

import openai
import pytest
from scripted import ScriptedModel
from serving import running_app, running_server
from thinking import QWEN3_STYLE

from engine import Reasoning, ReasoningDelta, TextDelta
from engine.runtime.remote import RemoteModel

THOUGHT = " ".join(f"idea{i}" for i in range(30))
REPLY = f"<think>\n{THOUGHT}\n</think>\n\nThe answer is 4."
ASK = [{"role": "user", "content": "What is 2+2?"}]
CLOSED_BLOCK = "<think>\n\n</think>\n\n"  # what the Qwen3 template renders with thinking off


def client(url):
    return openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)


def test_enable_thinking_in_chat_template_kwargs_reaches_the_template(default_gguf):
    model = ScriptedModel(default_gguf, [REPLY, "Four.", REPLY], template=QWEN3_STYLE)
    with running_server(model) as url:
        c = client(url)
        on = c.chat.completions.create(model="scripted", messages=ASK)
        off = c.chat.completions.create(model="scripted", messages=ASK,
                                        extra_body={"chat_template_kwargs": {"enable_thinking": False}})
        chunks = list(c.chat.completions.create(model="scripted", messages=ASK, stream=True,
                                                extra_body={"chat_template_kwargs": {"enable_thinking": True}}))
    assert not model.prompts[0].endswith(CLOSED_BLOCK) and model.prompts[1].endswith(CLOSED_BLOCK)
    assert not model.prompts[2].endswith(CLOSED_BLOCK)
    assert on.choices[0].message.content == "The answer is 4."
    assert on.choices[0].message.model_extra["reasoning_content"] == THOUGHT + "\n"
    assert off.choices[0].message.content == "Four."
    streamed = "".join(ch.choices[0].delta.model_extra.get("reasoning_content") or "" for ch in chunks if ch.choices)
    assert streamed == THOUGHT + "\n"


def test_thinking_budget_closes_the_block_and_the_model_answers(default_gguf):
    model = ScriptedModel(default_gguf, [REPLY], template=QWEN3_STYLE)
    with running_server(model) as url:
        reply = client(url).chat.completions.create(model="scripted", messages=ASK, extra_body={"thinking_budget": 5})
    thought = reply.choices[0].message.model_extra["reasoning_content"]
    assert thought and thought.split()[0] == "idea0" and "idea20" not in thought
    assert reply.choices[0].message.content == "The answer is 4."


@pytest.mark.parametrize("extra, field", [({"chat_template_kwargs": {"enable_thinking": "no"}}, "chat_template_kwargs"),
                                          ({"thinking_budget": -1}, "thinking_budget")])
def test_a_bad_reasoning_field_is_a_400_that_names_it(default_gguf, extra, field):
    model = ScriptedModel(default_gguf, [REPLY], template=QWEN3_STYLE)
    with running_server(model) as url:
        with pytest.raises(openai.BadRequestError) as caught:
            client(url).chat.completions.create(model="scripted", messages=ASK, extra_body=extra)
    assert field in str(caught.value)
    assert not hasattr(model, "prompts")  # refused before generating


def test_a_raw_completion_keeps_its_think_block_in_the_text(default_gguf):
    model = ScriptedModel(default_gguf, [REPLY, REPLY], template=QWEN3_STYLE)
    with running_server(model) as url:
        c = client(url)
        whole = c.completions.create(model="scripted", prompt="2+2?", max_tokens=200).choices[0].text
        streamed = "".join(ch.choices[0].text for ch in c.completions.create(model="scripted", prompt="2+2?",
                                                                              max_tokens=200, stream=True) if ch.choices)
    assert whole == streamed == REPLY


def test_a_remote_model_reads_reasoning_content_and_sends_the_switch(default_gguf):
    model = ScriptedModel(default_gguf, [REPLY, "Four."], template=QWEN3_STYLE)
    with running_server(model) as url:
        remote = RemoteModel(url, "scripted")
        events = list(remote.chat(ASK))
        list(remote.chat(ASK, reasoning=Reasoning(thinking=False)))
    thought = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    result = events[-1]
    assert thought == result.reasoning == THOUGHT + "\n"
    assert text == result.text == "The answer is 4."
    assert result.reasoning_tokens > 0
    assert model.prompts[1].endswith(CLOSED_BLOCK) and not model.prompts[0].endswith(CLOSED_BLOCK)


def test_a_remote_model_reads_the_other_name_reasoning():
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def chunk(delta, finish=None):
        import json

        body = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n".encode()

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def chat(request):
        async def body():
            yield chunk({"role": "assistant", "reasoning": "Two and "})
            yield chunk({"reasoning": "two."})
            yield chunk({"content": "Four."}, "stop")
            yield b"data: [DONE]\n\n"
        return StreamingResponse(body(), media_type="text/event-stream")

    server = Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])
    with running_app(server) as url:
        events = list(RemoteModel(url, "m").chat(ASK))
    assert [type(e).__name__ for e in events[:3]] == ["ReasoningDelta", "ReasoningDelta", "TextDelta"]
    assert (events[-1].reasoning, events[-1].text, events[-1].reasoning_tokens) == ("Two and two.", "Four.", 2)
