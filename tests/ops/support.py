"""Dead-letter messages in the shapes the queues hold, a recording `invoke`, and stubbed AWS clients."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"
REGION = "eu-west-1"
ACCOUNT = "123456789012"
TRIGGER_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:InfraStack-TranscribeTriggerFunction-Ab12Cd34"
INVOKE_SD_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:InfraStack-InvokeSdFunction-Ef56Gh78"
FAILED_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:InfraStack-TranscribeFailedFunction-Ij90Kl12"
RULE_ARN = f"arn:aws:events:{REGION}:{ACCOUNT}:rule/InfraStack-TranscribeFailedRule-Mn34"


def s3_event(key: str = "recordings/hello.mp3") -> dict[str, Any]:
    """A real-shaped S3 ObjectCreated event for one key."""
    event = json.loads((EVENTS_DIR / "s3_put_simple.json").read_text())
    event["Records"][0]["s3"]["object"]["key"] = key
    return event


def transcribe_event(job_name: str = "s2i-hello-0123456789abcdef0123") -> dict[str, Any]:
    """A Transcribe Job State Change event, as the EventBridge rule delivers it."""
    return {
        "version": "0",
        "id": "7f1b3c2a-0000-4000-8000-000000000001",
        "detail-type": "Transcribe Job State Change",
        "source": "aws.transcribe",
        "account": ACCOUNT,
        "time": "2024-05-01T12:00:30Z",
        "region": REGION,
        "resources": [],
        "detail": {"TranscriptionJobName": job_name, "TranscriptionJobStatus": "FAILED"},
    }


def lambda_record(
    payload: Any,
    function_arn: str = f"{INVOKE_SD_ARN}:$LATEST",
    condition: str = "RetriesExhausted",
    response_payload: Any = None,
) -> dict[str, Any]:
    """A Lambda on-failure destination record (the documented example's shape)."""
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": "2024-05-01T12:03:05.568Z",
        "requestContext": {
            "requestId": "e4b46cbf-b738-4a4e-8880-a18cdf61200e",
            "functionArn": function_arn,
            "condition": condition,
            "approximateInvokeCount": 3,
        },
        "requestPayload": payload,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
    }
    if response_payload is not None:
        record["responsePayload"] = response_payload
    return record


def endpoint_down_error() -> dict[str, Any]:
    """The error payload Lambda records for an unhandled Python exception."""
    return {
        "errorMessage": "Could not find endpoint speech-to-image-sd.",
        "errorType": "ValidationError",
        "requestId": "e4b46cbf-b738-4a4e-8880-a18cdf61200e",
        "stackTrace": ['  File "/var/task/invoke_sd/handler.py", line 42, in handler\n'],
    }


def eventbridge_attributes(
    target_arn: str = FAILED_ARN, code: str = "SDK_CLIENT_ERROR", message: str = "Lambda rate exceeded"
) -> dict[str, dict[str, str]]:
    """The message attributes EventBridge puts on an event it could not deliver to its target."""
    values = {"RULE_ARN": RULE_ARN, "TARGET_ARN": target_arn, "ERROR_CODE": code, "ERROR_MESSAGE": message}
    return {name: {"DataType": "String", "StringValue": value} for name, value in values.items()}


def received(body: Any, attributes: dict[str, Any] | None = None, message_id: str = "m-1") -> dict[str, Any]:
    """An SQS message as ReceiveMessage returns it."""
    message: dict[str, Any] = {
        "MessageId": message_id,
        "ReceiptHandle": f"handle-{message_id}",
        "MD5OfBody": "0" * 32,
        "Body": body if isinstance(body, str) else json.dumps(body),
    }
    if attributes:
        message["MessageAttributes"] = attributes
    return message


@dataclass
class RecordingInvoke:
    """An `invoke` that records its calls and fails for the function ARNs in `failing` (or for all)."""

    failing: set[str] = field(default_factory=set)
    fail_all: bool = False
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, function_arn: str, payload: dict[str, Any]) -> None:
        """Record the call; raise like a refused Invoke would."""
        self.calls.append((function_arn, payload))
        if self.fail_all or function_arn in self.failing:
            raise RuntimeError(f"TooManyRequestsException: rate exceeded for {function_arn}")


OTHER_OUTPUTS = [
    {"OutputKey": "InputBucketName", "OutputValue": "infrastack-inputbucket-1"},
    {"OutputKey": "EndpointName", "OutputValue": "speech-to-image-sd"},
]


def stub_client(service: str) -> Any:
    """A real client that never reaches AWS (a Stubber answers, or the test fails)."""
    return boto3.client(service, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")


def describe_stacks_response(outputs: list[dict[str, str]]) -> dict[str, Any]:
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
