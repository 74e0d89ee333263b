"""The command line: which queues it replays, what it prints, and its exit codes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from ops import replay_dead_letters as module
from ops.replay_dead_letters import main
from tests.ops.conftest import Queue, make_queue, make_stage_queues
from tests.ops.conftest import StageQueues as MotoStageQueues
from tests.ops.support import (
    INVOKE_SD_ARN,
    OTHER_OUTPUTS,
    REGION,
    TRIGGER_ARN,
    describe_stacks_response,
    endpoint_down_error,
    lambda_record,
    s3_event,
    stub_client,
)

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
def stages(aws: None) -> dict[str, MotoStageQueues]:
    """The two stages S3 notifies, each a source queue redriving to its dead-letter queue, by output prefix."""
    return {"TranscribeTrigger": make_stage_queues("trigger"), "InvokeSd": make_stage_queues("invoke-sd")}


@pytest.fixture
def stack(
    stages: dict[str, MotoStageQueues], monkeypatch: pytest.MonkeyPatch
) -> tuple[FakeSession, Stubber, dict[str, Queue]]:
    """InfraStack with two stages' queues in moto; DescribeStacks stubbed to name them; the dead-letter queues."""
    queues = {f"{stage}DeadLetterQueueUrl": pair.dead_letters for stage, pair in stages.items()}
    cloudformation = stub_client("cloudformation")
    stubber = Stubber(cloudformation)
    outputs = OTHER_OUTPUTS + [{"OutputKey": name, "OutputValue": queue.url} for name, queue in queues.items()]
    outputs += [{"OutputKey": f"{stage}QueueUrl", "OutputValue": pair.source.url} for stage, pair in stages.items()]
    stubber.add_response("describe_stacks", describe_stacks_response(outputs), {"StackName": "InfraStack"})
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


def test_main_sends_redriven_s3_events_back_to_their_stages_queue(
    stack: Any, stages: dict[str, MotoStageQueues], capsys: pytest.CaptureFixture[str]
) -> None:
    session, _, _ = stack
    upload, transcript = s3_event("uploads/a.mp3"), s3_event("transcripts/a.mp3.json")
    stages["TranscribeTrigger"].redrive(upload)
    stages["InvokeSd"].redrive(transcript)

    code = main([])

    out = capsys.readouterr().out
    assert code == 0
    assert session.lambda_.invoked == []
    for stage, event in (("TranscribeTrigger", upload), ("InvokeSd", transcript)):
        source = stages[stage].source
        (back,) = source.sqs.receive_message(QueueUrl=source.url)["Messages"]
        assert json.loads(back["Body"]) == event, f"{stage}'s event went back to {stage}'s queue"
        assert stages[stage].dead_letters.counts() == (0, 0)
    assert "S3 event (s3://speech-to-image-input/uploads/a.mp3) [MaxReceiveCountExceeded]" in out
    assert out.splitlines()[-1] == "replayed 2, failed 0, unreadable 0"


def test_main_with_a_queue_url_finds_its_source_queue_through_the_redrive_policy(
    stack: Any, stages: dict[str, MotoStageQueues], capsys: pytest.CaptureFixture[str]
) -> None:
    session, _, _ = stack
    stages["InvokeSd"].redrive(s3_event())

    code = main(["--queue-url", stages["InvokeSd"].dead_letters.url])

    assert code == 0
    assert "cloudformation" not in session.created
    assert stages["InvokeSd"].source.counts() == (1, 0)
    assert capsys.readouterr().out.splitlines()[-1] == "replayed 1, failed 0, unreadable 0"


def test_main_dry_run_reports_what_it_cannot_replay(capsys: pytest.CaptureFixture[str], stack: Any) -> None:
    # A queue no source queue redrives to: its stray S3 event has nowhere to go.
    orphan = make_queue("orphan-dlq")
    orphan.send(s3_event())

    code = main(["--dry-run", "--queue-url", orphan.url])

    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED, left in the queue: an S3 event redriven from the stage's queue" in out
    assert out.splitlines()[-1] == "dry run: would replay 0, cannot replay 1, unreadable 0; nothing was changed"
    assert orphan.counts() == (1, 0)


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
    cloudformation = stub_client("cloudformation")
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
    empty_stack.add_response("describe_stacks", describe_stacks_response(OTHER_OUTPUTS))

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
