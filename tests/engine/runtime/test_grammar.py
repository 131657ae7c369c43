"""Grammar-constrained decoding (engine/runtime/grammar.py) on the real default model, both backends."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

import engine
from engine.errors import RequestError
from engine.results import GenerationResult
from engine.runtime.grammar import Constraint, apply_bitmask, chat_constraint
from engine.text.tokenizer import load_tokenizer
from engine.text.toolcalls import parse_tool_calls


def tool(name: str, description: str, parameters: dict) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


TOOLS = [
    tool("get_weather", "The weather in a city", {"type": "object", "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 24},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}),
    tool("set_alarm", "Set an alarm clock", {"type": "object", "properties": {
        "hour": {"type": "integer", "minimum": 0, "maximum": 23},
        "minute": {"type": "integer", "minimum": 0, "maximum": 59},
        "repeat": {"type": "string", "enum": ["once", "daily", "weekdays"]}}, "required": ["hour", "minute", "repeat"]}),
    tool("add_contact", "Save a person to the address book", {"type": "object", "properties": {
        "person": {"type": "object", "properties": {
            "first": {"type": "string", "minLength": 1, "maxLength": 12},
            "last": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["first", "last", "age"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 1, "maxItems": 3}},
        "required": ["person", "tags"]}),
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
PROMPTS = [
    "What's the weather like in Paris?", "Wake me up at 6:45 every day.", "Save my friend Ada Lovelace, she is 36.",
    "Is it cold in Oslo right now, in fahrenheit?", "Set an alarm for noon on weekdays.",
    "Add Bob Smith to my contacts as a coworker.", "Will it rain in Tokyo tomorrow?", "Remind me at 23:59 once.",
    "New contact: Grace Hopper, 85, tags navy and computing.", "How hot is it in Cairo?", "alarm 5am",
    "Please store Linus, age 54, friend.", "Temperature in Lima in celsius please", "I need to get up at half past seven.",
    "Remember my dentist, Dr. Jones.", "Weather?", "Set a daily alarm at 21:15.", "Put Marie Curie in my address book.",
    "Is it sunny in Sydney?", "Hello! Can you help me?",
]


def result_of(events) -> GenerationResult:
    *_, last = events
    assert isinstance(last, GenerationResult)
    return last


@pytest.fixture(scope="module")
def gguf_model(default_gguf):
    model = engine.load("smollm2-135m", backend="gguf")
    model.sampling_defaults = {}
    return model


@pytest.fixture(scope="module")
def tokenizer(default_metadata):
    return load_tokenizer(default_metadata)


@pytest.fixture
def models(default_model, gguf_model):
    return {"native": default_model, "gguf": gguf_model}


def the_call(text: str):
    parsed = parse_tool_calls(text, list(SCHEMAS))
    assert parsed.errors == [] and len(parsed.tool_calls) == 1, text
    return parsed.tool_calls[0]


# -- the constraint's phases, on the real tokenizer --------------------------------------------------


def allowed(mask: torch.Tensor | None, vocab: int) -> set[int] | None:
    if mask is None:
        return None
    logits = apply_bitmask(torch.zeros(vocab), mask)
    return set(torch.nonzero(torch.isfinite(logits)).flatten().tolist())


def test_auto_is_free_until_the_call_marker_then_follows_the_grammar_then_is_free_again(default_model):
    tok = default_model.tokenizer
    shown, constraint = chat_constraint(tok, default_model.template, TOOLS, "auto")
    assert shown == TOOLS
    for piece in tok.encode("Sure, let me check. ", add_special=False):
        assert constraint.bitmask() is None  # free text: nothing masked
        constraint.advance(piece)
    for piece in tok.encode("<tool_call>", add_special=False, parse_special=True):
        assert constraint.bitmask() is None
        constraint.advance(piece)
    newline = tok.encode("\n", add_special=False)
    assert allowed(constraint.bitmask(), tok.vocab_size) == set(newline)  # Hermes' newline, forced
    constraint.advance(newline[0])
    first = allowed(constraint.bitmask(), tok.vocab_size)
    assert first and all(tok.token_bytes(i).startswith(b"{") for i in first)
    body = json.dumps({"name": "set_alarm", "arguments": {"hour": 7, "minute": 30, "repeat": "once"}})
    for piece in tok.encode(body, add_special=False):
        assert piece in allowed(constraint.bitmask(), tok.vocab_size)
        constraint.advance(piece)
    close = tok.encode("\n</tool_call>", add_special=False, parse_special=True)
    for piece in close:  # the closing marker is forced
        assert allowed(constraint.bitmask(), tok.vocab_size) == {piece}
        constraint.advance(piece)
    assert constraint.bitmask() is None and constraint.calls == 1


def test_the_grammar_refuses_an_unknown_tool_and_an_integer_out_of_range(tokenizer, default_model):
    _, constraint = chat_constraint(tokenizer, default_model.template, TOOLS, "required")
    for piece in tokenizer.encode("<tool_call>\n", add_special=False, parse_special=True):
        constraint.advance(piece)
    for piece in tokenizer.encode('{"name": "set_alarm", "arguments": {"hour": ', add_special=False):
        constraint.advance(piece)
    ok = allowed(constraint.bitmask(), tokenizer.vocab_size)
    assert tokenizer.encode("2", add_special=False)[0] in ok
    texts = [tokenizer.token_bytes(i) for i in ok]
    assert not any(t.startswith((b"-", b'"')) for t in texts)  # 0..23 only
    constraint.advance(tokenizer.encode("9", add_special=False)[0])
    after_nine = allowed(constraint.bitmask(), tokenizer.vocab_size)
    assert not any(tokenizer.token_bytes(i)[:1].isdigit() for i in after_nine)  # 90..99 > 23
    _, fresh = chat_constraint(tokenizer, default_model.template, TOOLS, "required")
    for piece in tokenizer.encode('<tool_call>\n{"name": "', add_special=False, parse_special=True):
        fresh.advance(piece)
    ok = allowed(fresh.bitmask(), tokenizer.vocab_size)
    assert {tokenizer.token_bytes(i)[:1] for i in ok} <= {b"g", b"s", b"a"}  # the three tools' names


def test_bad_requests_get_one_clear_error(tokenizer, default_model):
    template = default_model.template
    with pytest.raises(RequestError, match="tool_choice must be"):
        chat_constraint(tokenizer, template, TOOLS, "always")
    with pytest.raises(RequestError, match="not among the tools"):
        chat_constraint(tokenizer, template, TOOLS, {"type": "function", "function": {"name": "rm_rf"}})
    with pytest.raises(RequestError, match="needs tools"):
        chat_constraint(tokenizer, template, None, "required")
    with pytest.raises(RequestError, match="response_format type"):
        chat_constraint(tokenizer, template, None, None, {"type": "yaml"})
    assert chat_constraint(tokenizer, template, TOOLS, "none") == (None, None)


def test_the_mask_reaches_ids_past_the_tokenizer_and_the_last_bit_of_a_word():
    mask = torch.zeros(2, dtype=torch.int32)
    mask[0] = -(1 << 31)  # bit 31: token 31
    logits = apply_bitmask(torch.zeros(70), mask)  # 70 > 64 ids: the padded ones are refused too
    assert torch.isfinite(logits).nonzero().flatten().tolist() == [31]


# -- the real model ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["native", "gguf"])
def test_required_gives_a_valid_call_for_every_prompt(backend, models):
    model = models[backend]
    names = set()
    for i, prompt in enumerate(PROMPTS):
        result = result_of(model.chat([{"role": "user", "content": prompt}], tools=TOOLS, tool_choice="required",
                                      max_tokens=160, temperature=0.8, seed=i))  # (digits are a token each)
        call = the_call(result.text)
        assert result.finish_reason == "stop", result.text
        jsonschema.validate(call.arguments, SCHEMAS[call.name])
        names.add(call.name)
    assert len(names) >= 2  # the prompts reach more than one tool


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["native", "gguf"])
def test_named_tool_choice_calls_that_tool(backend, models):
    model = models[backend]
    choice = {"type": "function", "function": {"name": "add_contact"}}
    for i, prompt in enumerate(PROMPTS[:3]):
        result = result_of(model.chat([{"role": "user", "content": prompt}], tools=TOOLS, tool_choice=choice,
                                      max_tokens=160, temperature=0.8, seed=i))
        call = the_call(result.text)
        assert call.name == "add_contact"
        jsonschema.validate(call.arguments, SCHEMAS["add_contact"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["native", "gguf"])
def test_response_format_json_schema_replies_parse_and_validate(backend, models):
    model = models[backend]
    schema = {"type": "object", "properties": {
        "title": {"type": "string", "maxLength": 30},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
        "genres": {"type": "array", "items": {"type": "string", "enum": ["drama", "comedy", "action"]},
                   "maxItems": 2}}, "required": ["title", "year", "genres"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "movie", "schema": schema}}
    for i, prompt in enumerate(["Recommend a movie.", "Tell me a joke.", "What is 2+2?"]):
        result = result_of(model.chat([{"role": "user", "content": prompt}], response_format=fmt,
                                      max_tokens=64, temperature=0.8, seed=i))
        jsonschema.validate(json.loads(result.text), schema)
    result = result_of(model.chat([{"role": "user", "content": "Describe a cat."}],
                                  response_format={"type": "json_object"}, max_tokens=48, temperature=0))
    if result.finish_reason == "stop":  # a length cut leaves an unclosed object, by design
        assert isinstance(json.loads(result.text), dict)
    else:
        assert result.text.startswith("{")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["native", "gguf"])
def test_none_hides_the_tools_and_auto_leaves_plain_answers_alone(backend, models):
    model = models[backend]
    messages = [{"role": "user", "content": "Hello! Can you help me?"}]
    plain = result_of(model.chat(messages, max_tokens=16, temperature=0)).text
    none = result_of(model.chat(messages, tools=TOOLS, tool_choice="none", max_tokens=16, temperature=0)).text
    assert none == plain  # no tools in the prompt, nothing constrained
    with_tools = result_of(model.chat(messages, tools=TOOLS, max_tokens=16, temperature=0)).text
    auto = result_of(model.chat(messages, tools=TOOLS, tool_choice="auto", max_tokens=16, temperature=0)).text
    assert auto == with_tools  # no call started: the same free text as without a grammar


@pytest.mark.slow
def test_chat_session_passes_tool_choice_through(default_model):
    session = engine.ChatSession(default_model)
    result = result_of(session.chat([{"role": "user", "content": "Weather in Rome?"}], tools=TOOLS,
                                    tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                    max_tokens=96, temperature=0))
    call = the_call(result.text)
    assert call.name == "get_weather"
    jsonschema.validate(call.arguments, SCHEMAS["get_weather"])
