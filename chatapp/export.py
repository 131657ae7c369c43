"""One conversation as a Markdown document or a JSON-ready dict.

Plain functions over what the store hands out (a Conversation and its Messages in seq order), so
they need no database; `export_markdown` / `export_json` feed them one consistent read of the store.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from chatapp.records import Conversation, Message

if TYPE_CHECKING:
    from chatapp.store import Store


def conversation_json(conversation: Conversation, messages: list[Message]) -> dict:
    """The conversation's fields, and each message in OpenAI form plus status, meta and created_at;
    a reply's thinking as `reasoning_content`, the name OpenAI-compatible servers give it."""
    return {
        "conversation": dataclasses.asdict(conversation),
        "messages": [{**m.to_openai(), **({"reasoning_content": m.reasoning} if m.reasoning else {}),
                      "status": m.status, "meta": copy.deepcopy(m.meta), "created_at": m.created_at}
                     for m in messages],
    }


def conversation_markdown(conversation: Conversation, messages: list[Message]) -> str:
    """Roles as `##` headings; message text verbatim; tool calls and results in code fences; a
    reply's thinking in a folded `<details>` block above it."""
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(conversation.created_at))
    parts = [f"# {conversation.title}", f"- Created: {created}"]
    if conversation.model:
        parts[-1] += f"\n- Model: {conversation.model}"
    if conversation.system_prompt:
        parts += ["## System", conversation.system_prompt]
    for m in messages:
        if m.role == "tool":
            parts.append(f"## Tool result{f': `{m.name}`' if m.name else ''}")
            parts.append(_fence(m.content))
            continue
        parts.append(f"## {m.role.capitalize()}")
        if m.reasoning:  # folded, as the app shows it: a <details> block renders collapsed
            parts.append(f"<details>\n<summary>Thinking</summary>\n\n{_fence(m.reasoning)}\n\n</details>")
        if m.content:
            parts.append(m.content)
        for call in m.tool_calls or []:
            function = call.get("function") or {}
            arguments = function.get("arguments", "")
            try:
                arguments = json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
            except (TypeError, ValueError):
                arguments = str(arguments)
            parts += [f"**Tool call:** `{function.get('name', '?')}`", _fence(arguments, "json")]
        if m.status != "complete":
            parts.append(f"_({'still being written' if m.status == 'streaming' else m.status})_")
    return "\n\n".join(parts) + "\n"


def _fence(text: str, info: str = "") -> str:
    """`text` in a Markdown code fence longer than any backtick run inside it."""
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text}\n{ticks}"


SUFFIXES = {"markdown": ".md", "json": ".json"}


class ExportError(Exception):
    """The export file cannot be written where asked; the message names the path and the reason."""


def default_export_dir() -> Path:
    """The user's documents folder, or `<user data>/chatapp/exports` on systems without one."""
    documents = platformdirs.user_documents_dir()
    if documents and Path(documents).is_dir():
        return Path(documents)
    return Path(platformdirs.user_data_dir("chatapp")) / "exports"


def default_export_path(title: str, fmt: str, directory: Path | None = None) -> Path:
    """`<directory>/<title-slug>.md` (or .json), numbered `-2`, `-3`… past files that exist."""
    directory = default_export_dir() if directory is None else Path(directory)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-").lower()[:40] or "conversation"
    path = directory / f"{slug}{SUFFIXES[fmt]}"
    n = 2
    while path.exists():
        path = directory / f"{slug}-{n}{SUFFIXES[fmt]}"
        n += 1
    return path


def export_to_file(store, conversation_id: int, fmt: str, path: Path) -> Path:
    """Write a conversation as Markdown or JSON to `path` (replacing it), creating its folders."""
    if fmt == "markdown":
        text = export_markdown(store, conversation_id)
    else:
        text = json.dumps(export_json(store, conversation_id), indent=2, ensure_ascii=False)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        reason = e.strerror or str(e)
        raise ExportError(f"Cannot write {path}: {reason}. Choose another folder or file name.") from None
    return path


def export_json(store: Store, conversation_id: int) -> dict:
    return conversation_json(*store.snapshot(conversation_id))


def export_markdown(store: Store, conversation_id: int) -> str:
    return conversation_markdown(*store.snapshot(conversation_id))
