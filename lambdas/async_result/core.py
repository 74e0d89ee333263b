"""async_result, top to bottom: notification -> its upload -> the output (or failure) -> the upload's one result.

SageMaker publishes one notification per asynchronous request (SNS, raw delivery into this stage's queue). Its
inputLocation is the request invoke_sd staged, whose key names the source key and the upload (docs/CONTRACTS.md):
a notification for an upload that is no longer current writes nothing, and a repeated one finds the result made.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from async_result.failures import describe_failure
from async_result.settings import Settings
from pipeline_common.async_requests import StagedRequest, parse_input_location, remove_staged, split_s3_uri
from pipeline_common.aws_errors import is_not_found
from pipeline_common.generation import (
    BAD_ENDPOINT_RESPONSE,
    GENERATED,
    Outcome,
    bad_response_action,
    commit_rejection,
    commit_response,
)
from pipeline_common.keys import KeyMappingError
from pipeline_common.ledger import Entry
from pipeline_common.render import ImageRequest
from pipeline_common.results import DUPLICATE, SUPERSEDED, Results

logger = logging.getLogger(__name__)

FUNCTION = "async_result"
TEST_NOTIFICATION = "test-notification"
FOREIGN = "foreign"
COMPLETED = "Completed"
FAILED = "Failed"
# A failure object is the model's error body: a few kilobytes at most; more is not read.
MAX_FAILURE_BYTES = 64 * 1024


class NotificationError(ValueError):
    """The message is not an asynchronous inference notification this pipeline can map to an upload."""


@dataclass(frozen=True)
class Result:
    """What one notification did: generated, rejected (error record), superseded, duplicate, or ignored."""

    outcome: str
    source_key: str | None = None
    inference_id: str | None = None
    image_key: str | None = None
    error_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (the handler's return value)."""
        return asdict(self)


@dataclass(frozen=True)
class Dependencies:
    """What one invocation works with: settings, the S3 client and the results committer."""

    settings: Settings
    s3: Any
    results: Results


