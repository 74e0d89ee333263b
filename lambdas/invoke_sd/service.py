"""invoke_sd, top to bottom: transcript -> checks -> endpoint -> the upload's one result.

A real-time endpoint answers at once and the image is committed here; an asynchronous endpoint gets a queued
request (`async_request`) and the async_result stage commits the result when SageMaker's notification arrives.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from invoke_sd.async_request import SUBMITTED, request_body, submit_request, wait_seconds
from invoke_sd.endpoint import EndpointFailure, RetryPolicy, invoke_endpoint, request_parameters
from invoke_sd.settings import Settings
from invoke_sd.transcript import Transcript, TranscriptError, make_prompt, parse_transcript
from pipeline_common.aws_errors import error_code, is_not_found
from pipeline_common.batch import process_each
from pipeline_common.error_records import utc_now
from pipeline_common.events import S3Record
from pipeline_common.generation import GENERATED, commit_rejection, commit_response
from pipeline_common.keys import source_key_from_transcript_key
from pipeline_common.ledger import GENERATING, WAITING, Entry, LedgerError
from pipeline_common.render import ImageRequest
from pipeline_common.results import DUPLICATE, SUPERSEDED, Results
from pipeline_common.settings import ASYNC

logger = logging.getLogger(__name__)

FUNCTION = "invoke_sd"
RETRY_SPEECH = "record again: speak clearly, close to the microphone, and check that the recording has sound"
RETRY_UPLOAD = "upload the recording again; if this repeats, check the Transcribe job in the AWS console"


@dataclass(frozen=True)
class Result:
    """What happened to one transcript: generated, rejected (error record), duplicate or superseded."""

    source_key: str
    outcome: str
    image_key: str | None = None
    error_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (the handler's return value)."""
        return asdict(self)


@dataclass(frozen=True)
class Dependencies:
    """What one invocation works with: clients, the results committer and the endpoint's retry pacing."""

    settings: Settings
    s3: Any
    sagemaker: Any
    results: Results
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    rand: Callable[[], float] = random.random


def generate_image(record: S3Record, deps: Dependencies) -> Result:
    """Read one transcript and give its upload a result: the image set or an error record."""
    settings, results = deps.settings, deps.results
    # A key outside the layout names no upload, so there is nothing to record it against: it just raises.
    source_key = source_key_from_transcript_key(settings.transcript_prefix, record.key)
    location = _transcript_location(record)
    context = {**record.log_context(), "source_key": source_key}
    started = time.perf_counter()
    # The transcripts bucket is versioned: read exactly the version this event is about.
    version = {"VersionId": record.version_id} if record.version_id else {}
    try:
        response = deps.s3.get_object(Bucket=record.bucket, Key=record.key, **version)
        data, written_at = response["Body"].read(), response.get("LastModified")
    except Exception as error:
        if not (is_not_found(error) or error_code(error) == "NoSuchVersion"):
            raise
        # Old versions expire a day after a newer job replaced them: an event that late is about an old upload.
        logger.info("transcript version no longer exists; skipped", extra={**context, "outcome": SUPERSEDED})
        return _done(deps, Result(source_key, SUPERSEDED))
    read_s = time.perf_counter() - started
    problem: TranscriptError | None = None
    transcript: Transcript | None = None
    try:
        transcript = parse_transcript(data)
    except TranscriptError as error:
        problem = error
    job = problem.job_name if problem is not None else transcript.job_name if transcript else None

    entry, skip = results.current_for_job(source_key, job, settings.job_name_prefix, written_at=written_at)
    if skip is not None or entry is None:
        logger.info("transcript is not for an unfinished current upload; skipped", extra={**context, "outcome": skip})
        return _done(deps, Result(source_key, skip or SUPERSEDED))
    results.metrics.stage_seconds("transcribe", _seconds_since(entry.received_at))
    reject = _rejecter(results, entry, location)
    try:
        checked = _check_transcript(settings, transcript, problem, reject)
    except Exception as error:
        results.record_retry(entry, stage="transcript", failure=error)
        # Re-raised: the message goes back to the queue, and after the last receive to the dead-letter queue.
        raise
    if isinstance(checked, Result):
        return _done(deps, checked)
    assert transcript is not None
    prompt, transcript_truncated = checked
    request = ImageRequest(
        source_key=source_key,
        upload_id=entry.upload_id,
        transcript=transcript,
        transcript_location=location,
        prompt=prompt,
        transcript_truncated=transcript_truncated,
        max_prompt_chars=settings.max_prompt_chars,
        parameters=request_parameters(settings.image_parameters, source_key),
        timings={"transcript_read_s": round(read_s, 4)},
    )
    try:
        return _done(deps, _generate(deps, entry, request, reject))
    except EndpointFailure as failure:
        # Transient (overloaded, scaling): the record says so in the endpoint's words; the queue retries.
        results.record_retry(entry, stage="generate", code=failure.code, reason=failure.reason, action=failure.action)
        raise
    except Exception as error:
        results.record_retry(entry, stage="generate", failure=error)
        raise


def _rejecter(results: Results, entry: Entry, location: dict[str, Any]) -> Callable[..., Result]:
    """Commit an error record as the upload's result; the Result says what happened."""

    def reject(stage: str, code: str, reason: str, action: str, **details: Any) -> Result:
        outcome = commit_rejection(
            results,
            entry,
            stage=stage,
            code=code,
            reason=reason,
            action=action,
            details={"transcript": location, **details},
        )
        return Result(entry.key, outcome.outcome, error_key=outcome.error_key)

    return reject


