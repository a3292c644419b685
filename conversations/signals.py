"""An attachment's file goes when its row does, however the row goes (its message's subtree deleted, its
conversation deleted, all of a user's): once the deletion commits, so a rolled-back one keeps it."""

from __future__ import annotations

from functools import partial
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from conversations import services
from conversations.models import Attachment


@receiver(post_delete, sender=Attachment, dispatch_uid="attachment_file_delete")
def attachment_deleted(sender: type[Attachment], instance: Attachment, **kwargs: Any) -> None:
    if instance.file.name:
        transaction.on_commit(partial(services.attachment_files_delete, names=[instance.file.name]))
