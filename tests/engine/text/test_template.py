"""Chat templates: exact prompts for real templates, agreement with independent renderers, and
hostile templates that must fail with TemplateError, quickly."""

import json
from datetime import datetime

import pytest

import engine.text.template as template_module
import engine.text.template_sandbox as sandbox_module
from engine.errors import TemplateError
from engine.text.template import CHATML_TEMPLATE, ChatTemplate

SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3? Answer in français, s'il vous plaît."},
]

# Meta's Llama 3 Instruct template, as shipped in tokenizer_config.json / GGUF files
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Exercises what real templates (Mistral, Cohere, Nemotron, Llama 3.1) lean on: macros with
# namespaces, selectattr/map/unique/sort/join, list concatenation, slicing, str methods, dict
# items(), loop controls, tojson options, % and format: none of it may trip the sandbox limits.
FEATURE_RICH_TEMPLATE = """{%- macro tool_index(messages, wanted) %}
{%- set counter = namespace(value=0, seen=false) %}
{%- for msg in messages %}
    {%- for call in msg.tool_calls or [] %}
        {%- if call.id == wanted and not counter.seen -%}
            {{ counter.value }}
            {%- set counter.seen = true %}
        {%- endif %}
        {%- set counter.value = counter.value + 1 %}
    {%- endfor %}
{%- endfor %}
{%- endmacro %}
{{- bos_token }}
{%- set today = strftime_now("%Y") %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = "Default system, " + today %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if '/no_think' in system_message %}
    {%- set system_message = system_message.replace('/no_think', '') | trim %}
{%- endif %}
{{- '[SYS]' + system_message + '[/SYS]' }}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}
{%- set filtered = [] %}
{%- for message in loop_messages %}
    {%- if message["role"] not in ["tool"] and not message.get("tool_calls") %}
        {%- set filtered = filtered + [message] %}
    {%- endif %}
{%- endfor %}
{{- '(' ~ filtered | length ~ ' plain, ' ~ (loop_messages | map(attribute='role') | unique | sort | join('/')) ~ ')' }}
{%- set seen = namespace(ids=[]) %}
{%- for message in loop_messages %}
    {%- if message.role == 'user' %}
        {%- if tools and message == user_messages[-1] %}
            {{- '[TOOLS]' }}
            {%- for tool in tools %}
                {%- for key, val in tool.function.items() if key != 'return' %}
                    {{- key ~ '=' ~ (val if val is string else val | tojson(sort_keys=true)) ~ ';' }}
                {%- endfor %}
            {%- endfor %}
            {{- '[/TOOLS]' }}
        {%- endif %}
        {{- '[INST]' + message['content'] | upper + '[/INST]' }}
    {%- elif message.tool_calls is defined %}
        {%- for call in message.tool_calls %}
            {%- set out = call.function | tojson %}
            {{- out[:-1] ~ ', "id": "' ~ call.id[-4:] ~ '"}' }}
            {%- if loop.last %}{{ eos_token }}{% else %}{{ ', ' }}{% endif %}
        {%- endfor %}
    {%- elif message.role == 'tool' and message.tool_call_id not in seen.ids %}
        {{- '[RESULTS ' ~ tool_index(messages, message.tool_call_id) ~ ']' ~ message.content | string }}
        {%- for later in loop_messages[loop.index0 + 1:] %}
            {%- if later.role == 'tool' %}
                {{- ',' ~ later.content }}
                {%- set seen.ids = seen.ids + [later.tool_call_id] %}
            {%- else %}
                {%- break %}
            {%- endif %}
        {%- endfor %}
    {%- elif message.role == 'assistant' %}
        {%- set content = message.content.split('</think>')[-1].lstrip() if '</think>' in message.content else message.content %}
        {{- content + eos_token }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '%s|%05d|{}'.format('x') | replace('{}', 'ok') if false else '%s|%05d' % ('gen', 42) }}{% endif %}
"""

