"""`make replay`, locally: send dead-lettered events back through the pipeline once their cause is fixed.

The same code as the AWS command (`ops.replay.replay_dead_letters`): an S3 event that SQS redrove to an
S3 route's dead-letter queue goes back, unchanged, to the route's source queue; a Lambda on-failure
record (transcribe_failed, the sweeper) goes back to its function. Only "invoke" differs: locally the
event goes to the function's queue, as an asynchronous invocation would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from infra.pipeline import EventRoute, Handler

if TYPE_CHECKING:
    from local.runtime import LocalRuntime


def replay_dead_letters(runtime: LocalRuntime, handler: Handler) -> Any:
    """Replay one handler's dead-letter queue; returns `ops.replay.ReplayReport`."""
    from ops.replay import replay_dead_letters as replay

    by_arn = {pool.primary.arn: name for name, pool in runtime.pools.items()}

    def invoke(function_arn: str, payload: dict[str, Any]) -> None:
        """Queue the event for the local function with this ARN."""
        target = by_arn.get(function_arn)
        if target is None:
            raise LookupError(f"no local function {function_arn}; known: {sorted(by_arn)}")
        runtime.deliver(target, payload)

    binding = next((item for item in runtime.aws.queues if item.handler is handler), None)
    source = binding.url if binding is not None and not isinstance(binding.route, EventRoute) else None
    # moto answers ReceiveMessage exactly, so no wait is needed to see every message (wait_s=0).
    return replay(
        runtime.aws.client("sqs"), runtime.aws.dead_letter_queues[handler], invoke, source_queue_url=source, wait_s=0
    )
