"""Fixes to moto 5.2 that local mode needs so that its queues and its ledger behave as SQS and DynamoDB do."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def patch_sqs_atomic() -> list[Callable[[], None]]:
    """Make moto's queue operations atomic per queue; returns the functions that undo it.

    moto 5.2 rebuilds a queue's message list in DeleteMessage without its lock: two deletes at once
    brought a deleted message back (to be delivered again 16 minutes later), and a delete beside a
    SendMessage could drop the new message. SQS never does either; with several pollers per queue
    (max_concurrency) local mode would, so receive, delete and visibility changes hold the queue's lock
    (a long poll releases it while it waits).
    """
    from moto.sqs.models import Queue, SQSBackend

    originals = {
        (Queue, "delete_message"): Queue.delete_message,
        (SQSBackend, "receive_message"): SQSBackend.receive_message,
        (SQSBackend, "change_message_visibility"): SQSBackend.change_message_visibility,
    }

    def delete_message(queue: Any, receipt_handle: str) -> None:
        """DeleteMessage, atomic with the queue's other changes."""
        with queue._messages_lock:
            originals[(Queue, "delete_message")](queue, receipt_handle)

    def backend_call(name: str) -> Any:
        original = originals[(SQSBackend, name)]

        def call(backend: Any, queue_name: str, *args: Any, **kwargs: Any) -> Any:
            """The backend operation under the queue's lock."""
            with backend.get_queue(queue_name)._messages_lock:
                return original(backend, queue_name, *args, **kwargs)

        return call

    Queue.delete_message = delete_message  # type: ignore[method-assign]
    SQSBackend.receive_message = backend_call("receive_message")  # type: ignore[method-assign]
    SQSBackend.change_message_visibility = backend_call("change_message_visibility")  # type: ignore[method-assign]
    return [
        lambda owner=owner, name=name, original=original: setattr(owner, name, original)
        for (owner, name), original in originals.items()
    ]


def patch_dynamodb_atomic() -> list[Callable[[], None]]:
    """Make moto's DynamoDB writes atomic; returns the functions that undo it.

    moto 5.2 checks a ConditionExpression and then applies the write without a lock, so two conditional
    writes arriving at once (the ledger's claim of a re-upload beside the commit of the previous upload's
    result) could both pass. DynamoDB applies each conditional write atomically, and the ledger relies on
    it; one lock over every write (and the reads inside them) gives local mode the same guarantee.
    """
    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.RLock()
    undo: list[Callable[[], None]] = []
    for name in ("put_item", "update_item", "delete_item", "transact_write_items"):
        original = getattr(DynamoDBBackend, name)

        def locked(backend: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            """The write, atomic with every other write."""
            with lock:
                return _original(backend, *args, **kwargs)

        setattr(DynamoDBBackend, name, locked)
        undo.append(lambda name=name, original=original: setattr(DynamoDBBackend, name, original))
    return undo