FEATURE_RICH_CONVERSATION = [
    {"role": "system", "content": " Be brief /no_think "},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "<think>hmm</think>  hello"},
    {"role": "user", "content": "time?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0001", "type": "function",
         "function": {"name": "now", "arguments": {"tz": "UTC"}}},
        {"id": "call_0002", "type": "function",
         "function": {"name": "now", "arguments": '{"tz": "CET"}'}}]},
    {"role": "tool", "tool_call_id": "call_0001", "content": "12:00"},
    {"role": "tool", "tool_call_id": "call_0002", "content": "13:00"},
    {"role": "assistant", "content": "It is noon."},
]


@pytest.fixture(scope="module")
def smollm(default_metadata):
    """(chat template source, BOS text, EOS text) of the bundled GGUF."""
    tokens = default_metadata["tokenizer.ggml.tokens"]
    bos = tokens[default_metadata["tokenizer.ggml.bos_token_id"]]
    eos = tokens[default_metadata["tokenizer.ggml.eos_token_id"]]
    return default_metadata["tokenizer.chat_template"], bos, eos


@pytest.fixture(scope="module")
def smollm_template(smollm):
    source, bos, eos = smollm
    return ChatTemplate.from_gguf_metadata(
        {"tokenizer.chat_template": source}, bos_token=bos, eos_token=eos
    )


# --- real templates ---------------------------------------------------------------------------


def test_smollm2_template_renders_chatml_exactly(smollm_template):
    assert not smollm_template.is_fallback
    assert smollm_template.render(CONVERSATION) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nAnd 3+3? Answer in français, s'il vous plaît.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_smollm2_template_inserts_its_default_system_line(smollm_template):
    prompt = smollm_template.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert prompt == (
        f"<|im_start|>system\n{SMOLLM_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
    )


def test_smollm2_template_agrees_with_llama_cpp_python(smollm, smollm_template):
    chat_format = pytest.importorskip("llama_cpp.llama_chat_format")
    source, bos, eos = smollm
    for messages in (CONVERSATION, CONVERSATION[1:], CONVERSATION[1:2]):
        for add_generation_prompt in (True, False):
            reference = chat_format.Jinja2ChatFormatter(
                source, eos_token=eos, bos_token=bos, add_generation_prompt=add_generation_prompt
            )(messages=messages).prompt
            ours = smollm_template.render(messages, add_generation_prompt=add_generation_prompt)
            assert ours == reference


@pytest.mark.parametrize("source", ["smollm", "llama3", "chatml"])
def test_agrees_with_transformers(source, smollm):
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    source = {"smollm": smollm[0], "llama3": LLAMA3_TEMPLATE, "chatml": CHATML_TEMPLATE}[source]
    tokens = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    for messages in (CONVERSATION, CONVERSATION[1:]):
        for add_generation_prompt in (True, False):
            rendered, _ = utils.render_jinja_template(
                conversations=[messages], chat_template=source,
                add_generation_prompt=add_generation_prompt, **tokens,
            )
            ours = ChatTemplate(source, **tokens).render(
                messages, add_generation_prompt=add_generation_prompt
            )
            assert ours == rendered[0]


