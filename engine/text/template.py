"""Chat templates: Hugging Face-compatible Jinja rendering of a conversation into prompt text.

The template comes from the model file and is treated as hostile: it compiles and renders in the
sandbox of `engine.text.template_sandbox`, under limits on output, work, time and memory. Messages and
tools are validated here before the template sees them. Every failure, from a syntax error to a
sandbox violation, surfaces as `TemplateError`.
"""

from __future__ import annotations

import json
from typing import Any

import jinja2
from jinja2.sandbox import SecurityError

from ..errors import TemplateError
from .template_sandbox import ChatSandbox, LimitExceeded, render_within_limits, require_safe_jinja

MAX_SOURCE_CHARS = 1_000_000
_ROLES = frozenset({"system", "user", "assistant", "tool"})

# ChatML, the format of SmolLM2, Qwen and Hermes models; with `tools`, their schemas go into the
# system turn inside <tools></tools> and the model answers with <tool_call>{json}</tool_call>;
# results come back as <tool_response> blocks in a user turn.
CHATML_TEMPLATE = r"""
{%- set has_system = messages and messages[0].role == 'system' %}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if has_system %}
        {{- messages[0].content ~ '\n\n' }}
    {%- endif %}
    {{- '# Tools\n\nYou may call one or more of the functions described inside <tools></tools> to help with the request:\n<tools>' }}
    {%- for tool in tools %}
        {{- '\n' ~ (tool | tojson) }}
    {%- endfor %}
    {{- '\n</tools>\n\nTo call a function, reply with a JSON object holding its name and arguments inside <tool_call></tool_call> tags, one per call:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif has_system %}
    {{- '<|im_start|>system\n' ~ messages[0].content ~ '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if loop.first and has_system %}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or loop.previtem.role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' ~ message.content ~ '\n</tool_response>' }}
        {%- if loop.last or loop.nextitem.role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- else %}
        {{- '<|im_start|>' ~ message.role ~ '\n' }}
        {%- if message.content %}
            {{- message.content }}
        {%- endif %}
        {%- if message.role == 'assistant' and message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- set fn = tool_call.function if tool_call.function is defined else tool_call %}
                {%- if message.content or not loop.first %}
                    {{- '\n' }}
                {%- endif %}
                {{- '<tool_call>\n{"name": ' ~ (fn.name | tojson) ~ ', "arguments": ' }}
                {%- if fn.arguments is string %}
                    {{- fn.arguments }}
                {%- else %}
                    {{- fn.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
""".strip()


# ---------------------------------------------------------------------------------------------
# Messages


def _text_content(content: Any, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise TemplateError(f"{where}: content part {j} must be "
                                    f'{{"type": "text", "text": "..."}}, got {part!r:.80}')
            texts.append(part["text"])
        return "\n".join(texts)  # as vLLM and OpenAI-compatible servers join text parts
    raise TemplateError(f"{where}: content must be a string, null or a list of text parts, "
                        f"not {type(content).__name__}")


def _tool_calls(calls: Any, where: str) -> list[dict]:
    if not isinstance(calls, list):
        raise TemplateError(f"{where}: tool_calls must be a list, not {type(calls).__name__}")
    normalized = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(fn, dict) and isinstance(fn.get("name"), str)):
            raise TemplateError(f'{where}: tool_calls[{j}] must look like {{"type": "function", '
                                f'"function": {{"name": ..., "arguments": ...}}}}')
        arguments = fn.get("arguments", {})
        if isinstance(arguments, str):
            # OpenAI sends arguments as JSON text; templates (Qwen, Llama 3) expect an object
            try:
                decoded = json.loads(arguments)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict):
                arguments = decoded
        normalized.append({**call, "function": {**fn, "arguments": arguments}})
    return normalized


