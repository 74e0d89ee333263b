"""The local SageMaker runtime endpoint, driven by boto3 as invoke_sd drives SageMaker.

It serves the tiny model through the Hugging Face toolkit; what is checked is the SageMaker side:
status codes, error codes and members botocore parses, content types.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from PIL import Image

from local.endpoint import SageMakerRuntimeServer
from local.tracking import EndpointCall
from tests.local.runtime_support import REPO  # noqa: F401 - sets the offline environment first

ENDPOINT = "speech-to-image-sd"
ACCOUNT = "000000000000"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[SageMakerRuntimeServer, list[EndpointCall]]]:
    """The endpoint serving the tiny model on a free loopback port."""
    import torch

    from sd_tools.tiny_model import ensure_tiny_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    calls: list[EndpointCall] = []
    server = SageMakerRuntimeServer(ENDPOINT, ACCOUNT, "us-east-1", on_call=calls.append)
    server.start()
    try:
        server.load(ensure_tiny_model())
        yield server, calls
    finally:
        server.stop()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client(server: tuple[SageMakerRuntimeServer, list[EndpointCall]]) -> Any:
    """A sagemaker-runtime client pointed at the local endpoint, retries off (as invoke_sd configures it)."""
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=server[0].url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )


def _request(prompt: str, **parameters: Any) -> bytes:
    return json.dumps(
        {"inputs": prompt, "parameters": {"height": 64, "width": 64, "num_inference_steps": 2, **parameters}}
    ).encode()


def test_an_invocation_returns_the_models_json(
    client: Any, server: tuple[SageMakerRuntimeServer, list[EndpointCall]]
) -> None:
    calls = server[1]
    before = len(calls)
    response = client.invoke_endpoint(
        EndpointName=ENDPOINT,
        Body=_request("a red apple", seed=3),
        ContentType="application/json",
        Accept="application/json",
    )
    assert response["ContentType"] == "application/json"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    document = json.loads(response["Body"].read())
    with Image.open(io.BytesIO(base64.b64decode(document["images"][0]))) as image:
        assert image.size == (64, 64)
    assert document["parameters"]["seed"] == 3
    [call] = calls[before:]
    assert call.status == 200
    assert call.finished_at >= call.received_at
    assert call.inference_s > 0


def test_accept_png_returns_the_image_bytes(client: Any) -> None:
    response = client.invoke_endpoint(
        EndpointName=ENDPOINT, Body=_request("a red apple"), ContentType="application/json", Accept="image/png"
    )
    assert response["ContentType"] == "image/png"
    assert response["Body"].read().startswith(b"\x89PNG\r\n\x1a\n")


def test_a_rejected_request_is_a_model_error_with_the_original_status(client: Any) -> None:
    with pytest.raises(ClientError) as raised:
        client.invoke_endpoint(EndpointName=ENDPOINT, Body=b'{"inputs": ""}', ContentType="application/json")
    response = raised.value.response
    assert response["Error"]["Code"] == "ModelError"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == 400
    assert "inputs is empty" in response["OriginalMessage"]
    assert response["LogStreamArn"].startswith(f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/")
    assert "Received client error (400) from primary" in response["Error"]["Message"]


def test_an_unknown_endpoint_is_a_validation_error(client: Any) -> None:
    with pytest.raises(ClientError) as raised:
        client.invoke_endpoint(
            EndpointName="someone-elses-endpoint", Body=_request("x"), ContentType="application/json"
        )
    response = raised.value.response
    assert response["Error"]["Code"] == "ValidationError"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["Error"]["Message"] == f"Endpoint someone-elses-endpoint of account {ACCOUNT} not found."


def test_other_paths_are_not_operations(server: tuple[SageMakerRuntimeServer, list[EndpointCall]]) -> None:
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{server[0].url}/ping", timeout=5)  # noqa: S310 - loopback URL built above
    assert raised.value.code == 404
    assert json.loads(raised.value.read())["__type"] == "UnknownOperationException"


# -- InvokeEndpointAsync ------------------------------------------------------------------------------

BUCKET = "s2i-local-transcripts"


@pytest.fixture()
def async_endpoint(server: tuple[SageMakerRuntimeServer, list[EndpointCall]]) -> Iterator[tuple[Any, list[str]]]:
    """The server's async endpoint on moto's in-process S3; notifications are collected in order."""
    from moto import mock_aws

    from local.async_endpoint import AsyncEndpoint
    from local.faults import Faults
    from local.tracking import Activity

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        sent: list[str] = []
        endpoint = AsyncEndpoint(
            run_model=server[0].run_model,
            s3=lambda: s3,
            send_notification=sent.append,
            bucket=BUCKET,
            region="us-east-1",
            log_stream_arn=server[0].log_stream_arn(),
            activity=Activity(),
            faults=server[0].faults,
            emit=lambda progress: None,
        )
        assert isinstance(server[0].faults, Faults)
        server[0].async_endpoint = endpoint
        endpoint.start()
        try:
            yield s3, sent
        finally:
            endpoint.stop()
            server[0].async_endpoint = None


def _wait_for(sent: list[str], count: int) -> list[dict[str, Any]]:
    import time

    deadline = time.monotonic() + 60
    while len(sent) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return [json.loads(message) for message in sent]


def test_an_async_request_is_accepted_then_answered_in_order_with_sagemakers_notification(
    client: Any, async_endpoint: tuple[Any, list[str]]
) -> None:
    s3, sent = async_endpoint
    locations = []
    for index, prompt in enumerate(["a red apple", "a castle at sunset"]):
        key = f"async/requests/note{index}.mp3/{index:040x}.json"
        s3.put_object(Bucket=BUCKET, Key=key, Body=_request(prompt))
        response = client.invoke_endpoint_async(
            EndpointName=ENDPOINT,
            InputLocation=f"s3://{BUCKET}/{key}",
            ContentType="application/json",
            Accept="application/json",
            InferenceId=f"{index:040x}",
            RequestTTLSeconds=600,
        )
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
        assert response["InferenceId"] == f"{index:040x}"
        assert response["OutputLocation"] == f"s3://{BUCKET}/async/outputs/{index:040x}.out"
        assert response["FailureLocation"] == f"s3://{BUCKET}/async/failures/{index:040x}-error.out"
        locations.append((key, response["OutputLocation"]))

    notifications = _wait_for(sent, 2)

    assert [item["inferenceId"] for item in notifications] == [f"{0:040x}", f"{1:040x}"], "in order"
    for (key, output), notification in zip(locations, notifications, strict=True):
        assert set(notification) == {
            "awsRegion", "eventTime", "receivedTime", "invocationStatus", "requestParameters",
            "responseParameters", "inferenceId", "eventVersion", "eventSource", "eventName",
        }  # fmt: skip
        assert notification["invocationStatus"] == "Completed"
        assert notification["eventSource"] == "aws:sagemaker" and notification["eventName"] == "InferenceResult"
        assert notification["requestParameters"] == {"endpointName": ENDPOINT, "inputLocation": f"s3://{BUCKET}/{key}"}
        assert notification["responseParameters"] == {"contentType": "application/json", "outputLocation": output}
        body = json.loads(s3.get_object(Bucket=BUCKET, Key=output.split("/", 3)[3])["Body"].read())
        assert body["images"], "the body /invocations would return"


def test_a_rejected_async_request_is_a_failed_notification_with_a_failure_object(
    client: Any, async_endpoint: tuple[Any, list[str]]
) -> None:
    s3, sent = async_endpoint
    key = "async/requests/bad.mp3/" + "f" * 40 + ".json"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b'{"inputs": ""}')
    client.invoke_endpoint_async(EndpointName=ENDPOINT, InputLocation=f"s3://{BUCKET}/{key}", InferenceId="f" * 40)

    [notification] = _wait_for(sent, 1)

    assert notification["invocationStatus"] == "Failed"
    assert notification["failureReason"].startswith("ClientError: Received client error (400) from model")
    failure = notification["responseParameters"]["failureLocation"]
    assert b"inputs is empty" in s3.get_object(Bucket=BUCKET, Key=failure.split("/", 3)[3])["Body"].read()


def test_an_async_request_without_an_s3_input_is_a_validation_error(
    client: Any, async_endpoint: tuple[Any, list[str]]
) -> None:
    with pytest.raises(ClientError) as raised:
        client.invoke_endpoint_async(EndpointName=ENDPOINT, InputLocation="https://example.com/x.json")
    assert raised.value.response["Error"]["Code"] == "ValidationError"
