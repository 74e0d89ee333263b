"""An endpoint's answer becomes the upload's one result: its image set, or the record saying why there is none.

One home for both ways of generating: invoke_sd (a real-time call) and async_result (an asynchronous request's
output object) hand the response body here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline_common.endpoint_output import parse_response
from pipeline_common.error_records import utc_now
from pipeline_common.ledger import Entry
from pipeline_common.render import ImageRequest, build_image_set
from pipeline_common.results import COMMITTED, Results

logger = logging.getLogger(__name__)

GENERATED = "generated"
REJECTED = "rejected"
BAD_ENDPOINT_RESPONSE = "bad-endpoint-response"
NSFW_FILTERED = "nsfw-filtered"


@dataclass(frozen=True)
class Outcome:
    """What became of the upload: `generated`, `rejected` (error record), or `superseded`/`duplicate` (nothing)."""

    outcome: str
    image_key: str | None = None
    error_key: str | None = None


def bad_response_action(endpoint_name: str) -> str:
    """What to do about an endpoint answer this pipeline cannot read."""
    return f"check that {endpoint_name} serves this project's code/inference.py"


def commit_rejection(
    results: Results,
    entry: Entry,
    *,
    stage: str,
    code: str,
    reason: str,
    action: str,
    details: Mapping[str, Any] | None = None,
) -> Outcome:
    """Commit an error record as the upload's result."""
    committed = results.commit_error(entry, stage=stage, code=code, reason=reason, action=action, details=details)
    if committed.outcome != COMMITTED:
        return Outcome(committed.outcome)
    return Outcome(REJECTED, error_key=committed.key)


def commit_response(
    results: Results,
    entry: Entry,
    request: ImageRequest,
    payload: bytes,
    *,
    settings: Any,
    timings: Mapping[str, Any],
    details: Mapping[str, Any] | None = None,
) -> Outcome:
    """Read the endpoint's response body and commit what it means: the image set, or why there is none.

    `settings` names the buckets and the endpoint; `details` go into an error record (e.g. the attempts).
    """
    context = {"transcript": dict(request.transcript_location)}
    try:
        image = parse_response(payload, request.parameters)
    except ValueError as error:
        return commit_rejection(
            results,
            entry,
            stage="generate",
            code=BAD_ENDPOINT_RESPONSE,
            reason=str(error),
            action=bad_response_action(settings.endpoint_name),
            details={**context, **(details or {})},
        )
    if image.nsfw_content_detected:
        return commit_rejection(
            results,
            entry,
            stage="generate",
            code=NSFW_FILTERED,
            reason="the safety checker flagged the generated image as not safe for work, so it was not kept",
            action="rephrase the prompt (say it differently) and record again",
            details={**context, "prompt": request.prompt},
        )
    keys = results.store.image_keys(entry.key)
    images = build_image_set(request, image, settings=settings, keys=keys, timings=timings, created=utc_now())
    committed = results.commit_images(entry, images)
    if committed.outcome != COMMITTED:
        return Outcome(committed.outcome)
    logger.info("image written", extra={"key": entry.key, "image_key": keys.png})
    return Outcome(GENERATED, image_key=keys.png)
