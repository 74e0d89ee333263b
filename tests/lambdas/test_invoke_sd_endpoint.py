"""invoke_sd's endpoint call: retries of transient errors with backoff, failures classified, the response parsed."""

from __future__ import annotations

import base64
import json
import socket
import time
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.stub import Stubber

from invoke_sd.endpoint import (
    EndpointFailure,
    RetryPolicy,
    derive_seed,
    invoke_endpoint,
    is_transient,
    request_parameters,
)
from pipeline_common.endpoint_output import parse_response
from tests.lambdas.invoke_sd_support import ENDPOINT, SOURCE_KEY, client_error
from tests.lambdas.support import endpoint_response, tiny_png

BODY = json.dumps({"inputs": "a cat", "parameters": {"seed": 1}}).encode()
TIMEOUT_MESSAGE = (
    "Your invocation timed out while waiting for a response from container primary. Review the latency metrics "
    "for each container in Amazon CloudWatch, resolve the issue, and try again."
)


def call(client: Any, sleeps: list[float]) -> tuple[bytes, int]:
    """invoke_endpoint with an instant, recorded sleep and a fixed jitter."""
    policy = RetryPolicy(max_attempts=4, base_delay_s=1.0, max_delay_s=16.0)
    return invoke_endpoint(
        client, endpoint_name=ENDPOINT, body=BODY, policy=policy, sleep=sleeps.append, rand=lambda: 0.5
    )


def failure(client: Any, sleeps: list[float]) -> EndpointFailure:
    with pytest.raises(EndpointFailure) as caught:
        call(client, sleeps)
    return caught.value


def test_seed_is_derived_from_the_source_key_unless_configured() -> None:
    seed = derive_seed(SOURCE_KEY)
    assert seed == derive_seed(SOURCE_KEY)
    assert 0 <= seed <= 2**32 - 1
    assert len({derive_seed(f"notes/take {n}.mp3") for n in range(200)}) == 200
    assert request_parameters({"height": 512}, SOURCE_KEY) == {"height": 512, "seed": seed}
    assert request_parameters({"seed": 42}, SOURCE_KEY)["seed"] == 42
    assert request_parameters({"seed": None}, SOURCE_KEY)["seed"] == seed


def test_backoff_is_full_jitter_and_capped() -> None:
    policy = RetryPolicy(max_attempts=9, base_delay_s=1.0, max_delay_s=16.0)
    assert [policy.delay(attempt, lambda: 1.0) for attempt in range(1, 8)] == [1, 2, 4, 8, 16, 16, 16]
    assert policy.delay(3, lambda: 0.25) == 1.0


