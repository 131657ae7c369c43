"""`chatapp serve` driven by the official openai client, on free loopback ports."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import openai
import pytest
from scripted import ScriptedModel
from serving import running_server

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def client(url, key="none"):
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def gguf_model():
    import engine

    return engine.load("smollm2-135m", backend="gguf", context_length=2048)


@pytest.fixture(scope="module")
def default_server(gguf_model):
    with running_server(gguf_model) as url:
        yield url


def ask(c, model="smollm2-135m", **kw):
    kw.setdefault("messages", [{"role": "user", "content": "What is the capital of France?"}])
    return c.chat.completions.create(model=model, **kw)


def test_streamed_reply_on_the_default_model_with_usage_and_prefix_reuse(default_server):
    c = client(default_server)
    chunks = list(ask(c, stream=True, max_tokens=12, temperature=0, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip()
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finish in (["length"], ["stop"])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.prompt_tokens > 5 and 1 <= usage.completion_tokens <= 12
    # The same conversation, one turn on: only the new tokens are prefilled.
    again = ask(c, max_tokens=4, temperature=0, messages=[
        {"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": text},
        {"role": "user", "content": "And of Italy?"}])
    assert again.usage.prompt_tokens_details.cached_tokens >= usage.prompt_tokens - 1
    assert again.choices[0].message.content


def test_completions_and_models_and_health(default_server):
    c = client(default_server)
    done = c.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=3, temperature=0)
    assert done.choices[0].text and done.usage.completion_tokens == 3 and done.choices[0].finish_reason == "length"
    listed = c.models.list().data
    assert [m.id for m in listed] == ["smollm2-135m"] and listed[0].max_model_len == 2048
    with urllib.request.urlopen(default_server.removesuffix("/v1") + "/health") as r:
        assert json.load(r)["status"] == "ok"


def test_tool_call_round_trip(default_gguf):
    model = ScriptedModel(default_gguf, [CALL, "It is sunny in Paris.", "Intro. " + CALL])
    with running_server(model) as url:
        c = client(url, )
        msgs = [{"role": "user", "content": "Weather in Paris?"}]
        first = c.chat.completions.create(model="scripted", messages=msgs, tools=TOOLS)
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
        msgs += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 22 C"}]
        second = c.chat.completions.create(model="scripted", messages=msgs, tools=TOOLS)
        assert second.choices[0].message.content == "It is sunny in Paris."
        assert model.received[-1][-1] == {"role": "tool", "tool_call_id": call.id, "content": "sunny, 22 C"}
        # Streamed: the text before the call streams, the call comes as tool_calls deltas.
        chunks = list(c.chat.completions.create(model="scripted", messages=msgs[:1], tools=TOOLS, stream=True))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        calls = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
        assert text.strip() == "Intro." and "<tool_call>" not in text
        assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [("get_weather", {"city": "Paris"})]
        assert chunks[-1].choices[0].finish_reason == "tool_calls"


class ToolsSeen(ScriptedModel):
    def encode_chat(self, messages, *, tools=None, reasoning=None):
        self.tools_seen = tools
        return super().encode_chat(messages, tools=tools, reasoning=reasoning)


@pytest.mark.parametrize("choice, offered", [("none", None), ("auto", ["get_weather", "other"]),
                                             ({"type": "function", "function": {"name": "other"}}, ["other"])])
def test_tool_choice_decides_which_tools_the_template_shows(default_gguf, choice, offered):
    model = ToolsSeen(default_gguf, ["plain"])
    other = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}
    with running_server(model) as url:
        client(url).chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hi"}],
                                            tools=TOOLS + [other], tool_choice=choice)
    assert (model.tools_seen and [t["function"]["name"] for t in model.tools_seen]) == offered


def test_closing_a_stream_cancels_the_generation(default_gguf):
    model = ScriptedModel(default_gguf, ["word " * 400, "next"], delay=0.02)  # the first reply: ~8 s in all
    with running_server(model) as url:
        c = client(url)
        stream = ask(c, model="scripted", stream=True)
        got = [next(stream) for _ in range(4)]
        assert any(ch.choices[0].delta.content for ch in got)
        stream.close()
        start = time.monotonic()
        reply = ask(c, model="scripted")  # waits for its turn: the cancelled one must stop first
        assert reply.choices[0].message.content == "next"
        assert time.monotonic() - start < 3


class Overlap(ScriptedModel):
    """Counts generations running at once."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.running = self.most = 0

    def _token_ids(self, *a):
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            yield from super()._token_ids(*a)
        finally:
            self.running -= 1


