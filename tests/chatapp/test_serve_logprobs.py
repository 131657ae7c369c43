"""`chatapp serve` logprobs, driven by the official openai client: the values are the log of the
engine's own token_probs for the same greedy request (tolerance 1e-5), streamed and unstreamed
alike, in OpenAI's chat and legacy completion shapes; bad values are 400s naming the field."""

from __future__ import annotations

import math

import openai
import pytest
from openai.types.chat import ChatCompletionTokenLogprob
from serving import running_server
from tiny_models import TinyConfig, write_tiny_llama

# A reply with emoji: tokens that hold part of a multi-byte character.
MESSAGES = [{"role": "user", "content": "Say hi in French with an emoji"}]
PROMPT = "The capital of France is"


def client(url):
    return openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def gguf_model():
    import engine

    return engine.load("smollm2-135m", backend="gguf", context_length=2048)


@pytest.fixture(scope="module")
def tiny_native(tmp_path_factory):
    from engine.runtime import NativeModel

    path = write_tiny_llama(tmp_path_factory.mktemp("serve") / "tiny.gguf", TinyConfig(seed=3, weight_scale=0.1))
    return NativeModel(path, device="cpu", dtype="float32")


def _same_as_engine(entries, rows, tokenizer, top):
    """entries: the server's parsed ChatCompletionTokenLogprob list; rows: the engine's TokenProb."""
    rows = [r for r in rows if r.id not in tokenizer.eos_ids]  # the end token is not part of the reply
    assert len(entries) == len(rows) > 3
    for entry, row in zip(entries, rows):
        assert isinstance(entry, ChatCompletionTokenLogprob)
        assert entry.token == row.text and bytes(entry.bytes) == tokenizer.token_bytes(row.id)
        assert entry.logprob == pytest.approx(math.log(row.prob), abs=1e-5)
        assert len(entry.top_logprobs) == top
        assert [(t.token, bytes(t.bytes)) for t in entry.top_logprobs] == [
            (s, tokenizer.token_bytes(i)) for i, s, _ in row.top]
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx([math.log(p) for _, _, p in row.top], abs=1e-5)


def _agree(a, b) -> bool:
    """Two lists of entries: the same tokens, logprobs within 1e-5 (a reused KV cache may round
    differently from a fresh prefill)."""
    shape = lambda es: [(e.token, e.bytes, [(t.token, t.bytes) for t in e.top_logprobs]) for e in es]
    values = lambda es: [v for e in es for v in (e.logprob, *(t.logprob for t in e.top_logprobs))]
    return shape(a) == shape(b) and values(a) == pytest.approx(values(b), abs=1e-5)


def _streamed(stream):
    chunks = [ch for ch in stream if ch.choices]
    entries = [e for ch in chunks if ch.choices[0].logprobs for e in ch.choices[0].logprobs.content]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    return chunks, entries, text


@pytest.mark.parametrize("which", ["gguf", "native"])
def test_chat_logprobs_are_the_engines_token_probs(which, request):
    model = request.getfixturevalue("gguf_model" if which == "gguf" else "tiny_native")
    messages = MESSAGES if which == "gguf" else [{"role": "user", "content": "the"}]
    local = list(model.chat(messages, max_tokens=24, temperature=0, token_probs=3))[-1]
    with running_server(model) as url:
        ask = lambda **kw: client(url).chat.completions.create(model=model.name, messages=messages, max_tokens=24,
                                                               temperature=0, logprobs=True, top_logprobs=3, **kw)
        whole = ask()
        chunks, streamed, text = _streamed(ask(stream=True))
    content, entries = whole.choices[0].message.content, whole.choices[0].logprobs.content
    _same_as_engine(entries, local.token_probs, model.tokenizer, 3)
    # The tokens' bytes are the reply; their text too, where no token splits a character.
    assert bytes(b for e in entries for b in e.bytes).decode() == content == local.text
    if which == "gguf":
        assert any("\ufffd" in e.token for e in entries)  # the emoji's pieces: bytes, not text
    else:
        assert "".join(e.token for e in entries) == content
    # Streamed: the same entries, each with the chunk of its text.
    assert text == content and _agree(streamed, entries)
    for ch in chunks:
        lp = ch.choices[0].logprobs
        assert lp is None or ch.choices[0].delta.content or ch.choices[0].finish_reason
    raw, sent = b"", ""
    for ch in chunks:  # the text sent so far is what its tokens' bytes hold (a split character: once whole)
        lp = ch.choices[0].logprobs
        raw += bytes(b for e in (lp.content if lp else []) for b in e.bytes)
        sent += ch.choices[0].delta.content or ""
        assert raw.decode("utf-8", "ignore") == sent


