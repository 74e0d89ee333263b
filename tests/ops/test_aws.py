"""The AWS side of the command: Lambda Invoke, and the stack outputs that name each stage's queues."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber

from ops.dead_letters import parse_dead_letter
from ops.queues import StageQueues, stack_queues
from ops.replay import lambda_invoker
from ops.stack import StackNotFoundError
from tests.ops.support import (
    INVOKE_SD_ARN,
    OTHER_OUTPUTS,
    TRIGGER_ARN,
    describe_stacks_response,
    lambda_record,
    received,
    s3_event,
    stub_client,
)

# --- lambda_invoker ---------------------------------------------------------------------------------------------


def test_lambda_invoker_sends_the_event_asynchronously_to_the_unqualified_function() -> None:
    client = stub_client("lambda")
    sent: list[dict[str, Any]] = []
    client.meta.events.register("before-parameter-build.lambda.Invoke", lambda params, **_: sent.append(params))
    event = s3_event()
    letter = parse_dead_letter(received(lambda_record(event, function_arn=f"{INVOKE_SD_ARN}:$LATEST")))

    with Stubber(client) as stubber:
        stubber.add_response(
            "invoke",
            {"StatusCode": 202},
            {"FunctionName": INVOKE_SD_ARN, "InvocationType": "Event", "Payload": ANY},
        )
        lambda_invoker(client)(letter.function_arn, letter.payload)
        stubber.assert_no_pending_responses()

    assert "Qualifier" not in sent[0]
    assert json.loads(sent[0]["Payload"]) == event


def test_lambda_invoker_raises_when_lambda_refuses() -> None:
    client = stub_client("lambda")
    with Stubber(client) as stubber:
        stubber.add_client_error("invoke", "ResourceNotFoundException", "Function not found", 404)
        with pytest.raises(ClientError, match="Function not found"):
            lambda_invoker(client)(TRIGGER_ARN, s3_event())


def test_lambda_invoker_raises_when_the_event_was_not_accepted() -> None:
    client = stub_client("lambda")
    with Stubber(client) as stubber:
        stubber.add_response("invoke", {"StatusCode": 200})
        with pytest.raises(RuntimeError, match="200 instead of 202"):
            lambda_invoker(client)(TRIGGER_ARN, s3_event())


# --- stack_queues ----------------------------------------------------------------------------------------------


def test_stack_queues_pairs_each_dead_letter_queue_with_its_stages_source_queue() -> None:
    client = stub_client("cloudformation")
    outputs = [
        *OTHER_OUTPUTS,
        {"OutputKey": "TranscribeTriggerDeadLetterQueueUrl", "OutputValue": "https://sqs/1/trigger-dlq"},
        {"OutputKey": "TranscribeTriggerQueueUrl", "OutputValue": "https://sqs/1/trigger"},
        {"OutputKey": "InvokeSdQueueUrl", "OutputValue": "https://sqs/1/sd"},
        {"OutputKey": "InvokeSdDeadLetterQueueUrl", "OutputValue": "https://sqs/1/sd-dlq"},
        {"OutputKey": "SweeperDeadLetterQueueUrl", "OutputValue": "https://sqs/1/sweeper-dlq"},
    ]
    with Stubber(client) as stubber:
        stubber.add_response("describe_stacks", describe_stacks_response(outputs), {"StackName": "InfraStack"})
        queues = stack_queues(client, "InfraStack")

    assert queues == [
        StageQueues("InvokeSdDeadLetterQueueUrl", "https://sqs/1/sd-dlq", "https://sqs/1/sd"),
        # EventBridge and the schedule invoke these two: no source queue to send anything back to.
        StageQueues("SweeperDeadLetterQueueUrl", "https://sqs/1/sweeper-dlq", None),
        StageQueues("TranscribeTriggerDeadLetterQueueUrl", "https://sqs/1/trigger-dlq", "https://sqs/1/trigger"),
    ]


def test_stack_queues_of_a_stack_without_outputs_is_empty() -> None:
    client = stub_client("cloudformation")
    response = describe_stacks_response([])
    del response["Stacks"][0]["Outputs"]  # CloudFormation leaves the key out, not an empty list
    with Stubber(client) as stubber:
        stubber.add_response("describe_stacks", response)
        assert stack_queues(client, "InfraStack") == []


def test_stack_queues_of_a_missing_stack() -> None:
    client = stub_client("cloudformation")
    with Stubber(client) as stubber:
        stubber.add_client_error("describe_stacks", "ValidationError", "Stack with id Nope does not exist", 400)
        with pytest.raises(StackNotFoundError, match="Nope"):
            stack_queues(client, "Nope")


def test_stack_queues_passes_other_errors_on() -> None:
    client = stub_client("cloudformation")
    with Stubber(client) as stubber:
        stubber.add_client_error("describe_stacks", "AccessDenied", "not authorized to DescribeStacks", 403)
        with pytest.raises(ClientError, match="not authorized"):
            stack_queues(client, "InfraStack")