def test_concurrent_requests_are_served_one_after_the_other(default_gguf):
    model = Overlap(default_gguf, ["one two three four", "five six seven eight"], delay=0.05)
    with running_server(model) as url:
        c = client(url)
        replies = []
        threads = [threading.Thread(target=lambda: replies.append(ask(c, model="scripted").choices[0].message.content))
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(replies) == ["five six seven eight", "one two three four"]
        assert model.most == 1


def test_a_full_queue_is_a_429(default_gguf):
    model = ScriptedModel(default_gguf, ["word " * 60, "b"], delay=0.02)
    with running_server(model, max_waiting=0) as url:
        c = client(url)
        stream = ask(c, model="scripted", stream=True)
        next(stream)  # the first request holds the model
        with pytest.raises(openai.RateLimitError) as e:
            ask(c, model="scripted")
        assert e.value.status_code == 429 and e.value.body["code"] == "queue_full"
        stream.close()


def _error(call) -> tuple[int, dict]:
    with pytest.raises(openai.APIStatusError) as e:
        call()
    assert set(e.value.body) == {"message", "type", "param", "code"}  # OpenAI's error object
    return e.value.status_code, e.value.body


def test_errors_have_openai_shapes_and_status_codes(default_gguf):
    model = ScriptedModel(default_gguf, [], context_length=64)
    with running_server(model, api_key="s3cret") as url:
        c = client(url, "s3cret")
        status, body = _error(lambda: ask(c, model="gpt-4"))
        assert status == 404 and body["code"] == "model_not_found" and "scripted" in body["message"]
        status, body = _error(lambda: ask(c, model="scripted", messages=[{"role": "user", "content": "word " * 100}]))
        assert status == 400 and body["code"] == "context_length_exceeded"
        n = len(model.encode_chat([{"role": "user", "content": "word " * 100}]))
        assert f"the prompt is {n} tokens, {n - 64 + 1} more than the context window of 64" in body["message"]
        status, body = _error(lambda: ask(c, model="scripted", messages=[{"role": "robot", "content": "x"}]))
        assert status == 400 and body["param"] == "messages.0.role" and "messages.0.role" in body["message"]
        status, body = _error(lambda: ask(c, model="scripted", max_tokens=0))
        assert status == 400 and body["param"] == "max_tokens"
        status, body = _error(lambda: ask(client(url, "wrong"), model="scripted"))
        assert status == 401 and body["code"] == "invalid_api_key"
        status, body = _error(lambda: c.post("/nowhere", cast_to=object, body={}))
        assert status == 404
        request = urllib.request.Request(url + "/chat/completions", data=b"{not json", method="POST",
                                         headers={"Authorization": "Bearer s3cret", "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request)
        assert e.value.code == 400 and "not valid JSON" in json.load(e.value)["error"]["message"]


def test_serve_binds_loopback_by_default():
    from chatapp.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 8000, None)


def test_reasoning_comes_back_as_reasoning_content(default_gguf):
    """A reply that thinks first: its block is `reasoning_content` (message and deltas), never content."""
    from thinking import QWEN3_STYLE

    reply = "<think>\nFrance's capital.\n</think>\n\nParis."
    model = ScriptedModel(default_gguf, [reply, reply], template=QWEN3_STYLE)
    with running_server(model) as url:
        c = client(url)
        whole = ask(c, model="scripted", temperature=0)
        chunks = list(ask(c, model="scripted", temperature=0, stream=True))
    message = whole.choices[0].message
    assert message.content == "Paris."
    assert message.model_extra["reasoning_content"] == "France's capital.\n"
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == "France's capital.\n"
    assert "".join(d.content or "" for d in deltas) == "Paris."


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 20}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"]}}}
ALARM = {"type": "function", "function": {"name": "set_alarm", "parameters": {"type": "object", "properties": {
    "hour": {"type": "integer", "minimum": 0, "maximum": 23}}, "required": ["hour"]}}}


@pytest.mark.parametrize("choice, name", [("required", None), ({"type": "function", "function": {"name": "set_alarm"}},
                                                                "set_alarm")])
def test_required_and_named_tool_choice_force_a_valid_call(default_server, choice, name):
    import jsonschema

    reply = ask(client(default_server), messages=[{"role": "user", "content": "Hi there!"}], tools=[WEATHER, ALARM],
                tool_choice=choice, max_tokens=64, temperature=0)
    (call,) = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls"
    assert name is None or call.function.name == name
    schema = {"get_weather": WEATHER, "set_alarm": ALARM}[call.function.name]["function"]["parameters"]
    jsonschema.validate(json.loads(call.function.arguments), schema)


def test_response_format_json_schema_constrains_the_reply(default_server):
    import jsonschema

    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 20},
                                               "sure": {"type": "boolean"}}, "required": ["answer", "sure"]}
    reply = ask(client(default_server), max_tokens=48, temperature=0,
                response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
    with pytest.raises(openai.BadRequestError, match="response_format type"):
        ask(client(default_server), max_tokens=4, response_format={"type": "yaml"})
