"""The SageMaker endpoint call: request, retries of transient errors, failures classified."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError, IncompleteReadError

from pipeline_common.aws_errors import error_code, error_message, http_status
from pipeline_common.endpoint_output import innermost_message

logger = logging.getLogger(__name__)

T = TypeVar("T")


# SageMaker ends a real-time invocation after 60 s and reports it as a ModelError with this wording.
_INVOCATION_TIMEOUT = re.compile(r"invocation timed out|timed out while waiting for a response", re.IGNORECASE)


# Error codes SageMaker runtime uses for conditions that pass (throttling, scaling, a model still loading).
TRANSIENT_ERROR_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalDependencyException",
        "ModelNotReadyException",
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter for transient endpoint errors."""

    max_attempts: int = 4
    base_delay_s: float = 1.0
    max_delay_s: float = 16.0

    def delay(self, attempt: int, rand: Callable[[], float]) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return rand() * min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))


class EndpointFailure(RuntimeError):
    """The endpoint call failed; carries what the error record needs and whether a later retry may succeed.

    Permanent failures (missing endpoint, model 4xx, a timeout that would repeat, a bad response) become
    the upload's error record at once; transient ones (overload, scaling, network) go back to the queue.
    """

    def __init__(self, code: str, reason: str, action: str, attempts: int, *, transient: bool = False) -> None:
        super().__init__(f"{code}: {reason} (after {attempts} attempt{'s' if attempts != 1 else ''})")
        self.code = code
        self.reason = reason
        self.action = action
        self.attempts = attempts
        self.transient = transient


def derive_seed(source_key: str) -> int:
    """A seed in 0..2**32-1 derived from the source key, so a repeat gives the same image."""
    return int.from_bytes(hashlib.sha256(source_key.encode("utf-8")).digest()[:4], "big")


def request_parameters(image_parameters: Mapping[str, Any], source_key: str) -> dict[str, Any]:
    """The request's `parameters`: the configured ones, plus a derived seed when none is set."""
    parameters = dict(image_parameters)
    if parameters.get("seed") is None:
        parameters["seed"] = derive_seed(source_key)
    return parameters


def is_invocation_timeout(error: BaseException) -> bool:
    """True when SageMaker ended the invocation at its 60 s limit (a ModelError saying it timed out)."""
    if error_code(error) != "ModelError":
        return False
    response = getattr(error, "response", None)
    original = response.get("OriginalMessage") if isinstance(response, dict) else None
    return any(_INVOCATION_TIMEOUT.search(str(text)) for text in (error_message(error), original) if text)


def is_transient(error: BaseException) -> bool:
    """True for endpoint errors worth retrying: throttling, 5xx, model loading, network trouble."""
    if is_invocation_timeout(error):
        # The same request would take as long again: retrying only multiplies the 60 s wait.
        return False
    if isinstance(error, BotoConnectionError | HTTPClientError | IncompleteReadError):
        # Connection refused/reset, connect and read timeouts, a response cut off mid-stream.
        return True
    code = error_code(error)
    if code is None:
        return False
    if code in TRANSIENT_ERROR_CODES:
        return True
    if code == "ModelError":
        original = _original_status(error)
        return original is not None and original >= 500
    status = http_status(error)
    return status is not None and status >= 500


def _original_status(error: BaseException) -> int | None:
    # botocore puts a modeled error's members (OriginalStatusCode, ...) at the top of the response.
    value = getattr(error, "response", {}).get("OriginalStatusCode")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def endpoint_message(error: BaseException) -> str:
    """The most useful message in an endpoint error: the model's own `{"error": ...}` where there is one."""
    response = getattr(error, "response", None)
    original = response.get("OriginalMessage") if isinstance(response, dict) else None
    if original:
        return innermost_message(str(original))
    return error_message(error)