def test_feature_rich_template_agrees_with_transformers():
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    tools = [{"type": "function", "function": {
        "name": "now", "description": "Time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}]
    ours = ChatTemplate(FEATURE_RICH_TEMPLATE, bos_token="<s>", eos_token="</s>").render(
        FEATURE_RICH_CONVERSATION, tools=tools)
    # transformers expects tool-call arguments as objects; we decode OpenAI's JSON text for it
    reference_conversation = json.loads(json.dumps(FEATURE_RICH_CONVERSATION))
    reference_conversation[4]["tool_calls"][1]["function"]["arguments"] = {"tz": "CET"}
    rendered, _ = utils.render_jinja_template(
        conversations=[reference_conversation], tools=tools, chat_template=FEATURE_RICH_TEMPLATE,
        add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
    assert ours == rendered[0]
    assert ours.startswith("<s>[SYS]Be brief[/SYS]") and ours.endswith("gen|00042")
    assert '{"name": "now", "arguments": {"tz": "CET"}, "id": "0002"}</s>' in ours


def test_fallback_with_tools_agrees_with_transformers():
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    tools = [{"type": "function", "function": {"name": "now", "description": "The time",
                                               "parameters": {"type": "object", "properties": {}}}}]
    messages = [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"type": "function", "function": {"name": "now", "arguments": {"tz": "UTC"}}}]},
        {"role": "tool", "content": "12:00"},
    ]
    rendered, _ = utils.render_jinja_template(
        conversations=[messages], tools=tools, chat_template=CHATML_TEMPLATE,
        add_generation_prompt=True)
    assert ChatTemplate(CHATML_TEMPLATE).render(messages, tools=tools) == rendered[0]


def test_llama3_template_with_bos_token():
    template = ChatTemplate(LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    messages = [{"role": "system", "content": "  Be brief.\n"}, {"role": "user", "content": "Hi"}]
    assert template.render(messages) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


# --- the built-in fallback ----------------------------------------------------------------------


@pytest.mark.parametrize("metadata", [{}, {"tokenizer.chat_template": 42},
                                      {"tokenizer.chat_template": "  "}])
def test_fallback_when_the_model_has_no_template(metadata):
    template = ChatTemplate.from_gguf_metadata(metadata, bos_token="<s>", eos_token="</s>")
    assert template.is_fallback
    assert template.render(CONVERSATION[1:3], add_generation_prompt=False) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    )
    assert template.render(CONVERSATION).startswith("<|im_start|>system\nYou are terse.<|im_end|>\n")


def test_fallback_renders_tools_calls_and_results_hermes_style():
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    messages = [
        {"role": "system", "content": "Be helpful."},
        {"role": "user", "content": "Weather in Zürich and Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}},
            {"id": "b", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        ]},
        {"role": "tool", "tool_call_id": "a", "content": "12°C"},
        {"role": "tool", "tool_call_id": "b", "content": "18°C"},
    ]
    prompt = ChatTemplate(CHATML_TEMPLATE).render(messages, tools=tools)
    schema = json.dumps(tools[0], ensure_ascii=False)
    assert prompt.startswith("<|im_start|>system\nBe helpful.\n\n# Tools\n\n")
    assert f"<tools>\n{schema}\n</tools>" in prompt
    assert prompt.endswith(
        "<|im_start|>user\nWeather in Zürich and Paris?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n12°C\n</tool_response>\n"
        "<tool_response>\n18°C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# --- transformers' conventions --------------------------------------------------------------------


def render_source(source: str, **kwargs) -> str:
    return ChatTemplate(source, bos_token="<s>", eos_token="</s>").render(
        [{"role": "user", "content": "x"}], **kwargs)


def test_tojson_like_transformers():
    data = {"b": "é<&>", "a": [1, 2]}
    assert render_source("{{ data | tojson }}", data=data) == '{"b": "é<&>", "a": [1, 2]}'
    assert render_source("{{ data | tojson(indent=2) }}", data=data) == json.dumps(
        data, ensure_ascii=False, indent=2)
    assert render_source("{{ data | tojson(ensure_ascii=True, sort_keys=True) }}", data=data) == (
        '{"a": [1, 2], "b": "\\u00e9<&>"}')
    assert render_source("{{ data | tojson(separators=(',', ':')) }}", data=data) == (
        '{"b":"é<&>","a":[1,2]}')


def test_whitespace_control_loopcontrols_and_globals():
    source = """
{% for message in messages %}
    {% if loop.index0 == 1 %}{% break %}{% endif %}
    [{{ message.role }}]
{% endfor %}
{{ bos_token }}|{{ eos_token }}|{{ strftime_now('%Y') }}
{% generation %}kept{% endgeneration %}
"""
    out = ChatTemplate(source, bos_token="<s>", eos_token="</s>").render(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    # trim_blocks drops the newline after a block tag, lstrip_blocks the indent before one
    assert out == f"\n    [user]\n<s>|</s>|{datetime.now():%Y}\nkept"


def test_extra_variables_and_content_parts():
    source = "{{ date_string }}:{% for m in messages %}{{ m.content }};{% endfor %}"
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"},
                                             {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": None, "tool_calls": []}]
    assert ChatTemplate(source).render(messages, date_string="26 Jul 2024") == (
        "26 Jul 2024:a\nb;None;")


def test_raise_exception_becomes_template_error_with_the_message():
    source = ("{% if messages[0].role != 'user' %}"
              "{{ raise_exception('Conversation roles must start with user') }}{% endif %}ok")
    template = ChatTemplate(source, name="strict template")
    assert template.render([{"role": "user", "content": "hi"}]) == "ok"
    with pytest.raises(TemplateError, match="strict template.*Conversation roles must start"):
        template.render([{"role": "assistant", "content": "hi"}])


# --- hostile templates ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, message",
    [
        ("{{ ''.__class__.__mro__ }}", "unsafe"),
        ("{{ ''.__class__ }}", "unsafe"),
        ("{{ cycler.__init__.__globals__ }}", "unsafe"),
        ("{{ self._TemplateReference__context }}", "unsafe"),
        ("{% set x = [] %}{{ x.append(1) }}", "unsafe"),
        ("{% set d = {} %}{% set _ = d.update({'a': 1}) %}", "unsafe"),
        ("{% set ns = namespace() %}{% set ns.__class__ = 1 %}", "may not start with '_'"),
        ("{% for i in range(10**9) %}x{% endfor %}", "Range too big"),
        ("{% for i in range(100000) %}{% for j in range(100000) %}" + "x" * 1000
         + "{% endfor %}{% endfor %}", "rendered prompt would exceed"),
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
         "loop iterations and calls"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursed too deeply"),
        ("{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
         "{{ f(60) }}", "loop iterations and calls"),
        ("{% for x in range(100000) recursive %}{% if loop.depth < 4 %}"
         "{{ loop(range(100000)) }}{% endif %}{% endfor %}", "loop iterations and calls"),
        ("{{ raise_exception('nope') }}", "rejected the conversation: nope"),
        ("{{ 'a' * 10**9 }}", "repetition would exceed"),
        ("{{ 10 ** (10 ** 10) }}", "integer power is too large"),
        ("{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}"
         "{% endfor %}", "integer product is too large"),
        ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
         "{% endfor %}", "concatenation would exceed"),
        ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
         "{% endfor %}", "concatenation would exceed"),
        ("{% set ns = namespace(l=[1]) %}{% for i in range(100) %}{% set ns.l = [ns.l, ns.l] %}"
         "{% endfor %}{{ ns.l }}", "value would exceed"),
        ("{% set ns = namespace(l=[1]) %}{% for i in range(100) %}{% set ns.l = [ns.l, ns.l] %}"
         "{% endfor %}{{ ns.l | tojson }}", "value would exceed"),
        ("{{ 'x' | center(10**9) }}", "center"),
        ("{{ 'x'.ljust(10**9) }}", "ljust"),
        ("{{ '%*s' % (10**9, 'x') }}", "format field"),
        ("{{ '%1000000000s' | format('x') }}", "format field"),
        ("{{ '{:>{}}'.format('x', 10**9) }}", "format field"),
        ("{% set ns = namespace(s='aaaa') %}{% for i in range(64) %}"
         "{% set ns.s = ns.s | replace('a', 'aa') %}{% endfor %}", "replace"),
        ("{{ ('x\n' * 1000000) | indent(1000) }}", "indent"),
        ("{{ ([['x'] * 1000000] * 1000) | sum(start=[]) }}", "value would exceed"),
        ("{% include 'other.jinja' %}", "failed to render"),
        ("{{ messages[0].nothing.deeper }}", "UndefinedError"),
        ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nested too deeply"),
    ],
)
def test_hostile_templates_raise_template_error(source, message, monkeypatch):
    monkeypatch.setattr(sandbox_module, "MAX_STEPS", 20_000)  # keeps the budget tests short
    with pytest.raises(TemplateError, match=message) as caught:
        ChatTemplate(source, name="hostile template").render([{"role": "user", "content": "hi"}])
    assert "hostile template" in str(caught.value)
    assert caught.value.__cause__ is None  # the CLI prints one line; no chained traceback


def test_slow_templates_hit_the_time_limit(monkeypatch):
    monkeypatch.setattr(sandbox_module, "MAX_SECONDS", 0.2)
    source = "{% for i in range(100000) %}{% set x = range(100000) | list | length %}{% endfor %}"
    with pytest.raises(TemplateError, match="longer than 0.2 s"):
        ChatTemplate(source).render([{"role": "user", "content": "hi"}])


def test_runtime_errors_name_the_line():
    with pytest.raises(TemplateError, match="at line 3"):
        ChatTemplate("ok\nok\n{{ 1 / 0 }}").render([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("source", ["hello\n{% for x in %}", "{% if %}", "{{ x | no_such_filter }}",
                                    "{% endfor %}"])
def test_syntax_errors_name_the_template_and_line(source):
    with pytest.raises(TemplateError, match=r"my template has a syntax error at line \d"):
        ChatTemplate(source, name="my template")


def test_syntax_error_line_number():
    with pytest.raises(TemplateError, match="line 2"):
        ChatTemplate("hello\n{% for x in %}")


def test_template_source_must_be_a_reasonable_string():
    with pytest.raises(TemplateError):
        ChatTemplate(None)  # type: ignore[arg-type]
    with pytest.raises(TemplateError, match="limit"):
        ChatTemplate("x" * (template_module.MAX_SOURCE_CHARS + 1))


# --- bad messages -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages, message",
    [
        ("hello", "must be a list"),
        ({"role": "user", "content": "hi"}, "must be a list"),
        ([], "empty"),
        (["hello"], "message 0 must be a dict"),
        ([{"content": "hi"}], "role must be one of"),
        ([{"role": "wizard", "content": "hi"}], "role must be one of"),
        ([{"role": 1, "content": "hi"}], "role must be one of"),
        ([{"role": "user"}], "has no content"),
        ([{"role": "user", "content": 42}], "content must be a string"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], "content part 0"),
        ([{"role": "user", "content": [{"type": "text", "text": 1}]}], "content part 0"),
        ([{"role": "user", "content": "hi", "tool_calls": []}], "only assistant"),
        ([{"role": "assistant", "content": None, "tool_calls": "x"}], "tool_calls must be a list"),
        ([{"role": "assistant", "content": None, "tool_calls": [{"function": {}}]}], "tool_calls"),
        ([{"role": "tool", "content": "x", "tool_call_id": 5}], "tool_call_id must be a string"),
    ],
)
def test_bad_messages_raise_template_error(messages, message):
    with pytest.raises(TemplateError, match=message):
        ChatTemplate(CHATML_TEMPLATE).render(messages)


def test_bad_tools_raise_template_error():
    with pytest.raises(TemplateError, match="tools"):
        ChatTemplate(CHATML_TEMPLATE).render([{"role": "user", "content": "x"}], tools=["f"])


def test_messages_are_not_modified():
    messages = [{"role": "assistant", "content": [{"type": "text", "text": "a"}], "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]}]
    snapshot = json.dumps(messages)
    ChatTemplate(CHATML_TEMPLATE).render(messages)
    assert json.dumps(messages) == snapshot
