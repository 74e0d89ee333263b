"""The AWS side: Lambda Invoke, the stack's outputs, and the command line's output and exit codes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber

from ops import replay_dead_letters as module
from ops.replay_dead_letters import (
    StackNotFoundError,
    dead_letter_queue_urls,
    lambda_invoker,
    main,
    parse_dead_letter,
)
from tests.ops.conftest import Queue, make_queue
from tests.ops.support import (
    INVOKE_SD_ARN,
    REGION,
    TRIGGER_ARN,
    endpoint_down_error,
    lambda_record,
    received,
    s3_event,
)

OTHER_OUTPUTS = [
    {"OutputKey": "InputBucketName", "OutputValue": "infrastack-inputbucket-1"},
    {"OutputKey": "EndpointName", "OutputValue": "speech-to-image-sd"},
]


def _client(service: str) -> Any:
    """A real client that never reaches AWS (a Stubber answers, or the test fails)."""
    return boto3.client(service, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")


def _describe_stacks_response(outputs: list[dict[str, str]]) -> dict[str, Any]:
    """DescribeStacks for one stack with these outputs."""
    return {
        "Stacks": [
            {
                "StackName": "InfraStack",
                "CreationTime": "2024-05-01T12:00:00Z",
                "StackStatus": "CREATE_COMPLETE",
                "Outputs": outputs,
            }
        ]
    }


# --- lambda_invoker ---------------------------------------------------------------------------------------------


def test_lambda_invoker_sends_the_event_asynchronously_to_the_unqualified_function() -> None:
    client = _client("lambda")
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
    client = _client("lambda")
    with Stubber(client) as stubber:
        stubber.add_client_error("invoke", "ResourceNotFoundException", "Function not found", 404)
        with pytest.raises(ClientError, match="Function not found"):
            lambda_invoker(client)(TRIGGER_ARN, s3_event())


def test_lambda_invoker_raises_when_the_event_was_not_accepted() -> None:
    client = _client("lambda")
    with Stubber(client) as stubber:
        stubber.add_response("invoke", {"StatusCode": 200})
        with pytest.raises(RuntimeError, match="200 instead of 202"):
            lambda_invoker(client)(TRIGGER_ARN, s3_event())


# --- dead_letter_queue_urls -------------------------------------------------------------------------------------


def test_dead_letter_queue_urls_keeps_only_the_dead_letter_outputs() -> None:
    client = _client("cloudformation")
    outputs = [
        *OTHER_OUTPUTS,
        {"OutputKey": "TranscribeTriggerDeadLetterQueueUrl", "OutputValue": "https://sqs/1/trigger-dlq"},
        {"OutputKey": "InvokeSdDeadLetterQueueUrl", "OutputValue": "https://sqs/1/sd-dlq"},
    ]
    with Stubber(client) as stubber:
        stubber.add_response("describe_stacks", _describe_stacks_response(outputs), {"StackName": "InfraStack"})
        urls = dead_letter_queue_urls(client, "InfraStack")

    assert urls == {
        "InvokeSdDeadLetterQueueUrl": "https://sqs/1/sd-dlq",
        "TranscribeTriggerDeadLetterQueueUrl": "https://sqs/1/trigger-dlq",
    }


def test_dead_letter_queue_urls_of_a_stack_without_outputs_is_empty() -> None:
    client = _client("cloudformation")
    response = _describe_stacks_response([])
    del response["Stacks"][0]["Outputs"]  # CloudFormation leaves the key out, not an empty list
    with Stubber(client) as stubber:
        stubber.add_response("describe_stacks", response)
        assert dead_letter_queue_urls(client, "InfraStack") == {}


def test_dead_letter_queue_urls_of_a_missing_stack() -> None:
    client = _client("cloudformation")
    with Stubber(client) as stubber:
        stubber.add_client_error("describe_stacks", "ValidationError", "Stack with id Nope does not exist", 400)
        with pytest.raises(StackNotFoundError, match="Nope"):
            dead_letter_queue_urls(client, "Nope")


def test_dead_letter_queue_urls_passes_other_errors_on() -> None:
    client = _client("cloudformation")
    with Stubber(client) as stubber:
        stubber.add_client_error("describe_stacks", "AccessDenied", "not authorized to DescribeStacks", 403)
        with pytest.raises(ClientError, match="not authorized"):
            dead_letter_queue_urls(client, "InfraStack")


# --- main -------------------------------------------------------------------------------------------------------


@dataclass
class FakeLambda:
    """A Lambda client that accepts every Invoke, except for the function ARNs in `failing`."""

    failing: set[str] = field(default_factory=set)
    invoked: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def invoke(self, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:
        assert InvocationType == "Event"
        if FunctionName in self.failing:
            raise ClientError({"Error": {"Code": "TooManyRequestsException", "Message": "Rate exceeded"}}, "Invoke")
        self.invoked.append((FunctionName, json.loads(Payload)))
        return {"StatusCode": 202}


@dataclass
class FakeSession:
    """What `main` needs of a boto3 session: moto SQS, a stubbed CloudFormation, a fake Lambda."""

    sqs: Any
    cloudformation: Any
    lambda_: FakeLambda = field(default_factory=FakeLambda)
    region_name: str = REGION
    created: list[str] = field(default_factory=list)

    def client(self, service: str) -> Any:
        self.created.append(service)
        return {"sqs": self.sqs, "cloudformation": self.cloudformation, "lambda": self.lambda_}[service]


@pytest.fixture
def stack(aws: None, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeSession, Stubber, dict[str, Queue]]:
    """InfraStack with two dead-letter queues in moto; DescribeStacks stubbed to name them."""
    queues = {
        "TranscribeTriggerDeadLetterQueueUrl": make_queue("trigger-dlq"),
        "InvokeSdDeadLetterQueueUrl": make_queue("invoke-sd-dlq"),
    }
    cloudformation = _client("cloudformation")
    stubber = Stubber(cloudformation)
    outputs = OTHER_OUTPUTS + [{"OutputKey": name, "OutputValue": queue.url} for name, queue in queues.items()]
    stubber.add_response("describe_stacks", _describe_stacks_response(outputs), {"StackName": "InfraStack"})
    stubber.activate()
    session = FakeSession(sqs=next(iter(queues.values())).sqs, cloudformation=cloudformation)
    monkeypatch.setattr(module, "_session", lambda region: session)
    monkeypatch.setattr(module, "RECEIVE_WAIT_S", 0)  # moto has no sampling: an empty answer is final
    return session, stubber, queues


def test_main_replays_every_queue_of_the_stack(stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    session, stubber, queues = stack
    trigger_event, sd_event = s3_event("a.mp3"), s3_event("b.mp3")
    queues["TranscribeTriggerDeadLetterQueueUrl"].send(
        lambda_record(trigger_event, function_arn=f"{TRIGGER_ARN}:$LATEST", response_payload=endpoint_down_error())
    )
    queues["InvokeSdDeadLetterQueueUrl"].send(lambda_record(sd_event, response_payload=endpoint_down_error()))

    code = main([])

    out = capsys.readouterr().out
    assert code == 0
    assert sorted(session.lambda_.invoked, key=str) == sorted(
        [(TRIGGER_ARN, trigger_event), (INVOKE_SD_ARN, sd_event)], key=str
    )
    assert all(queue.counts() == (0, 0) for queue in queues.values())
    line = next(line for line in out.splitlines() if "InvokeSdFunction" in line)
    assert "RetriesExhausted" in line
    assert "ValidationError: Could not find endpoint" in line
    assert "replayed" in line
    assert out.splitlines()[-1] == "replayed 2, failed 0, unreadable 0"
    stubber.assert_no_pending_responses()


def test_main_exits_1_when_an_invoke_fails(stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    session, _, queues = stack
    session.lambda_.failing.add(TRIGGER_ARN)
    queues["TranscribeTriggerDeadLetterQueueUrl"].send(lambda_record(s3_event(), function_arn=TRIGGER_ARN))

    code = main([])

    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED, left in the queue: ClientError" in out
    assert "Rate exceeded" in out
    assert out.splitlines()[-1] == "replayed 0, failed 1, unreadable 0"
    assert queues["TranscribeTriggerDeadLetterQueueUrl"].counts() == (1, 0)


def test_main_exits_1_for_an_unreadable_message(stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, queues = stack
    message_id = queues["InvokeSdDeadLetterQueueUrl"].send("garbage")

    code = main([])

    out = capsys.readouterr().out
    assert code == 1
    assert f"message {message_id} -> UNREADABLE" in out
    assert out.splitlines()[-1] == "replayed 0, failed 0, unreadable 1"


def test_main_dry_run_changes_nothing(stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    session, _, queues = stack
    queues["InvokeSdDeadLetterQueueUrl"].send(lambda_record(s3_event()))

    code = main(["--dry-run"])

    out = capsys.readouterr().out
    assert code == 0
    assert session.lambda_.invoked == []
    assert "would replay (dry run)" in out
    assert "nothing was changed" in out.splitlines()[-1]
    assert queues["InvokeSdDeadLetterQueueUrl"].counts() == (1, 0)


def test_main_limit_counts_across_queues(stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    session, _, queues = stack
    for queue in queues.values():
        for index in range(2):
            queue.send(lambda_record(s3_event(f"{index}.mp3")))

    code = main(["--limit", "3"])

    assert code == 0
    assert len(session.lambda_.invoked) == 3
    assert sum(queue.counts()[0] for queue in queues.values()) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "replayed 3, failed 0, unreadable 0"


def test_main_with_queue_urls_does_not_read_the_stack(stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    session, _, queues = stack
    queue = queues["InvokeSdDeadLetterQueueUrl"]
    queue.send(lambda_record(s3_event()))

    code = main(["--queue-url", queue.url])

    assert code == 0
    assert "cloudformation" not in session.created
    assert len(session.lambda_.invoked) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "replayed 1, failed 0, unreadable 0"


def test_main_unknown_queue_is_a_usage_error(stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--queue-url", f"https://sqs.{REGION}.amazonaws.com/123456789012/no-such-queue"])

    assert code == 2
    assert "no such queue" in capsys.readouterr().err


@pytest.fixture
def empty_stack(monkeypatch: pytest.MonkeyPatch) -> Stubber:
    """A session whose CloudFormation is stubbed and nothing else is expected to be called."""
    cloudformation = _client("cloudformation")
    stubber = Stubber(cloudformation)
    stubber.activate()
    session = FakeSession(sqs=None, cloudformation=cloudformation)
    monkeypatch.setattr(module, "_session", lambda region: session)
    return stubber


def test_main_stack_not_found(empty_stack: Stubber, capsys: pytest.CaptureFixture[str]) -> None:
    empty_stack.add_client_error("describe_stacks", "ValidationError", "Stack with id Other does not exist", 400)

    code = main(["--stack", "Other"])

    err = capsys.readouterr().err
    assert code == 2
    assert f"stack Other not found in region {REGION}" in err
    assert "--stack" in err
    assert "--region" in err


def test_main_stack_without_dead_letter_outputs(empty_stack: Stubber, capsys: pytest.CaptureFixture[str]) -> None:
    empty_stack.add_response("describe_stacks", _describe_stacks_response(OTHER_OUTPUTS))

    code = main([])

    assert code == 2
    assert "no *DeadLetterQueueUrl outputs" in capsys.readouterr().err


def test_main_other_aws_errors_exit_1(empty_stack: Stubber, capsys: pytest.CaptureFixture[str]) -> None:
    empty_stack.add_client_error("describe_stacks", "AccessDenied", "not authorized to DescribeStacks", 403)

    assert main([]) == 1
    assert "not authorized" in capsys.readouterr().err


@pytest.fixture
def no_aws_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An environment with no credentials and no region anywhere botocore looks (and no instance metadata)."""
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.parametrize("argv", [[], ["--queue-url", f"https://sqs.{REGION}.amazonaws.com/123456789012/dlq"]])
def test_main_without_credentials(
    no_aws_configuration: None, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """The real boto3 session: botocore refuses to sign before anything goes on the network."""
    code = main([*argv, "--region", REGION])

    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: no AWS credentials: configure them (aws configure / AWS_PROFILE) and retry"
    )


def test_main_without_region(no_aws_configuration: None, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([])

    assert code == 2
    assert "pass --region" in capsys.readouterr().err


def test_main_takes_the_region_from_aws_region(
    no_aws_configuration: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The README exports AWS_REGION (as the CDK wants); botocore alone reads only AWS_DEFAULT_REGION.
    monkeypatch.setenv("AWS_REGION", REGION)

    assert main([]) == 2
    err = capsys.readouterr().err
    assert "pass --region" not in err
    assert "no AWS credentials" in err


def test_main_unknown_profile(
    no_aws_configuration: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "nobody")

    assert main(["--region", REGION]) == 2
    assert "nobody" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["0", "-1", "many"])
def test_main_rejects_a_bad_limit(limit: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--limit", limit])
    assert exit_info.value.code == 2
    assert "--limit" in capsys.readouterr().err


def test_help_says_when_to_use_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "After fixing the cause (e.g. the endpoint was down), send the failed events through the pipeline" in text
    assert "replayed events that fail again return to the queue" in text
    assert "--dry-run" in text
