"""Tool calls parsed out of model replies: Hermes/Qwen tags and Llama 3.x bare JSON."""

import json
import random

from engine.text.toolcalls import ParsedReply, ToolCall, parse_tool_calls

TOOLS = {"calculator", "current_datetime"}


def test_single_hermes_call():
    raw = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>'
    reply = parse_tool_calls("Let me compute that.\n" + raw)
    assert reply.content == "Let me compute that."
    assert reply.errors == []
    [call] = reply.tool_calls
    assert (call.name, call.arguments, call.raw) == ("calculator", {"expression": "2+2"}, raw)
    assert call.id.startswith("call_") and len(call.id) > len("call_")


def test_several_hermes_calls_keep_order_and_get_distinct_ids():
    text = (
        '<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n'
        'between\n'
        '<tool_call>{"name": "b", "arguments": {"y": [1, 2]}}</tool_call>'
    )
    reply = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("a", {"x": 1}), ("b", {"y": [1, 2]})]
    assert reply.content == "between"
    assert len({c.id for c in reply.tool_calls}) == 2


def test_string_encoded_arguments():
    text = '<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"1+1\\"}"}</tool_call>'
    [call] = parse_tool_calls(text).tool_calls
    assert call.arguments == {"expression": "1+1"}


def test_missing_closing_tag_at_the_end():
    text = 'ok <tool_call>\n{"name": "current_datetime", "arguments": {"timezone": "UTC"}}\n'
    reply = parse_tool_calls(text)
    assert reply.errors == []
    assert reply.content == "ok"
    [call] = reply.tool_calls
    assert call.arguments == {"timezone": "UTC"}
    assert call.raw == text[3:]


def test_missing_arguments_mean_none_and_a_given_id_is_kept():
    [call] = parse_tool_calls('<tool_call>{"name": "current_datetime", "id": "abc"}</tool_call>').tool_calls
    assert (call.id, call.arguments) == ("abc", {})


def test_malformed_json_is_an_error_and_stays_in_content():
    bad = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}</tool_call>'
    good = '<tool_call>{"name": "current_datetime", "arguments": {}}</tool_call>'
    reply = parse_tool_calls(f"before {bad} after {good}")
    assert [c.name for c in reply.tool_calls] == ["current_datetime"]
    assert len(reply.errors) == 1 and "invalid JSON" in reply.errors[0]
    assert reply.content == f"before {bad} after"


def test_calls_without_a_name_or_with_non_object_arguments_are_errors():
    for body, message in [
        ('{"arguments": {}}', 'missing "name"'),
        ('{"name": "", "arguments": {}}', 'missing "name"'),
        ('{"name": "calculator", "arguments": [1, 2]}', "must be a JSON object"),
        ('{"name": "calculator", "arguments": "not json"}', "not valid JSON"),
        ('["calculator"]', "expected a JSON object"),
        ('{"name": "calculator"} trailing', "unexpected text"),
    ]:
        text = f"<tool_call>{body}</tool_call>"
        reply = parse_tool_calls(text)
        assert reply.tool_calls == [], body
        assert len(reply.errors) == 1 and message in reply.errors[0], (body, reply.errors)
        assert reply.content == text


def test_unknown_tool_names_are_still_calls_in_tags():
    text = '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>'
    [call] = parse_tool_calls(text, TOOLS).tool_calls
    assert call.name == "launch_rockets"


def test_llama_bare_json_with_parameters():
    text = '{"name": "calculator", "parameters": {"expression": "6*7"}}'
    reply = parse_tool_calls(text, TOOLS)
    assert reply == ParsedReply("", [reply.tool_calls[0]], [])
    call = reply.tool_calls[0]
    assert (call.name, call.arguments, call.raw) == ("calculator", {"expression": "6*7"}, text)


def test_llama_python_tag_and_several_calls():
    text = ('<|python_tag|>{"name": "calculator", "parameters": {"expression": "1"}}; '
            '{"name": "current_datetime", "arguments": {"timezone": "UTC"}}')
    reply = parse_tool_calls(text, TOOLS)
    assert reply.content == "" and reply.errors == []
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [
        ("calculator", {"expression": "1"}), ("current_datetime", {"timezone": "UTC"})]
    assert reply.tool_calls[1].raw == '{"name": "current_datetime", "arguments": {"timezone": "UTC"}}'


def test_python_tag_announces_a_call_even_for_an_unknown_name():
    [call] = parse_tool_calls('<|python_tag|>{"name": "web_search", "parameters": {"q": "x"}}<|eom_id|>',
                              TOOLS).tool_calls
    assert (call.name, call.arguments) == ("web_search", {"q": "x"})


def test_python_tag_with_something_unparseable_is_an_error():
    text = '<|python_tag|>brave_search.call(query="weather")'
    reply = parse_tool_calls(text, TOOLS)
    assert reply.tool_calls == [] and reply.content == text and len(reply.errors) == 1


def test_plain_json_answers_are_not_calls():
    for text, tool_names in [
        ('{"name": "Alice", "age": 30}', TOOLS),                       # a JSON answer about a person
        ('{"name": "calculator", "parameters": {}}', None),            # no tools offered
        ('{"result": 4}', TOOLS),
        ('[{"name": "calculator", "parameters": {}}]', TOOLS),
        ('{"name": "calculator", "parameters": {}} and some prose', TOOLS),
        ('{"name": "calculator", "parameters": {}}; {"name": "Bob"}', TOOLS),
        ('{"name": "calc', TOOLS),
    ]:
        assert parse_tool_calls(text, tool_names) == ParsedReply(text, [], []), text


def test_bare_json_in_a_code_fence():
    text = '```json\n{"name": "calculator", "parameters": {"expression": "2"}}\n```'
    [call] = parse_tool_calls(text, TOOLS).tool_calls
    assert call.arguments == {"expression": "2"}


def test_plain_text_passes_through():
    assert parse_tool_calls("  Hello there!  ", TOOLS) == ParsedReply("Hello there!", [], [])
    assert parse_tool_calls("", TOOLS) == ParsedReply("", [], [])


def test_to_openai():
    call = ToolCall(id="call_1", name="calculator", arguments={"expression": "π*2"}, raw="")
    assert call.to_openai() == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "calculator", "arguments": '{"expression": "π*2"}'},
    }
    assert json.loads(call.to_openai()["function"]["arguments"]) == call.arguments


def test_never_raises_on_random_input():
    pieces = ["<tool_call>", "</tool_call>", "<|python_tag|>", "{", "}", "[", "]", '"name"', '"arguments"',
              '"parameters"', ":", ",", ";", '"calculator"', '"', "\\", "null", "1e999", "NaN", "-",
              "```", "json", "\n", " ", "\x00", "é", "[[[[[[[[", "{" * 50, '"a":']
    rng = random.Random(1234)
    for _ in range(400):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        reply = parse_tool_calls(text, rng.choice([None, TOOLS]))
        assert isinstance(reply.content, str)
        for call in reply.tool_calls:
            assert isinstance(call.name, str) and call.name
            assert isinstance(call.arguments, dict)
            assert call.raw in text
    # deep nesting and non-string input
    assert parse_tool_calls("<tool_call>" + "[" * 100_000).tool_calls == []
    assert parse_tool_calls("{" + '"a":[' * 100_000, TOOLS).tool_calls == []
    assert parse_tool_calls(None).content == ""  # type: ignore[arg-type]
