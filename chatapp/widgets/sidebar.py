"""The conversation list: newest first, searchable."""

from __future__ import annotations

from textual import events, on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, ListItem, ListView

from ..store import Conversation
from .inert import inert


class ConversationItem(ListItem):
    def __init__(self, conversation: Conversation) -> None:
        super().__init__(Label(inert(conversation.title), markup=False))
        self.conversation = conversation


class Sidebar(Vertical):
    class Selected(Message):
        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    class SearchChanged(Message):
        def __init__(self, query: str) -> None:
            super().__init__()
            self.query = query

    def compose(self) -> ComposeResult:
        yield Input(placeholder="Search conversations", id="search")
        yield ListView(id="conversations")

    def show(self, conversations: list[Conversation], current: int | None) -> None:
        view = self.query_one(ListView)
        view.clear()
        items = [ConversationItem(c) for c in conversations]
        view.extend(items)
        for i, item in enumerate(items):
            if item.conversation.id == current:
                view.index = i

    @on(ListView.Selected)
    def _selected(self, event: ListView.Selected) -> None:
        event.stop()
        if isinstance(event.item, ConversationItem):
            self.post_message(self.Selected(event.item.conversation.id))

    @on(Input.Changed, "#search")
    def _search(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.SearchChanged(event.value))

    @on(Input.Submitted, "#search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.focus_results()

    def on_key(self, event: events.Key) -> None:
        # Down from the search field steps into the results, as in a browser's address bar.
        if event.key == "down" and self.query_one("#search", Input).has_focus:
            event.stop()
            self.focus_results()

    def focus_results(self) -> None:
        """Focus the list, highlighting its first conversation if none is."""
        view = self.query_one(ListView)
        if view.index is None and view.children:
            view.index = 0
        view.focus()

    def highlighted_id(self) -> int | None:
        item = self.query_one(ListView).highlighted_child
        return item.conversation.id if isinstance(item, ConversationItem) else None