def test_throttling_is_retried_with_backoff_then_succeeds(sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    client_error(stubber, "ThrottlingException", 400, "Rate exceeded")
    client_error(
        stubber, "ModelError", 424, "Received server error (503)", OriginalStatusCode=503, OriginalMessage="busy"
    )
    stubber.add_response("invoke_endpoint", endpoint_response(tiny_png()))
    sleeps: list[float] = []

    started = time.perf_counter()
    payload, attempts = call(client, sleeps)

    assert time.perf_counter() - started < 1.0  # no real sleeping
    stubber.assert_no_pending_responses()  # exactly three calls
    assert sleeps == [0.5, 1.0]  # full jitter (rand=0.5) of 1 s, then 2 s
    assert attempts == 3
    assert parse_response(payload, {}).png == tiny_png()


def test_still_failing_after_all_attempts_is_a_transient_failure(sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    for _ in range(4):
        client_error(stubber, "ServiceUnavailable", 503, "Service is unavailable")
    sleeps: list[float] = []

    error = failure(client, sleeps)

    stubber.assert_no_pending_responses()
    assert (error.code, error.transient, error.attempts, len(sleeps)) == ("endpoint-unavailable", True, 4, 3)
    assert "Service is unavailable" in error.reason
    assert "retried automatically" in error.action and "make replay" in error.action


def test_missing_endpoint_is_permanent_and_says_how_to_fix_it(sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    client_error(stubber, "ValidationError", 400, f"Endpoint {ENDPOINT} of account 123456789012 not found.")
    sleeps: list[float] = []

    error = failure(client, sleeps)

    assert (error.code, error.transient, error.attempts, sleeps) == ("endpoint-not-found", False, 1, [])
    assert f"Endpoint {ENDPOINT}" in error.reason
    assert f"the endpoint {ENDPOINT} does not exist: deploy HuggingFaceModelEndpoint" in error.action


def test_model_rejecting_the_request_reports_its_own_message(sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    client_error(
        stubber,
        "ModelError",
        424,
        "Received client error (400) from primary",
        OriginalStatusCode=400,
        # What the DLC's Multi Model Server really sends: the model's JSON inside an MMS envelope.
        OriginalMessage=json.dumps(
            {
                "code": 400,
                "type": "InternalServerException",
                "message": json.dumps({"error": "height must be a multiple of 8"}),
            }
        ),
    )
    sleeps: list[float] = []

    error = failure(client, sleeps)

    assert sleeps == []
    assert (error.code, error.reason, error.transient) == ("endpoint-rejected", "height must be a multiple of 8", False)
    assert "IMAGE_PARAMETERS" in error.action


def test_endpoint_timeout_is_not_retried_and_says_what_to_change(sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    client_error(stubber, "ModelError", 424, TIMEOUT_MESSAGE)

    error = failure(client, [])

    stubber.assert_no_pending_responses()  # one call: a retry would wait another 60 s for the same answer
    assert (error.code, error.reason, error.attempts) == ("endpoint-timeout", TIMEOUT_MESSAGE, 1)
    assert not error.transient
    for hint in ("60 s", "num_inference_steps", "height/width", "faster instance type"):
        assert hint in error.action


def test_access_denied_is_a_permanent_endpoint_error(sagemaker: tuple[Any, Stubber]) -> None:
    client, stubber = sagemaker
    client_error(stubber, "AccessDeniedException", 403, "not authorized to perform: sagemaker:InvokeEndpoint")

    error = failure(client, [])

    assert (error.code, error.transient) == ("endpoint-error", False)
    assert error.reason.startswith("AccessDeniedException: ")
    assert f"this function may invoke {ENDPOINT}" in error.action


def test_timeout_is_told_apart_from_other_model_errors() -> None:
    timeout = ClientError({"Error": {"Code": "ModelError", "Message": TIMEOUT_MESSAGE}, "OriginalStatusCode": 500}, "x")
    assert is_transient(timeout) is False
    busy = ClientError({"Error": {"Code": "ModelError", "Message": "server error"}, "OriginalStatusCode": 500}, "x")
    assert is_transient(busy) is True


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ReadTimeoutError(endpoint_url="https://runtime.sagemaker"), True),
        (ConnectTimeoutError(endpoint_url="https://runtime.sagemaker"), True),
        (EndpointConnectionError(endpoint_url="https://runtime.sagemaker"), True),
        (ConnectionClosedError(endpoint_url="https://runtime.sagemaker"), True),
        (
            ClientError(
                {"Error": {"Code": "ModelNotReadyException"}, "ResponseMetadata": {"HTTPStatusCode": 429}}, "x"
            ),
            True,
        ),
        (ClientError({"Error": {"Code": "InternalFailure"}, "ResponseMetadata": {"HTTPStatusCode": 500}}, "x"), True),
        (ClientError({"Error": {"Code": "Weird"}, "ResponseMetadata": {"HTTPStatusCode": 502}}, "x"), True),
        (ClientError({"Error": {"Code": "ModelError"}, "OriginalStatusCode": 500}, "x"), True),
        (ClientError({"Error": {"Code": "ModelError"}, "OriginalStatusCode": 400}, "x"), False),
        (ClientError({"Error": {"Code": "ValidationError"}, "ResponseMetadata": {"HTTPStatusCode": 400}}, "x"), False),
        (
            ClientError({"Error": {"Code": "AccessDeniedException"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "x"),
            False,
        ),
        (ValueError("not an AWS error"), False),
    ],
)
def test_transient_errors_are_told_apart(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_errors_are_retried_by_our_loop_only(aws: Any) -> None:
    from invoke_sd.handler import CLIENTS

    # The production client factory, pointed at a closed loopback port: connection refused at once.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", f"http://127.0.0.1:{_closed_port()}")
        CLIENTS.clear()
        client = CLIENTS.get("sagemaker_runtime")
        CLIENTS.clear()
    # botocore's `max_attempts` counts retries; `total_max_attempts` counts calls.
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 1}
    assert client.meta.config.read_timeout == 70
    sends: list[str] = []
    client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", lambda **_: sends.append("send"))
    sleeps: list[float] = []

    error = failure(client, sleeps)

    # Four attempts in all: botocore added none of its own.
    assert (len(sends), len(sleeps), error.attempts, error.code) == (4, 3, 4, "endpoint-unavailable")


def test_response_is_parsed_as_the_contract_says() -> None:
    png = tiny_png()
    body = endpoint_response(png, nsfw_content_detected=[False, True], prompt_truncated=True)["Body"].read()

    image = parse_response(body, {"seed": 1})

    assert image.png == png
    assert image.parameters["seed"] == 7  # as the endpoint used them
    assert (image.nsfw_content_detected, image.prompt_truncated) == (True, True)
    assert image.timings == {"inference_s": 1.25} and image.model == {"name": "stable-diffusion-v1-4"}
    bare = parse_response(json.dumps({"images": [base64.b64encode(png).decode()]}).encode(), {"seed": 1})
    assert (bare.parameters, bare.nsfw_content_detected, bare.prompt_truncated) == ({"seed": 1}, False, False)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (endpoint_response(b"GIF89a not a png")["Body"].read(), "not a PNG"),
        (b"not json", "no base64 image"),
        (b'{"images": []}', "no base64 image"),
        (b'{"images": ["***"]}', "no base64 image"),
        (b"[1]", "no base64 image"),
    ],
)
def test_response_without_a_png_is_refused(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_response(payload, {})
