"""Lookups into the synthesized InfraStack shared by the assertion tests (logical ids from constructs, never pinned)."""

from __future__ import annotations

from typing import Any

from infra.components.stage_function import StageFunction
from infra.nag import render_intrinsic
from infra.pipeline import BucketRole, Handler

from .conftest import Synth

# The handlers S3 notifies through a queue; transcribe_failed and the sweeper are invoked by EventBridge,
# and async_result (async mode only) reads the queue SageMaker's SNS topics deliver to.
QUEUED = (Handler.TRANSCRIBE_TRIGGER, Handler.INVOKE_SD)


def handlers(synth: Synth) -> tuple[Handler, ...]:
    """The handlers this app deploys: every one in async mode, all but async_result in realtime mode."""
    return tuple(synth.infra.stages)


def queued(synth: Synth) -> tuple[Handler, ...]:
    """The handlers that read a source queue (S3 or SNS feeds it)."""
    return tuple(handler for handler, stage in synth.infra.stages.items() if stage.source_queue is not None)


def bucket_id(synth: Synth, role: BucketRole) -> str:
    """Logical id of a pipeline bucket, computed from the construct (never hard-coded)."""
    bucket = synth.infra.buckets[role]
    return synth.infra.get_logical_id(bucket.node.default_child)


def function(synth: Synth, handler: Handler) -> tuple[str, dict[str, Any]]:
    """The Lambda function resource running `handler`."""
    found = synth.infra_template.find_resources(
        "AWS::Lambda::Function", {"Properties": {"Handler": handler.entry_point}}
    )
    assert len(found) == 1, f"expected one function for {handler}, found {list(found)}"
    return next(iter(found.items()))


def statements(synth: Synth, handler: Handler) -> set[tuple[str, str]]:
    """(action, rendered resource) pairs granted to a handler's role by its inline policies."""
    _, fn = function(synth, handler)
    role_id = fn["Properties"]["Role"]["Fn::GetAtt"][0]
    pairs: set[tuple[str, str]] = set()
    policies = synth.infra_template.find_resources("AWS::IAM::Policy")
    for policy in policies.values():
        if {"Ref": role_id} not in policy["Properties"]["Roles"]:
            continue
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            pairs |= {(action, render_intrinsic(resource)) for action in actions for resource in resources}
    return pairs


def arn(synth: Synth, role: BucketRole, suffix: str) -> str:
    """A bucket ARN (plus suffix) as `statements` renders it."""
    return f"<{bucket_id(synth, role)}.Arn>{suffix}"


def stage(synth: Synth, handler: Handler) -> StageFunction:
    """The construct that owns a handler's function, role, log group and queues."""
    return synth.infra.stages[handler]


def logical_id(synth: Synth, construct: Any) -> str:
    """Logical id of an L2 construct's CloudFormation resource in InfraStack."""
    return synth.infra.get_logical_id(construct.node.default_child)


def source_queue_id(synth: Synth, handler: Handler) -> str:
    """Logical id of the queue S3 notifies for `handler`."""
    queue = stage(synth, handler).source_queue
    assert queue is not None, f"{handler} has no source queue"
    return logical_id(synth, queue)


def dead_letter_queue_id(synth: Synth, handler: Handler) -> str:
    """Logical id of `handler`'s dead-letter queue."""
    return logical_id(synth, stage(synth, handler).dead_letter_queue)
