"""invoke_sd's asynchronous path: stage the request in S3 and queue it at the endpoint (InvokeEndpointAsync).

The image arrives later: SageMaker writes it to S3 and publishes a notification, which async_result turns into
the upload's result. docs/CONTRACTS.md has the key layout.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from invoke_sd.endpoint import EndpointFailure, RetryPolicy, call_with_retries
from pipeline_common.async_requests import StagedRequest, remove_staged, staged_request
from pipeline_common.keys import KeyMappingError
from pipeline_common.render import ImageRequest

logger = logging.getLogger(__name__)

SUBMITTED = "submitted"
KEY_TOO_LONG = "key-too-long"
# A queued request expires after its TTL; once taken off the queue it may run for InvocationTimeoutSeconds
# and its notification still passes SNS and SQS (this margin). The generation lease lasts that much
# longer than the TTL, so a repeated transcript event meanwhile is a duplicate, never a second request.
NOTIFICATION_MARGIN_S = 300


def wait_seconds(settings: Any) -> float:
    """How long the upload's generation lease lasts once its request is queued (settings: invoke_sd's)."""
    return settings.request_ttl_seconds + settings.invocation_timeout_seconds + NOTIFICATION_MARGIN_S


def request_body(request: ImageRequest) -> bytes:
    """The endpoint request of docs/CONTRACTS.md: the same body for a real-time call and a staged request."""
    return json.dumps({"inputs": request.prompt, "parameters": dict(request.parameters)}).encode("utf-8")


def submit_request(
    sagemaker: Any,
    s3: Any,
    settings: Any,
    request: ImageRequest,
    *,
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    rand: Callable[[], float],
) -> StagedRequest:
    """Stage the request and its context, then queue it; `EndpointFailure` when it cannot be queued.

    Transient endpoint errors are retried here (endpoint.py's classification) and raised as a transient
    `EndpointFailure` at the end; a permanent one (no such endpoint, a validation error) is raised as is.
    """
    try:
        staged = staged_request(
            settings.transcript_bucket, settings.async_request_prefix, request.source_key, request.upload_id
        )
    except KeyMappingError as error:
        raise EndpointFailure(
            KEY_TOO_LONG,
            f"the recording's name is too long to queue its request at the endpoint: {error}",
            "upload the recording again under a shorter name",
            0,
        ) from error
    # The context first: whenever SageMaker can read a request, async_result can read its context.
    s3.put_object(Bucket=staged.bucket, Key=staged.context_key, Body=request.to_json(), ContentType="application/json")
    s3.put_object(
        Bucket=staged.bucket,
        Key=staged.request_key,
        Body=request_body(request),
        ContentType="application/json",
        Metadata={"upload-id": request.upload_id},
    )

    def call() -> dict[str, Any]:
        return sagemaker.invoke_endpoint_async(
            EndpointName=settings.endpoint_name,
            InputLocation=staged.input_location,
            ContentType="application/json",
            Accept="application/json",
            InferenceId=staged.inference_id,
            RequestTTLSeconds=settings.request_ttl_seconds,
            InvocationTimeoutSeconds=settings.invocation_timeout_seconds,
        )

    try:
        response, attempts = call_with_retries(
            call, endpoint_name=settings.endpoint_name, policy=policy, sleep=sleep, rand=rand
        )
    except EndpointFailure as failure:
        if not failure.transient:
            # Nothing will read the request: take it back now rather than leave it to the lifecycle rule.
            remove_staged(s3, staged)
        raise
    logger.info(
        "request queued at the endpoint",
        extra={
            "key": request.source_key,
            "inference_id": staged.inference_id,
            "output_location": response.get("OutputLocation"),
            "attempts": attempts,
        },
    )
    return staged