def _normalize_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, (list, tuple)):
        raise TemplateError(f"messages must be a list of dicts, not {type(messages).__name__}")
    if not messages:
        raise TemplateError("messages is empty: there is nothing to render")
    normalized = []
    for i, message in enumerate(messages):
        where = f"message {i}"
        if not isinstance(message, dict):
            raise TemplateError(f"{where} must be a dict, not {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise TemplateError(f"{where}: role must be one of {', '.join(sorted(_ROLES))}, "
                                f"got {role!r:.40}")
        where = f"message {i} ({role})"
        out = dict(message)
        if "tool_calls" in message and message["tool_calls"] is not None:
            if role != "assistant":
                raise TemplateError(f"{where}: only assistant messages carry tool_calls")
            out["tool_calls"] = _tool_calls(message["tool_calls"], where)
        elif "content" not in message:
            raise TemplateError(f"{where} has no content")
        out["content"] = _text_content(message.get("content"), where)
        for key in ("name", "tool_call_id"):
            if key in message and not isinstance(message[key], str):
                raise TemplateError(f"{where}: {key} must be a string")
        normalized.append(out)
    return normalized


def _check_tools(tools: Any) -> list[dict] | None:
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise TemplateError("tools must be a list of dicts (JSON schemas of functions)")
    return tools


def _template_line(exc: BaseException) -> int | None:
    """The template line the error was raised on (Jinja rewrites tracebacks to show it)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# ---------------------------------------------------------------------------------------------


class ChatTemplate:
    """A compiled chat template; `render(messages)` turns a conversation into the prompt text."""

    is_fallback: bool = False

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "",
                 name: str = "chat template") -> None:
        require_safe_jinja()
        if not isinstance(source, str):
            raise TemplateError(f"{name} must be a string, not {type(source).__name__}")
        if len(source) > MAX_SOURCE_CHARS:
            raise TemplateError(f"{name} is {len(source):,} characters long; "
                                f"the limit is {MAX_SOURCE_CHARS:,}")
        if not (isinstance(bos_token, str) and isinstance(eos_token, str)):
            raise TemplateError("bos_token and eos_token must be strings")
        self.source = source
        self.name = name
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._env = ChatSandbox(self._raise_exception)
        try:
            self._template = self._env.compile_chat_template(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{name} has a syntax error at line {exc.lineno}: {exc.message}") from None
        except RecursionError:
            raise TemplateError(f"{name} is nested too deeply to compile") from None
        except Exception as exc:
            raise TemplateError(f"{name} failed to compile: {type(exc).__name__}: {exc}") from None

    @classmethod
    def from_gguf_metadata(cls, metadata: dict, *, bos_token: str, eos_token: str) -> ChatTemplate:
        """The template stored under `tokenizer.chat_template`, else the built-in ChatML one
        (then `is_fallback` is True)."""
        source = metadata.get("tokenizer.chat_template")
        if isinstance(source, str) and source.strip():
            return cls(source, bos_token=bos_token, eos_token=eos_token,
                       name="the model's chat template (tokenizer.chat_template)")
        template = cls(CHATML_TEMPLATE, bos_token=bos_token, eos_token=eos_token,
                       name="the built-in ChatML template")
        template.is_fallback = True
        return template

    def _raise_exception(self, message: Any) -> None:
        raise TemplateError(f"{self.name} rejected the conversation: {message}")

    def render(self, messages: list[dict], *, add_generation_prompt: bool = True,
               tools: list[dict] | None = None, **extra: Any) -> str:
        """The prompt text for `messages` (OpenAI-style dicts), ready to tokenize.

        Content given as a list of text parts is joined with newlines; tool-call arguments given
        as JSON text are decoded to objects, as templates expect. `extra` (e.g. `date_string`)
        is passed to the template as further variables.
        """
        context = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **extra,
            "messages": _normalize_messages(messages),
            "tools": _check_tools(tools),
            "add_generation_prompt": bool(add_generation_prompt),
        }
        try:
            return render_within_limits(self._template, context)
        except TemplateError:
            raise
        except RecursionError:
            raise TemplateError(f"{self.name} recursed too deeply (a macro that calls itself "
                                "without end?)") from None
        except Exception as exc:
            line = _template_line(exc)
            at = f" at line {line}" if line else ""
            if isinstance(exc, LimitExceeded):
                problem = f"exceeded a sandbox limit{at}: {exc}"
            elif isinstance(exc, SecurityError):
                problem = f"tried something the sandbox forbids{at}: {exc}"
            elif isinstance(exc, MemoryError):
                problem = f"ran out of memory{at}"
            else:
                problem = f"failed to render{at}: {type(exc).__name__}: {exc}"
            raise TemplateError(f"{self.name} {problem}") from None

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r}, is_fallback={self.is_fallback})"
