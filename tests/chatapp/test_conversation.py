"""chatapp.conversation on a real SQLite store, without a Pilot: the operations the chat screen
calls (open, regenerate with alternatives, edit-and-resend, delete, settings, the model a
conversation reopens with) and the plain results they return."""

from __future__ import annotations

import pytest

from chatapp import conversation as ops
from chatapp.records import Alternatives
from chatapp.store import Store
from engine import SamplingParams


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "history.db") as s:
        yield s


def answered(store: Store, *turns: tuple[str, str], model: str = "m") -> int:
    conv = store.create_conversation(model=model)
    for question, reply in turns:
        store.add_message(conv.id, "user", question)
        store.add_message(conv.id, "assistant", reply)
    return conv.id


def test_open_labels_the_last_reply_with_its_alternatives(store):
    conv = answered(store, ("first?", "one"), ("second?", "two"))
    opened = ops.open_conversation(store, conv)
    assert [m.content for m in opened.messages] == ["first?", "one", "second?", "two"]
    assert opened.last_reply_id == opened.messages[-1].id
    assert opened.alternatives == Alternatives(0, 1)


def test_open_without_a_reply_has_nothing_to_label(store):
    conv = store.create_conversation()
    store.add_message(conv.id, "user", "unanswered")
    assert ops.open_conversation(store, conv.id).last_reply_id is None
    assert ops.open_conversation(store, store.create_conversation().id).messages == []


def test_regenerate_sets_the_reply_aside_and_browsing_brings_it_back(store):
    conv = answered(store, ("q", "first answer"))
    assert ops.browse_reply(store, conv, -1) == "no alternatives"

    assert ops.regenerate(store, conv) is True
    assert [m.content for m in store.messages(conv)] == ["q"]  # the new reply comes next
    store.add_message(conv, "assistant", "second answer")
    assert ops.open_conversation(store, conv).alternatives == Alternatives(1, 2)

    assert ops.browse_reply(store, conv, -1) == "moved"
    assert store.messages(conv)[-1].content == "first answer"
    assert ops.browse_reply(store, conv, -1) == "at the end"
    assert ops.open_conversation(store, conv).alternatives == Alternatives(0, 2)


def test_regenerate_needs_a_user_message(store):
    conv = store.create_conversation().id
    assert ops.regenerate(store, conv) is False


def test_add_user_message_starts_a_conversation_when_none_is_open(store):
    message = ops.add_user_message(store, None, "Hello there", model="smollm2-135m")
    conv = store.get_conversation(message.conversation_id)
    assert conv.model == "smollm2-135m" and conv.title == "Hello there"
    again = ops.add_user_message(store, conv.id, "And again", model="other")
    assert again.conversation_id == conv.id and store.get_conversation(conv.id).model == "smollm2-135m"


def test_edit_and_resend_replaces_the_target_and_everything_after_it(store):
    conv = answered(store, ("first?", "one"), ("second?", "two"))
    first_user = store.messages(conv)[0]
    assert ops.edit_target(store, conv, None).content == "second?"  # default: the last one
    assert ops.edit_target(store, conv, first_user) == first_user
    assert ops.edit_target(store, conv, store.messages(conv)[1]).content == "second?"  # a reply: the last user message

    assert ops.edit_and_resend(store, conv, first_user, "   ") is None  # blank: nothing changes
    assert len(store.messages(conv)) == 4
    sent = ops.edit_and_resend(store, conv, first_user, "  first, edited?  ")
    assert sent.content == "first, edited?"
    assert [m.content for m in store.messages(conv)] == ["first, edited?"]
    assert ops.edit_target(store, store.create_conversation().id, None) is None


def test_settings_are_saved_and_the_legacy_default_copy_means_nothing_chosen(store):
    assert ops.conversation_settings(store, None) == (None, {})
    conv = ops.save_settings(store, None, "Be brief.", {"temperature": 0.2}, model="m")
    assert store.get_conversation(conv).model == "m"
    assert ops.conversation_settings(store, conv) == ("Be brief.", {"temperature": 0.2})
    assert ops.save_settings(store, conv, None, dict(ops.LEGACY_DEFAULT_COPY), model="other") == conv
    assert ops.conversation_settings(store, conv) == (None, {})


class WithDefaults:
    sampling_defaults = {"temperature": 0.3, "top_k": 20}


def test_sampling_params_layers_the_model_defaults_under_the_conversation_settings():
    params = ops.sampling_params(WithDefaults(), {"temperature": 0.9, "max_tokens": 64})
    assert params == SamplingParams(temperature=0.9, top_k=20, max_tokens=64)
    assert ops.sampling_params(object(), {}) == SamplingParams()  # a model without defaults
    with pytest.raises(ValueError, match="unknown sampling"):
        ops.sampling_params(WithDefaults(), {"warmth": 1})


def test_the_model_a_conversation_reopens_with(store):
    conv = answered(store, ("q", "a"), model="smollm2-135m")
    assert ops.model_note(store, conv, "smollm2-135m") is None
    note = ops.model_note(store, conv, "qwen")
    assert note.startswith("This conversation used smollm2-135m; replies now come from qwen")
    ops.record_model(store, conv, "qwen")
    assert store.get_conversation(conv).model == "qwen" and ops.model_note(store, conv, "qwen") is None
    assert ops.model_note(store, store.create_conversation().id, "qwen") is None  # never answered
    assert ops.model_label("a/path.gguf") == "a/path.gguf"


def test_deleting_the_open_conversation_opens_the_most_recent_other(store):
    older = answered(store, ("old", "a"))
    newer = answered(store, ("new", "b"))
    assert ops.delete_conversation(store, older, newer) == ops.Deleted(was_open=False, open_next=newer)
    other = answered(store, ("another", "c"))
    assert ops.delete_conversation(store, other, other) == ops.Deleted(was_open=True, open_next=newer)
    assert ops.delete_conversation(store, newer, newer) == ops.Deleted(was_open=True, open_next=None)
    assert store.list_conversations() == []
