"""Generation in a Textual thread worker. It reaches the UI only through post_message.

One job answers one user turn: it fits the conversation to the context window, streams the
reply (saving it to the store every SAVE_INTERVAL seconds), and, when the reply contains tool
calls, runs them through the tool hooks and continues, up to MAX_CHAINED_CALLS rounds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from textual.message import Message

from engine import EngineError, ReasoningDelta, TextDelta, parse_tool_calls
from engine.runtime import POLICY

from .conversation import tool_choice_request
from .inspection import TOP, meta_rows
from .messages import (
    ContextFitted,
    HistoryChanged,
    JobDone,
    Notice,
    ReplyDelta,
    ReplyFinished,
    ReplyStarted,
)
from .pending import WRITE_ERRORS, PendingWrites, describe, with_retries
from .store import Store
from .tools.runner import MAX_CHAINED_CALLS, ToolRunner

if TYPE_CHECKING:
    from engine import ChatSession, Reasoning, SamplingParams

SAVE_INTERVAL = 0.25  # seconds between saves of a streaming reply: a crash loses at most this
POST_INTERVAL = 0.05  # seconds between UI updates: tokens coalesce into one message


@dataclass
class Job:
    """One user turn to answer. The screen creates it when the user sends, and sets `session` and
    `params` on the UI thread once a model is there, before the worker starts."""

    conversation_id: int
    tools: ToolRunner | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    session: ChatSession | None = None
    params: SamplingParams | None = None  # SamplingParams.merged(model defaults, conversation's)
    # Writes the history file could not take yet (locked, disk full): the screen retries them.
    pending: PendingWrites = field(default_factory=PendingWrites)
    finished: threading.Event = field(default_factory=threading.Event)  # set when run_job returns
    reasoning: Reasoning | None = None  # thinking on/off and its budget (None: the template's default)
    # "auto", "none", "required" or {"function": NAME}: conversation.conversation_tool_choice
    tool_choice: str | dict = "auto"


def history_for_model(store: Store, conversation_id: int) -> list[dict]:
    conv = store.get_conversation(conversation_id)
    messages = [{"role": "system", "content": conv.system_prompt}] if conv.system_prompt else []
    for m in store.messages(conversation_id):
        if m.status == "error" or (m.role == "assistant" and not m.content and not m.tool_calls):
            continue
        messages.append(m.to_openai())
    return messages


def run_job(job: Job, store: Store, post: Callable[[Message], object]) -> None:
    """The worker body: answer the last user message of the conversation."""
    try:
        for _round in range(MAX_CHAINED_CALLS + 1):
            calls = _one_reply(job, store, post)
            if not calls or job.cancel.is_set():
                return
            # Tool output anywhere in what the model read (this turn or an earlier one) may have
            # written these arguments: the approval dialog tells the user to check them.
            after_tool_output = any(m["role"] == "tool" for m in history_for_model(store, job.conversation_id))
            for call in calls:
                if job.cancel.is_set():
                    return
                # Esc answers a tool still running
                result = job.tools.run(call, job.cancel, after_tool_output=after_tool_output)
                msg = result.to_message()
                saved = job.pending.write("a tool result", partial(
                    store.add_message, job.conversation_id, "tool", msg["content"], tool_call_id=msg["tool_call_id"],
                    name=msg["name"], meta={"is_error": result.is_error, "denied": result.denied}))
                if not saved:  # the next round reads the history: it cannot go on without the result
                    post(Notice(_unsaved("the tool result", job.pending.last_error), "warning"))
                    return
            post(HistoryChanged())
            if job.tool_choice == "required" or isinstance(job.tool_choice, dict):
                job.tool_choice = "auto"  # a forced call starts the turn; with its results the model answers
            if job.cancel.is_set():  # stopped while a tool ran: its result is kept, the model not asked again
                return
        post(Notice(f"Stopped after {MAX_CHAINED_CALLS} rounds of tool calls in one turn.", "warning"))
    except EngineError as e:
        post(Notice(str(e), "error"))
    except WRITE_ERRORS as e:
        post(Notice(f"The reply could not start: the chat history cannot be written ({describe(e)}). "
                    "Your message is saved; ctrl+r tries again.", "error"))
    except Exception as e:  # a bug must not take the app (and the user's typing) down with it
        post(Notice(f"Generation failed: {type(e).__name__}: {e}", "error"))
    finally:
        job.finished.set()
        post(JobDone())


def _one_reply(job: Job, store: Store, post) -> list:
    """Stream one assistant message; return the tool calls it made (empty when none)."""
    session, params = job.session, job.params
    model = session.model
    schemas = None
    offered = job.tools is not None and job.tool_choice != "none"  # "none": no tools shown, no calls run
    if offered and model.supports_tools:
        job.tools.registry.prepare()  # starts MCP servers on first use (here, off the UI thread)
        schemas = job.tools.registry.schemas()
    tool_choice, note = tool_choice_request(job.tool_choice, schemas)
    if note:
        post(Notice(note, "warning"))
    history = history_for_model(store, job.conversation_id)
    # Retried a few times: without the row there is nothing to stream into (the turn is kept).
    reply = with_retries(partial(store.add_message, job.conversation_id, "assistant", "", status="streaming",
                                 meta={"model": model.name}), stop=job.cancel.is_set)
    post(ReplyStarted(reply))
    text, unposted = "", ""
    thought, unposted_thought = "", ""  # the reply's reasoning, kept apart from its text
    thinking_started = thinking_ended = None  # monotonic seconds: how long it thought
    last_save = last_post = time.monotonic()
    result = None
    try:
        # Probabilities for the inspector (chatapp/inspection.py): a softmax and top-k a token.
        # (a remote model asks its server for logprobs; one that ignores the field gives none)
        record = {"token_probs": TOP} if model.records_token_probs else {}
        for event in session.chat(history, params, tools=schemas, tool_choice=tool_choice, should_stop=job.cancel.is_set,
                                  reasoning=job.reasoning, **record):
            if isinstance(event, (TextDelta, ReasoningDelta)):
                now = time.monotonic()
                if isinstance(event, ReasoningDelta):
                    thought += event.text
                    unposted_thought += event.text
                    thinking_started = thinking_started or now
                    thinking_ended = now
                else:
                    text += event.text
                    unposted += event.text
                if now - last_post >= POST_INTERVAL:
                    post(ReplyDelta(reply.id, unposted, unposted_thought))
                    unposted, unposted_thought, last_post = "", "", now
                if now - last_save >= SAVE_INTERVAL and not job.pending:
                    try:
                        store.update_message(reply.id, content=text, reasoning=thought)
                    except WRITE_ERRORS:
                        pass  # the text is in memory; the final write saves all of it
                    last_save = now
            else:
                result = event
                for note in getattr(event, "notes", ()):  # the engine changed the run on the way
                    post(Notice(note, "warning"))
    except Exception as e:
        # Shown once, on the reply it stopped (and kept with it): not again as a notice.
        error = str(e) if isinstance(e, EngineError) else f"Generation failed: {type(e).__name__}: {e}"
        _save(job, post, partial(store.update_message, reply.id, content=text, status="error",
                                 meta={"error": error, "model": model.name}, reasoning=thought))
        if unposted or unposted_thought:
            post(ReplyDelta(reply.id, unposted, unposted_thought))
        post(ReplyFinished(reply.id, "error", None))
        return []
    if unposted or unposted_thought:
        post(ReplyDelta(reply.id, unposted, unposted_thought))
    if result is not None:
        post(ContextFitted(result.prompt_tokens + result.completion_tokens, model.context_length, result.dropped_messages))
        if result.dropped_messages:
            post(Notice(f"Context window full: {result.dropped_messages} oldest messages were left out of what the model saw ({POLICY}).", "warning"))
    status = "stopped" if result is None or result.finish_reason == "cancelled" else "complete"
    meta = {"model": model.name}
    if result is not None:
        meta.update(
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            tokens_per_second=round(result.tokens_per_second, 2),
            cached_tokens=result.cached_tokens,
            dropped_messages=result.dropped_messages,
        )
        if result.token_probs and not result.dropped_messages:
            meta.update(token_probs=meta_rows(result))
            if not model.is_remote:  # the attention view's input; a remote server keeps its tokens
                meta.update(prompt_ids=model.encode_chat(history, tools=shown_tools(schemas, tool_choice),
                                                         reasoning=job.reasoning))
        if result.reasoning_tokens:
            meta.update(reasoning_tokens=result.reasoning_tokens,
                        reasoning_seconds=round(thinking_ended - thinking_started, 2) if thinking_started else 0.0)
    calls, content = [], text
    if status == "complete" and offered:
        parsed = parse_tool_calls(text, job.tools.registry.tools().keys())
        for error in parsed.errors:
            post(Notice(f"A tool call could not be parsed: {error}", "warning"))
        if parsed.tool_calls:  # otherwise the raw text stays, parse failures included
            calls, content = parsed.tool_calls, parsed.content
    if status == "complete" and offered and result is not None and result.tool_calls:
        calls = [*calls, *result.tool_calls]  # a remote server's calls arrive parsed, outside the text
    saved = _save(job, post, partial(store.update_message, reply.id, content=content, status=status, meta=meta,
                                     tool_calls=[c.to_openai() for c in calls] or None, reasoning=thought))
    post(ReplyFinished(reply.id, status, result))
    return calls if saved else []  # tool results must not be stored before the calls that asked


def shown_tools(schemas: list[dict] | None, tool_choice) -> list[dict] | None:
    """The tools the prompt showed (a named tool choice shows that tool only, as the engine's
    chat_constraint does)."""
    if not isinstance(tool_choice, dict) or not schemas:
        return schemas
    return [s for s in schemas if s.get("function", {}).get("name") == tool_choice["function"]["name"]]


def _save(job: Job, post, write) -> bool:
    """The reply's final write: now, or kept in memory (and said so) until the file takes it."""
    if job.pending.write("the reply", write):
        return True
    post(Notice(_unsaved("the reply", job.pending.last_error), "warning"))
    return False


def _unsaved(what: str, why: str | None) -> str:
    return (f"The chat history cannot be written now ({why}); {what} is kept in memory "
            "and saved as soon as it can be.")

