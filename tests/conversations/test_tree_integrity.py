"""The database itself refuses a message tree that crosses conversations."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction

from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_conversations(user):
    first = Conversation.objects.create(owner=user, title="first")
    second = Conversation.objects.create(owner=user, title="second")
    root = Message.objects.create(conversation=second, role=Message.Role.USER, content="elsewhere")
    return first, second, root


def test_a_parent_in_another_conversation_is_refused(two_conversations):
    first, _, foreign_root = two_conversations
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.create(conversation=first, parent=foreign_root, role=Message.Role.USER, content="x")
        connection.check_constraints()  # PostgreSQL checks deferred constraints at commit; force it now


def test_moving_a_message_under_another_conversation_is_refused(two_conversations):
    first, _, foreign_root = two_conversations
    mine = Message.objects.create(conversation=first, role=Message.Role.USER, content="mine")
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.filter(pk=mine.pk).update(parent=foreign_root)
        connection.check_constraints()


def test_a_current_node_in_another_conversation_is_refused(two_conversations):
    first, _, foreign_root = two_conversations
    with pytest.raises(IntegrityError), transaction.atomic():
        Conversation.objects.filter(pk=first.pk).update(current_node=foreign_root)
        connection.check_constraints()


def test_a_tree_within_one_conversation_is_fine(two_conversations):
    first, _, _ = two_conversations
    root = Message.objects.create(conversation=first, role=Message.Role.USER, content="a")
    child = Message.objects.create(conversation=first, parent=root, role=Message.Role.ASSISTANT, content="b")
    Conversation.objects.filter(pk=first.pk).update(current_node=child)
    connection.check_constraints()