def describe_endpoint_failure(error: BaseException, endpoint_name: str, attempts: int) -> EndpointFailure:
    """Turn the last endpoint error into an error code, a reason and what to do about it."""
    message = endpoint_message(error)
    code = error_code(error)
    # Permanent failures are not retried: once the cause is fixed, a new upload gets its picture.
    rerun = "then upload the recording again"
    if code == "ValidationError" and re.search(r"not found|could not find|does not exist", message, re.IGNORECASE):
        return EndpointFailure(
            "endpoint-not-found",
            message,
            f"the endpoint {endpoint_name} does not exist: deploy HuggingFaceModelEndpoint "
            f"(make deploy-endpoint), {rerun}",
            attempts,
        )
    if is_invocation_timeout(error):
        return EndpointFailure(
            "endpoint-timeout",
            message,
            f"generating the image took longer than the 60 s a real-time endpoint may take: lower "
            f"num_inference_steps or height/width (imageParameters in cdk.json), or deploy {endpoint_name} on a "
            f"faster instance type, {rerun}",
            attempts,
        )
    if is_transient(error):
        status = _original_status(error) or http_status(error)
        return EndpointFailure(
            "endpoint-unavailable",
            f"{type(error).__name__}{f' (HTTP {status})' if status else ''}: {message}",
            f"nothing yet: the endpoint {endpoint_name} is overloaded, scaling or starting, and the request is "
            "retried automatically; if it keeps failing, the event waits in invoke_sd's dead-letter queue: check the "
            "endpoint's status and CloudWatch logs, then run `make replay`",
            attempts,
            transient=True,
        )
    if code == "ModelError":
        # The log stream's ARN names the account: it goes to the log, the record points at the endpoint's logs.
        logger.error(
            "the model rejected the request",
            extra={
                "endpoint_name": endpoint_name,
                "log_stream_arn": getattr(error, "response", {}).get("LogStreamArn"),
            },
        )
        return EndpointFailure(
            "endpoint-rejected",
            message,
            f"the model rejected the request: check IMAGE_PARAMETERS (imageParameters in cdk.json) and the "
            f"endpoint's CloudWatch logs (/aws/sagemaker/Endpoints/{endpoint_name}), {rerun}",
            attempts,
        )
    return EndpointFailure(
        "endpoint-error",
        f"{code or type(error).__name__}: {message}",
        f"check that this function may invoke {endpoint_name} and that the endpoint is InService, {rerun}",
        attempts,
    )


def invoke_endpoint(
    sagemaker: Any,
    *,
    endpoint_name: str,
    body: bytes,
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    rand: Callable[[], float],
) -> tuple[bytes, int]:
    """Call the endpoint, retrying transient errors; returns the response body and the attempts used."""

    def call() -> bytes:
        response = sagemaker.invoke_endpoint(
            EndpointName=endpoint_name, ContentType="application/json", Accept="application/json", Body=body
        )
        # Reading the stream can time out too: it belongs to the attempt.
        return response["Body"].read()

    return call_with_retries(call, endpoint_name=endpoint_name, policy=policy, sleep=sleep, rand=rand)


def call_with_retries(
    call: Callable[[], T],
    *,
    endpoint_name: str,
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    rand: Callable[[], float],
) -> tuple[T, int]:
    """Run one endpoint call, retrying transient errors; its result and the attempts used.

    The last error becomes an `EndpointFailure`. The botocore client is configured not to retry itself, so
    this loop is the only one (for InvokeEndpoint and InvokeEndpointAsync alike).
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return call(), attempt
        except Exception as error:
            if not is_transient(error) or attempt >= policy.max_attempts:
                raise describe_endpoint_failure(error, endpoint_name, attempt) from error
            delay = policy.delay(attempt, rand)
            logger.warning(
                "transient endpoint error; retrying",
                extra={
                    "endpoint_name": endpoint_name,
                    "attempt": attempt,
                    "delay_s": round(delay, 3),
                    "error_type": type(error).__name__,
                    "error_code": error_code(error),
                },
            )
            sleep(delay)