def parse_notification(body: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """The SageMaker notification in a queue message: raw delivery, or defensively inside an SNS envelope."""
    try:
        document = json.loads(body) if isinstance(body, str | bytes) else dict(body)
        if isinstance(document, dict) and document.get("Type") == "Notification":
            document = json.loads(document.get("Message"))
    except (TypeError, ValueError) as error:
        raise NotificationError(f"the message is not a JSON notification: {error}") from None
    if not isinstance(document, dict):
        raise NotificationError(f"the notification is a JSON {type(document).__name__}, not an object")
    return document


def handle_notification(body: str | bytes | Mapping[str, Any], deps: Dependencies) -> Result:
    """Give the notification's upload its result; the staged objects are removed once nothing needs them."""
    notification = parse_notification(body)
    if notification.get("eventName") == "TestNotification":
        # CreateEndpoint checks that it may publish with a test message: nothing to do.
        logger.info("test notification ignored")
        return _done(deps, Result(TEST_NOTIFICATION))
    staged = _staged_request(notification, deps.settings)
    if staged is None:
        return _done(deps, Result(FOREIGN))
    log = {
        "key": staged.source_key,
        "inference_id": staged.inference_id,
        "status": notification.get("invocationStatus"),
    }
    results = deps.results
    entry = results.ledger.get(staged.source_key)
    skip = SUPERSEDED if entry is None or not staged.is_for(entry.upload_id) else DUPLICATE if entry.final else None
    if skip is not None or entry is None:
        logger.info("notification is not for an unfinished current upload; skipped", extra={**log, "outcome": skip})
        _clean_up(deps, staged, notification)
        return _done(deps, Result(skip or SUPERSEDED, staged.source_key, staged.inference_id))
    try:
        outcome = _commit(deps, entry, staged, notification)
    except Exception as error:
        results.record_retry(entry, stage="generate", failure=error)
        # Re-raised: the message goes back to the queue, and after the last receive to the dead-letter queue.
        raise
    if outcome.outcome == GENERATED:
        results.metrics.stage_seconds("generate", _seconds_since(entry.updated_at))
        results.metrics.stage_seconds("total", _seconds_since(entry.received_at))
    _clean_up(deps, staged, notification)
    logger.info("notification handled", extra={**log, "outcome": outcome.outcome})
    return _done(
        deps,
        Result(outcome.outcome, staged.source_key, staged.inference_id, outcome.image_key, outcome.error_key),
    )


def _staged_request(notification: Mapping[str, Any], settings: Settings) -> StagedRequest | None:
    """The request the notification answers; None for another application's request on the same topic."""
    location = _field(notification, "requestParameters", "inputLocation")
    if not isinstance(location, str) or split_s3_uri(location) is None:
        raise NotificationError(
            f"the notification has no requestParameters.inputLocation (keys: {sorted(notification)})"
        )
    try:
        return parse_input_location(location, bucket=settings.transcript_bucket, prefix=settings.async_request_prefix)
    except KeyMappingError:
        logger.warning("notification for a request this pipeline did not stage; ignored", extra={"location": location})
        return None


def _commit(deps: Dependencies, entry: Entry, staged: StagedRequest, notification: Mapping[str, Any]) -> Outcome:
    """The upload's result from a Completed notification's output, or a Failed one's reason."""
    settings, results = deps.settings, deps.results
    details = {"inference_id": staged.inference_id}
    status = notification.get("invocationStatus")
    if status == FAILED:
        reason = notification.get("failureReason")
        failure = describe_failure(
            reason if isinstance(reason, str) else "", _failure_body(deps, notification), settings.endpoint_name
        )
        logger.error(
            "asynchronous request failed",
            extra={"key": entry.key, "error_code": failure.code, "failure_reason": reason},
        )
        return commit_rejection(
            results,
            entry,
            stage="generate",
            code=failure.code,
            reason=failure.reason,
            action=failure.action,
            details=details,
        )
    if status != COMPLETED:
        return _bad_response(deps, entry, f"the notification's invocationStatus is {status!r}", details)
    request = ImageRequest.from_json(_read(deps, staged.bucket, staged.context_key))
    output = _location(notification, "outputLocation", settings.transcript_bucket, settings.async_output_prefix)
    if output is None:
        return _bad_response(
            deps, entry, "the notification names no output object where the endpoint writes (outputLocation)", details
        )
    try:
        payload = _read(deps, *output)
    except Exception as error:
        if not is_not_found(error):
            raise
        # SageMaker writes the output before it notifies and S3 reads are strongly consistent: an object that
        # is not there now never will be (removed by hand, or expired), so waiting for it would not help.
        return _bad_response(deps, entry, "the endpoint's output object does not exist", details)
    waited = _seconds_since(entry.updated_at)
    return commit_response(
        results,
        entry,
        request,
        payload,
        settings=settings,
        timings={"endpoint_wait_s": round(waited, 4)},
        details=details,
    )


def _bad_response(deps: Dependencies, entry: Entry, reason: str, details: Mapping[str, Any]) -> Outcome:
    return commit_rejection(
        deps.results,
        entry,
        stage="generate",
        code=BAD_ENDPOINT_RESPONSE,
        reason=reason,
        action=bad_response_action(deps.settings.endpoint_name),
        details=details,
    )


def _failure_body(deps: Dependencies, notification: Mapping[str, Any]) -> str | None:
    """The failure object's text (the model's error body), when the notification names one that can be read."""
    settings = deps.settings
    location = _location(notification, "failureLocation", settings.transcript_bucket, settings.async_failure_prefix)
    if location is None:
        return None
    try:
        response = deps.s3.get_object(Bucket=location[0], Key=location[1], Range=f"bytes=0-{MAX_FAILURE_BYTES - 1}")
        return response["Body"].read().decode("utf-8", errors="replace")
    except Exception:
        # The failureReason still says what happened: the object only adds the model's own words.
        logger.warning("failure object not read", exc_info=True, extra={"failure_location": location[1]})
        return None


def _read(deps: Dependencies, bucket: str, key: str) -> bytes:
    return deps.s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def _clean_up(deps: Dependencies, staged: StagedRequest, notification: Mapping[str, Any]) -> None:
    settings = deps.settings
    locations = [
        _location(notification, "outputLocation", settings.transcript_bucket, settings.async_output_prefix),
        _location(notification, "failureLocation", settings.transcript_bucket, settings.async_failure_prefix),
    ]
    remove_staged(deps.s3, staged, *[f"s3://{bucket}/{key}" for bucket, key in filter(None, locations)])


def _location(notification: Mapping[str, Any], name: str, bucket: str, prefix: str) -> tuple[str, str] | None:
    """`responseParameters[name]` as (bucket, key) when it lies where the endpoint writes, else None.

    A notification is trusted to name only the endpoint's own objects: anything else is neither read nor deleted.
    """
    location = split_s3_uri(_field(notification, "responseParameters", name))
    if location is not None and (location[0] != bucket or not location[1].startswith(prefix)):
        logger.warning("notification names an object outside the endpoint's prefix; ignored", extra={"field": name})
        return None
    return location


def _field(document: Mapping[str, Any], section: str, name: str) -> Any:
    """`document[section][name]`, or None when either is missing or not an object (parsed defensively)."""
    part = document.get(section)
    return part.get(name) if isinstance(part, Mapping) else None


def _done(deps: Dependencies, result: Result) -> Result:
    deps.results.metrics.outcome(result.outcome)
    return result


def _seconds_since(iso: str) -> float:
    try:
        return max(0.0, time.time() - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0.0
