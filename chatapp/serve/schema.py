"""Request bodies of the OpenAI API, validated with pydantic: a bad field is a 400 that names it.

Only what the engine can honour is modelled; other OpenAI fields (user, presence_penalty, ...)
are accepted and ignored, as llama-server and vLLM do, so that ordinary clients work unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, ValidationInfo, field_validator

__all__ = ["ChatRequest", "CompletionRequest", "ValidationError", "error_body", "first_error"]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: bool = False


class FunctionDef(_Lenient):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(_Lenient):
    type: Literal["function"]
    function: FunctionDef


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: dict[str, str]

    @field_validator("function")
    @classmethod
    def _has_name(cls, value: dict[str, str]) -> dict[str, str]:
        if not value.get("name"):
            raise ValueError("must be {\"name\": \"<a tool's name>\"}")
        return value


class Message(_Lenient):
    model_config = ConfigDict(extra="allow")  # tool_calls, name, tool_call_id pass through to the template
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def for_template(self) -> dict:
        """The message as our chat templates take it: text content, `developer` read as `system`."""
        out = self.model_dump(exclude_none=True)
        if self.role == "developer":
            out["role"] = "system"
        if isinstance(self.content, list):  # content parts: the text ones, in order
            out["content"] = "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        out.setdefault("content", "")
        return out


class _Sampling(_Lenient):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0)
    n: int = Field(default=1, ge=1, le=1)  # one choice per request: the engine decodes one sequence

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else value
        if stops is not None and (len(stops) > 4 or not all(stops)):
            raise ValueError("at most 4 non-empty stop strings")
        return stops

    def sampling(self) -> dict:
        """SamplingParams fields the client chose (None: the model's defaults apply)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                "stop": tuple(self.stop) if self.stop else None}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    # {"type": "text" | "json_object" | "json_schema", "json_schema": {"schema": ...}}: checked by
    # the engine (engine/runtime/grammar.py), which constrains the reply to it.
    response_format: dict | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)
    # Thinking on/off as vLLM and SGLang take it: {"enable_thinking": false}; other keys ignored.
    chat_template_kwargs: dict[str, Any] | None = None
    # Reasoning tokens after which the block is closed so the model answers (Qwen's API name).
    # OpenAI's `reasoning_effort` is not read: low/medium/high name no number of tokens.
    thinking_budget: int | None = Field(default=None, ge=0)
    # Per-token log probabilities (OpenAI's fields): `logprobs: true` puts
    # choices[0].logprobs = {"content": [{"token", "logprob", "bytes", "top_logprobs"}]} in the
    # reply and in each streamed chunk (its own tokens'); `top_logprobs` (0..20, only with
    # `logprobs: true`) adds that many most likely alternatives per position (chatapp/serve/logprobs.py).
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)

    @field_validator("top_logprobs")
    @classmethod
    def _asked_for_logprobs(cls, value, info: ValidationInfo):
        if value is not None and info.data.get("logprobs") is not True:
            raise ValueError("top_logprobs needs \"logprobs\": true")
        return value

    @property
    def token_probs(self) -> int | None:
        """The engine's `token_probs` (alternatives per position), None when not asked for."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @field_validator("chat_template_kwargs")
    @classmethod
    def _switch(cls, value):
        if value is not None and not isinstance(value.get("enable_thinking", False), bool):
            raise ValueError("enable_thinking must be true or false")
        return value

    @property
    def reply_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def reasoning(self) -> dict | None:
        """Reasoning(...) fields the client chose (None: the template's default, no budget)."""
        thinking = (self.chat_template_kwargs or {}).get("enable_thinking")
        if thinking is None and self.thinking_budget is None:
            return None
        return {"thinking": thinking, "budget": self.thinking_budget}

    def offered_tools(self) -> list[dict] | None:
        """The tool schemas the template shows: none under tool_choice "none", only the named one
        under a named choice. ("required" and a named choice also put the reply under a grammar
        that forces a call: `choice`.)"""
        if not self.tools or self.tool_choice == "none":
            return None
        tools = [t.model_dump(exclude_none=True) for t in self.tools]
        if isinstance(self.tool_choice, NamedToolChoice):
            tools = [t for t in tools if t["function"]["name"] == self.tool_choice.function["name"]]
        return tools or None


    def choice(self) -> str | dict | None:
        """tool_choice as Model.chat takes it."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.model_dump()
        return self.tool_choice


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
    # Legacy log probabilities: `logprobs: N` (0..5) puts choices[0].logprobs = {"tokens",
    # "token_logprobs", "top_logprobs": [{token: logprob} x N], "text_offset"} in the reply and
    # in each streamed chunk; text_offset counts characters from the start of the completion.
    logprobs: StrictInt | None = Field(default=None, ge=0, le=5)

    @property
    def token_probs(self) -> int | None:
        return self.logprobs

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("one prompt per request (a list of exactly one string)")
            value = value[0]
        if not value:
            raise ValueError("the prompt is empty")
        return value

    @property
    def reply_limit(self) -> int | None:
        return self.max_tokens


def error_body(message: str, type_: str = "invalid_request_error", *, param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error JSON."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def first_error(e: ValidationError) -> tuple[str, str]:
    """(the field, a one-line message naming it) for the first problem pydantic found."""
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "literal[", "str", "list[", "dict["))]
    field = ".".join(loc) or "body"
    return field, f"{field}: {err['msg']}"
