"""Remote models (source = "remote"): the RemoteModel against our own server, llama-cpp-python's
server, and servers that fail in each way a network server can."""

from __future__ import annotations

import time

import pytest
from scripted import ScriptedModel
from serving import chatapp_serve, llama_cpp_server, running_app, running_server

import engine
from engine import GenerationResult, RegistryError, RemoteError, RequestError, TextDelta
from engine.hub.registry import load_registry
from engine.runtime.remote import RemoteModel

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
HI = [{"role": "user", "content": "Say hello."}]


def entry(tmp_path, body: str):
    path = tmp_path / "models.toml"
    path.write_text(f'default = "far"\n[models.far]\n{body}\n')
    return path


def split(events):
    events = list(events)
    assert all(isinstance(e, TextDelta) for e in events[:-1]) and isinstance(events[-1], GenerationResult)
    return "".join(e.text for e in events[:-1]), events[-1]


@pytest.mark.parametrize("body, says", [
    ('source = "remote"\nmodel = "m"', "needs 'base_url'"),
    ('source = "remote"\nbase_url = "gpu-box:8000"\nmodel = "m"', "must be an http(s) URL"),
    ('source = "remote"\nbase_url = "http://h/v1"\nmodel = "m"\napi_key_env = "sk-abc123"', "never the key itself"),
    ('source = "remote"\nbase_url = "http://h/v1"\nmodel = "m"\nfile = "x.gguf"', "remove 'file'"),
    ('source = "path"\npath = "/x.gguf"\nbase_url = "http://h/v1"', "only apply to source = 'remote'"),
])
def test_a_malformed_remote_entry_is_one_clear_registry_error(tmp_path, body, says):
    with pytest.raises(RegistryError, match="models.far") as e:
        load_registry([entry(tmp_path, body)])
    assert says in str(e.value)


def test_remote_entries_have_no_local_files(tmp_path):
    spec = load_registry([entry(tmp_path, 'source = "remote"\nbase_url = "http://gpu-box:8000/v1"\nmodel = "m"')]).get("far")
    assert (spec.is_remote, spec.host) == (True, "gpu-box:8000")
    assert engine.find_local(spec) is None
    with pytest.raises(RequestError, match="nothing to download"):
        engine.pull(spec)


@pytest.fixture(scope="module")
def scripted_server(default_gguf):
    model = ScriptedModel(default_gguf, [])
    with running_server(model, api_key="k") as url:
        yield model, url


def test_engine_load_reaches_our_server_and_streams_the_same_events(scripted_server, tmp_path, monkeypatch):
    model, url = scripted_server
    model.replies[:] = ["Hello there.", CALL, "Once upon a time"]
    monkeypatch.setenv("FAR_KEY", "k")
    monkeypatch.setenv("CHATAPP_MODELS_TOML", str(entry(tmp_path, f'source = "remote"\nbase_url = "{url}"\nmodel = "scripted"\napi_key_env = "FAR_KEY"')))
    remote = engine.load("far")
    assert isinstance(remote, RemoteModel) and remote.where == f"remote · {url.split('/')[2]}"
    assert remote.context_length == 8192  # from the server's max_model_len
    text, result = split(remote.chat(HI, max_tokens=50))
    assert text == "Hello there." and result.finish_reason == "stop"
    assert result.prompt_tokens == len(model.encode_chat(HI)) and result.completion_tokens > 0
    # Our server parses the call; the remote model hands it on parsed.
    text, result = split(remote.chat(HI, tools=TOOLS))
    assert text == "" and [(c.name, c.arguments) for c in result.tool_calls] == [("get_weather", {"city": "Paris"})]
    text, result = split(remote.generate("Tell me a story:", max_tokens=50))
    assert text == "Once upon a time"
    with pytest.raises(RequestError, match="not available on a remote model"):
        remote.logits([1, 2, 3])
    # ChatSession (what the TUI uses) passes straight through.
    model.replies[:] = ["Again."]
    assert split(engine.ChatSession(remote).chat(HI))[0] == "Again."


def test_a_refused_key_and_an_unknown_model_are_clear(scripted_server, monkeypatch):
    _, url = scripted_server
    with pytest.raises(RemoteError, match=r"refused the API key \(HTTP 401.*set FAR_KEY"):
        monkeypatch.setenv("FAR_KEY", "wrong")
        RemoteModel(url, "scripted", api_key_env="FAR_KEY")
    with pytest.raises(RemoteError, match="FAR_KEY .* is not set"):
        monkeypatch.delenv("FAR_KEY")
        RemoteModel(url, "scripted", api_key_env="FAR_KEY")
    with pytest.raises(RemoteError, match="does not serve a model named 'gpt-4'"):
        RemoteModel(url, "gpt-4", api_key="k")


def test_an_unreachable_host_fails_fast():
    from serving import free_port

    start = time.monotonic()
    with pytest.raises(RemoteError, match=r"cannot reach 127\.0\.0\.1:\d+ .*is the server running"):
        RemoteModel(f"http://127.0.0.1:{free_port()}/v1", "m")
    assert time.monotonic() - start < 10


def test_a_malformed_stream_is_one_clear_error():
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def chat(request):
        async def body():
            yield b'data: {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'
            yield b"data: this is not json\n\n"
        return StreamingResponse(body(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])
    with running_app(app) as url:
        remote = RemoteModel(url, "m")
        got = []
        with pytest.raises(RemoteError, match="malformed stream"):
            for event in remote.chat(HI):
                got.append(event)
        assert got == [TextDelta("Hi")]  # the partial reply reached the caller


@pytest.mark.slow
def test_a_server_killed_mid_stream_is_one_clear_error_and_keeps_the_partial_reply():
    with chatapp_serve() as (proc, url):
        remote = RemoteModel(url, "smollm2-135m")
        got = []
        with pytest.raises(RemoteError) as e:
            for event in remote.chat([{"role": "user", "content": "Write a long story about a dragon."}],
                                     max_tokens=400, temperature=0):
                got.append(event)
                if len(got) == 3:
                    proc.kill()
        assert "broke" in str(e.value) or "ended without a finish reason" in str(e.value)
        assert len(got) >= 3 and all(isinstance(g, TextDelta) for g in got)


@pytest.mark.slow
def test_against_llama_cpp_pythons_own_server(default_gguf, tmp_path, monkeypatch):
    with llama_cpp_server(default_gguf, "smol") as (_, url):
        monkeypatch.setenv("CHATAPP_MODELS_TOML", str(entry(tmp_path, f'source = "remote"\nbase_url = "{url}"\nmodel = "smol"')))
        remote = engine.load("far")
        text, result = split(remote.chat([{"role": "user", "content": "What is the capital of France?"}],
                                         max_tokens=16, temperature=0))
        assert text.strip() and result.finish_reason in ("stop", "length") and 1 <= result.completion_tokens <= 16
        text, result = split(remote.generate("The capital of France is", max_tokens=4, temperature=0))
        assert text and result.finish_reason == "length"
