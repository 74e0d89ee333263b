"""Operating a running local pipeline: send events, hold a stage, read dead letters and replay them, sweep.

`LocalRuntime` (local.runtime) inherits these; they use only what a started runtime holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from infra.pipeline import LEDGER_PARTITION_KEY, BucketRole, Handler
from local.functions import Invocation
from local.replay import replay_dead_letters
from local.schedule import scheduled_event
from local.tracking import Progress

if TYPE_CHECKING:
    from local.aws import EmbeddedAws
    from local.dispatcher import Dispatcher
    from local.functions import FunctionPool, LocalFunction
    from local.tracking import Activity

log = logging.getLogger(__name__)


class RuntimeOperations:
    """What a person or a test does with the running pipeline besides uploading (mixed into LocalRuntime)."""

    aws: EmbeddedAws
    activity: Activity
    dispatcher: Dispatcher | None
    pools: dict[Handler, FunctionPool]
    functions: dict[Handler, LocalFunction]
    _s3: Any
    _sqs: Any
    _dynamodb: Any

    def _emit(self, progress: Progress) -> None:
        raise NotImplementedError

    def deliver(self, handler: Handler, event: dict[str, Any]) -> None:
        """Send an event to a handler through its queue, as S3 or EventBridge would (again, or out of order).

        For an S3 route `event` is the S3 event (an SQS batch event is unwrapped into its messages' bodies).
        The sweeper has no queue: its (scheduled) event runs it at once.
        """
        if handler is Handler.SWEEPER:
            self.sweep()
            return
        bodies = [event]
        records = event.get("Records")
        if (
            handler is not Handler.TRANSCRIBE_FAILED
            and records
            and all(record.get("eventSource") == "aws:sqs" for record in records)
        ):
            bodies = [json.loads(record["body"]) for record in records]
        for body in bodies:
            self._sqs.send_message(QueueUrl=self.aws.queue_for(handler).url, MessageBody=json.dumps(body))

    def dead_letters(self, handler: Handler) -> int:
        """How many failed events wait in the handler's dead-letter queue."""
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=self.aws.dead_letter_queues[handler],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return sum(int(value) for value in attributes.values())

    def replay_dead_letters(self, handler: Handler | None = None) -> list[Any]:
        """Send the dead-lettered events back through the pipeline (all handlers, or one): `make replay`, locally."""
        handlers = [handler] if handler is not None else list(self.pools)
        return [replay_dead_letters(self, name) for name in handlers]

    @contextlib.contextmanager
    def holding(self, handler: Handler) -> Iterator[None]:
        """Hold the handler's event source while the block runs: its events wait in its queue, then flow again."""
        assert self.dispatcher is not None, "start() first"
        self.dispatcher.hold(handler)
        try:
            yield
        finally:
            if self.dispatcher is not None:
                self.dispatcher.release(handler)

    def sweep(self) -> Invocation:
        """Run the sweeper now, as its schedule would: every upload stuck past the deadline gets an error record."""
        self.activity.begin()
        try:
            invocation = self.functions[Handler.SWEEPER].invoke(scheduled_event(self.aws.account, self.aws.region))
        finally:
            self.activity.end()
        if not invocation.ok:
            log.error("the sweeper failed: %s", invocation.error_summary)
        for item in (invocation.result or {}).get("results", []) if invocation.ok else []:
            if item.get("outcome") == "stuck":
                self._emit(Progress(item.get("key", ""), "stuck", f"recorded as stuck in stage {item.get('stage')}"))
        return invocation

    def ledger_item(self, key: str) -> dict[str, Any] | None:
        """The upload ledger's item for an input key, as DynamoDB returns it (None when there is none)."""
        if self._dynamodb is None:
            self._dynamodb = self.aws.client("dynamodb")
        key_item = {LEDGER_PARTITION_KEY: {"S": key}}
        return self._dynamodb.get_item(TableName=self.aws.ledger_table, Key=key_item, ConsistentRead=True).get("Item")

    def read_notification_configuration(self, role: BucketRole) -> dict[str, Any]:
        """The bucket's notification configuration as the running S3 reports it."""
        response = self._s3.get_bucket_notification_configuration(Bucket=self.aws.bucket_names[role])
        response.pop("ResponseMetadata", None)
        return response
