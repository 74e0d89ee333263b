"""A `Failed` notification's failureReason, read as an error code, the model's own words and what to do."""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass

from pipeline_common.endpoint_output import innermost_message

ENDPOINT_REJECTED = "endpoint-rejected"
ENDPOINT_TIMEOUT = "endpoint-timeout"
ENDPOINT_ERROR = "endpoint-error"

# "ClientError: Received client error (400) from model with message "{...}". See https://... for more information."
_CLIENT_ERROR = re.compile(r"client\s*error\s*\((4\d\d)\)", re.IGNORECASE)
_EXPIRED = re.compile(r"expired|\bTTL\b|time[- ]to[- ]live", re.IGNORECASE)
_TIMEOUT = re.compile(r"timed?[- ]?out", re.IGNORECASE)
_WITH_MESSAGE = re.compile(r'with message "(.*)"', re.DOTALL)
# The pointer to the endpoint's logs names the region and the account: the record points at the log group itself.
_SEE_LOGS = re.compile(r"\.?\s*See\s+https?://\S+.*$", re.DOTALL)
RERUN = "then upload the recording again"


@dataclass(frozen=True)
class AsyncFailure:
    """What the error record says about a failed asynchronous request."""

    code: str
    reason: str
    action: str


def model_message(failure_reason: str, failure_body: str | None = None) -> str:
    """The most useful words about a failure: the failure object's, else those quoted in failureReason."""
    if failure_body and failure_body.strip():
        return innermost_message(failure_body.strip())
    match = _WITH_MESSAGE.search(failure_reason)
    if match is None:
        return _SEE_LOGS.sub("", failure_reason).strip() or "no reason given"
    quoted = match.group(1)
    if '\\"' in quoted:
        # Quoted as a JSON string inside the reason: undo the escaping before unwrapping the body.
        with contextlib.suppress(ValueError):
            quoted = json.loads(f'"{quoted}"')
    return innermost_message(quoted.strip())


def describe_failure(failure_reason: str, failure_body: str | None, endpoint_name: str) -> AsyncFailure:
    """Classify a failed request: the model refused it (4xx), it ran too long, it expired, or something else."""
    logs = f"the endpoint's CloudWatch logs (/aws/sagemaker/Endpoints/{endpoint_name})"
    message = model_message(failure_reason, failure_body)
    if _CLIENT_ERROR.search(failure_reason):
        return AsyncFailure(
            ENDPOINT_REJECTED,
            message,
            f"the model rejected the request: check IMAGE_PARAMETERS (imageParameters in cdk.json) and {logs}, {RERUN}",
        )
    if _EXPIRED.search(failure_reason):
        return AsyncFailure(
            ENDPOINT_ERROR,
            f"the request expired in the endpoint's queue before a GPU took it: {message}",
            f"the endpoint did not start or keep up in time: check its scaling (it starts from zero on "
            f"HasBacklogWithoutCapacity) and {logs}; a longer requestTtlMinutes in cdk.json lets requests wait "
            f"longer, {RERUN}",
        )
    if _TIMEOUT.search(failure_reason):
        return AsyncFailure(
            ENDPOINT_TIMEOUT,
            message,
            f"generating the image took longer than the endpoint allows one request: lower num_inference_steps "
            f"or height/width (imageParameters in cdk.json), or deploy {endpoint_name} on a faster instance type, "
            f"{RERUN}",
        )
    return AsyncFailure(ENDPOINT_ERROR, message, f"check {logs}, {RERUN}")