def test_completion_logprobs_in_the_legacy_shape(gguf_model):
    local = list(gguf_model.generate(PROMPT, max_tokens=8, temperature=0, token_probs=2))[-1]
    with running_server(gguf_model) as url:
        ask = lambda **kw: client(url).completions.create(model=gguf_model.name, prompt=PROMPT, max_tokens=8,
                                                          temperature=0, logprobs=2, **kw)
        whole = ask()
        chunks = list(ask(stream=True))
    choice = whole.choices[0]
    lp = choice.logprobs
    assert lp.tokens == [r.text for r in local.token_probs] and choice.text == local.text
    assert lp.token_logprobs == pytest.approx([math.log(r.prob) for r in local.token_probs], abs=1e-5)
    for top, row in zip(lp.top_logprobs, local.token_probs):
        assert top == pytest.approx({s: math.log(p) for _, s, p in row.top}, abs=1e-5)
    # text_offset: where each token starts in the completion text.
    assert [choice.text[o:].startswith(t) for o, t in zip(lp.text_offset, lp.tokens)] == [True] * len(lp.tokens)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    streamed = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for ch in chunks:
        if ch.choices and ch.choices[0].logprobs:
            for key in streamed:
                streamed[key] += getattr(ch.choices[0].logprobs, key)
    assert streamed == lp.model_dump()
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == choice.text


def test_without_logprobs_the_field_is_null(gguf_model):
    with running_server(gguf_model) as url:
        c = client(url)
        reply = c.chat.completions.create(model=gguf_model.name, messages=MESSAGES, max_tokens=3)
        chunks = [ch for ch in c.chat.completions.create(model=gguf_model.name, messages=MESSAGES, max_tokens=3,
                                                         stream=True) if ch.choices]
        done = c.completions.create(model=gguf_model.name, prompt=PROMPT, max_tokens=3)
    assert reply.choices[0].logprobs is None and done.choices[0].logprobs is None
    assert all(ch.choices[0].logprobs is None for ch in chunks)


@pytest.mark.parametrize("route, fields, param, says", [
    ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs", "less than or equal to 20"),
    ("chat", {"logprobs": True, "top_logprobs": -1}, "top_logprobs", "greater than or equal to 0"),
    ("chat", {"top_logprobs": 2}, "top_logprobs", 'needs "logprobs": true'),
    ("chat", {"logprobs": False, "top_logprobs": 2}, "top_logprobs", 'needs "logprobs": true'),
    ("chat", {"logprobs": "yes"}, "logprobs", "valid boolean"),
    ("completion", {"logprobs": 6}, "logprobs", "less than or equal to 5"),
    ("completion", {"logprobs": True}, "logprobs", "valid integer"),
])
def test_bad_logprobs_fields_are_400s_naming_the_field(gguf_model, route, fields, param, says):
    with running_server(gguf_model) as url:
        c = client(url)
        with pytest.raises(openai.BadRequestError) as e:
            if route == "chat":
                c.chat.completions.create(model=gguf_model.name, messages=MESSAGES, max_tokens=2, extra_body=fields)
            else:
                c.completions.create(model=gguf_model.name, prompt=PROMPT, max_tokens=2, extra_body=fields)
    body = e.value.body
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"
    assert body["param"] == param and says in body["message"]