def _check_transcript(
    settings: Settings,
    transcript: Transcript | None,
    problem: TranscriptError | None,
    reject: Callable[..., Result],
) -> Result | tuple[str, bool]:
    """The prompt and whether it was cut, or the upload's error record when the transcript cannot be one."""
    if problem is not None or transcript is None:
        assert problem is not None
        return reject("transcript", problem.code, str(problem), RETRY_UPLOAD)
    prompt, transcript_truncated = make_prompt(transcript.text, settings.max_prompt_chars)
    if not prompt:
        return reject("transcript", "no-speech", "no speech detected: the transcript is empty", RETRY_SPEECH)
    mean = transcript.mean_confidence
    if mean is not None and mean < settings.min_transcript_confidence:
        return reject(
            "transcript",
            "no-speech",
            f"no speech detected: the words heard have a mean confidence of {mean:.2f}, below "
            f"{settings.min_transcript_confidence} (MIN_TRANSCRIPT_CONFIDENCE); heard {_clip(transcript.text)!r}",
            f"{RETRY_SPEECH}; noise or music alone often transcribes as a few unlikely words",
            mean_confidence=round(mean, 4),
            min_transcript_confidence=settings.min_transcript_confidence,
            words=transcript.scored_words,
            heard=transcript.text,
        )
    return prompt, transcript_truncated


def _generate(deps: Dependencies, entry: Entry, request: ImageRequest, reject: Callable[..., Result]) -> Result:
    """Take the upload's generation lease, then generate (real-time) or submit (async); given back on any failure."""
    settings, results = deps.settings, deps.results
    key = entry.key
    asynchronous = settings.endpoint_mode == ASYNC
    # The generation lease: one GPU request per upload, however often the transcript's event is delivered. An
    # asynchronous request keeps it (stage `waiting`) until its notification, or until it can no longer come.
    stage, until = (
        (WAITING, time.time() + wait_seconds(settings)) if asynchronous else (GENERATING, results.lease_until())
    )
    token = uuid.uuid4().hex
    try:
        results.ledger.begin_generation(
            key, entry.upload_id, token=token, until=until, now=utc_now(), clock=time.time(), stage=stage
        )
    except LedgerError as refused:
        current = refused.entry
        outcome = SUPERSEDED if current is None or not current.is_upload(entry.upload_id) else DUPLICATE
        logger.info("another attempt holds this upload's generation; skipped", extra={"key": key, "outcome": outcome})
        return Result(key, outcome)

    try:
        if asynchronous:
            return _submit_with_lease(deps, request, reject)
        return _generate_with_lease(deps, entry, request, reject)
    except BaseException:
        # Transient or unexpected: give the lease back so the queue's retry need not wait for it to run out.
        try:
            results.ledger.end_generation(key, entry.upload_id, token=token)
        except Exception:
            logger.exception("generation lease not given back; it runs out on its own", extra={"key": key})
        raise


def _submit_with_lease(deps: Dependencies, request: ImageRequest, reject: Callable[..., Result]) -> Result:
    """Queue the request at the asynchronous endpoint; a permanent failure is the upload's error record."""
    try:
        submit_request(
            deps.sagemaker, deps.s3, deps.settings, request, policy=deps.policy, sleep=deps.sleep, rand=deps.rand
        )
    except EndpointFailure as failure:
        if failure.transient:
            raise
        return _reject_failure(reject, request.source_key, failure)
    return Result(request.source_key, SUBMITTED)


def _generate_with_lease(
    deps: Dependencies, entry: Entry, request: ImageRequest, reject: Callable[..., Result]
) -> Result:
    """Call the endpoint and commit the image (or the permanent failure) while holding the generation lease."""
    settings, results = deps.settings, deps.results
    started = time.perf_counter()
    try:
        payload, attempts = invoke_endpoint(
            deps.sagemaker,
            endpoint_name=settings.endpoint_name,
            body=request_body(request),
            policy=deps.policy,
            sleep=deps.sleep,
            rand=deps.rand,
        )
    except EndpointFailure as failure:
        if failure.transient:
            raise
        return _reject_failure(reject, entry.key, failure)
    call_s = time.perf_counter() - started
    outcome = commit_response(
        results,
        entry,
        request,
        payload,
        settings=settings,
        timings={"endpoint_call_s": round(call_s, 4), "endpoint_attempts": attempts},
        details={"attempts": attempts},
    )
    if outcome.outcome == GENERATED:
        results.metrics.stage_seconds("generate", call_s)
        results.metrics.stage_seconds("total", _seconds_since(entry.received_at))
    return Result(entry.key, outcome.outcome, image_key=outcome.image_key, error_key=outcome.error_key)


def _reject_failure(reject: Callable[..., Result], key: str, failure: EndpointFailure) -> Result:
    """A permanent endpoint failure as the upload's error record."""
    # The endpoint's own words (they may name a role or account) go to the log; the record is redacted.
    logger.error(
        "image generation failed for good",
        extra={"key": key, "error_code": failure.code, "reason": failure.reason},
        exc_info=failure.__cause__,
    )
    return reject("generate", failure.code, failure.reason, failure.action, attempts=failure.attempts)


def generate_images(records: Sequence[S3Record], deps: Dependencies) -> list[Result]:
    """Handle every transcript of a direct (not queued) event; raise at the end if any failed."""
    return process_each(records, lambda record: generate_image(record, deps))


def _done(deps: Dependencies, result: Result) -> Result:
    deps.results.metrics.outcome(result.outcome)
    return result


def _transcript_location(record: S3Record) -> dict[str, Any]:
    location: dict[str, Any] = {"bucket": record.bucket, "key": record.key}
    if record.version_id:
        location["version_id"] = record.version_id
    return location


def _seconds_since(iso: str) -> float:
    try:
        return max(0.0, time.time() - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0.0


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
