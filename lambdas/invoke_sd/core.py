"""Turn a Transcribe transcript into an image via the SageMaker endpoint; clients come in as arguments."""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError, IncompleteReadError

from pipeline_common.aws_errors import error_code, error_message, http_status, is_not_found
from pipeline_common.batch import process_each
from pipeline_common.error_records import ResultStore, utc_now
from pipeline_common.events import S3Record
from pipeline_common.keys import image_keys, source_key_from_transcript_key
from pipeline_common.settings import (
    as_float,
    as_int,
    as_job_name_prefix,
    as_json_object,
    optional,
    require,
)
from pipeline_common.uploads import staleness

logger = logging.getLogger(__name__)

FUNCTION = "invoke_sd"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFAULT_MAX_PROMPT_CHARS = 1000
DEFAULT_MIN_TRANSCRIPT_CONFIDENCE = 0.2
# Stable Diffusion 1.x reads prompts through CLIP, whose tokenizer stops at 77 tokens; the endpoint
# only says whether it cut (prompt_truncated), so the notice names the model's limit itself.
MODEL_PROMPT_TOKENS = 77
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
class Settings:
    """What invoke_sd needs from its environment."""

    input_bucket: str
    output_bucket: str
    transcript_prefix: str
    image_prefix: str
    error_prefix: str
    endpoint_name: str
    job_name_prefix: str
    image_parameters: Mapping[str, Any] = field(default_factory=dict)
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    min_transcript_confidence: float = DEFAULT_MIN_TRANSCRIPT_CONFIDENCE

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and check the variables set by infra/pipeline.py; `SettingsError` names any bad one."""
        return cls(
            input_bucket=require(environ, "INPUT_BUCKET"),
            output_bucket=require(environ, "OUTPUT_BUCKET"),
            transcript_prefix=require(environ, "TRANSCRIPT_PREFIX"),
            image_prefix=require(environ, "IMAGE_PREFIX"),
            error_prefix=require(environ, "ERROR_PREFIX"),
            endpoint_name=require(environ, "ENDPOINT_NAME"),
            job_name_prefix=as_job_name_prefix("JOB_NAME_PREFIX", require(environ, "JOB_NAME_PREFIX")),
            image_parameters=as_json_object("IMAGE_PARAMETERS", optional(environ, "IMAGE_PARAMETERS", "{}")),
            max_prompt_chars=as_int(
                "MAX_PROMPT_CHARS", optional(environ, "MAX_PROMPT_CHARS", str(DEFAULT_MAX_PROMPT_CHARS)), minimum=1
            ),
            min_transcript_confidence=as_float(
                "MIN_TRANSCRIPT_CONFIDENCE",
                optional(environ, "MIN_TRANSCRIPT_CONFIDENCE", str(DEFAULT_MIN_TRANSCRIPT_CONFIDENCE)),
                minimum=0.0,
                maximum=1.0,
            ),
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


@dataclass(frozen=True)
class Transcript:
    """The parts of a Transcribe output document the pipeline uses."""

    text: str
    job_name: str | None = None
    language_code: str | None = None
    # Mean over the words (pronunciation items) that carry a confidence; None when none does.
    mean_confidence: float | None = None
    scored_words: int = 0


@dataclass(frozen=True)
class GeneratedImage:
    """A parsed endpoint response."""

    png: bytes
    parameters: Mapping[str, Any]
    nsfw_content_detected: bool
    prompt_truncated: bool
    timings: Mapping[str, Any]
    model: Mapping[str, Any]


@dataclass(frozen=True)
class Result:
    """What happened to one transcript: generated, rejected (error record), duplicate, superseded or gone."""

    source_key: str
    outcome: str
    image_key: str | None = None
    error_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (the handler's return value)."""
        return asdict(self)


class TranscriptError(ValueError):
    """The transcript document cannot be used; `code` is the error record's short code."""

    def __init__(self, code: str, reason: str, job_name: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        # Known when the document got that far: the gone/superseded check needs it even for a bad transcript.
        self.job_name = job_name


class EndpointFailure(RuntimeError):
    """The endpoint call failed for good; carries what the error record needs."""

    def __init__(self, code: str, reason: str, action: str, attempts: int) -> None:
        super().__init__(f"{code}: {reason} (after {attempts} attempt{'s' if attempts != 1 else ''})")
        self.code = code
        self.reason = reason
        self.action = action
        self.attempts = attempts


def parse_transcript(data: bytes) -> Transcript:
    """Parse Transcribe's output JSON; `TranscriptError` when it is malformed or not COMPLETED."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TranscriptError("transcript-unreadable", f"the transcript is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise TranscriptError("transcript-invalid", "the transcript is not a JSON object")
    job = document.get("jobName")
    job = job if isinstance(job, str) and job else None
    status = document.get("status")
    if status is None:
        raise TranscriptError("transcript-invalid", "the transcript has no 'status' field", job)
    if status != "COMPLETED":
        raise TranscriptError(
            "transcription-failed", f"the transcription job status is {status!r}, not 'COMPLETED'", job
        )
    results = document.get("results")
    transcripts = results.get("transcripts") if isinstance(results, dict) else None
    if not isinstance(results, dict) or not isinstance(transcripts, list) or not transcripts:
        raise TranscriptError("transcript-invalid", "the transcript has no results.transcripts list", job)
    texts = [item.get("transcript") if isinstance(item, dict) else None for item in transcripts]
    if not all(isinstance(text, str) for text in texts):
        raise TranscriptError("transcript-invalid", "a results.transcripts entry has no 'transcript' text", job)
    confidences = word_confidences(results.get("items"))
    return Transcript(
        text=" ".join(texts),
        job_name=job,
        language_code=results.get("language_code"),
        mean_confidence=sum(confidences) / len(confidences) if confidences else None,
        scored_words=len(confidences),
    )


def word_confidences(items: Any) -> list[float]:
    """The confidence of each word (pronunciation item) that has a readable one; Transcribe writes them as strings."""
    confidences: list[float] = []
    for item in items if isinstance(items, list) else []:
        # Punctuation items carry a confidence of "0.0": they are not words, so they must not drag the mean down.
        if not isinstance(item, dict) or item.get("type") != "pronunciation":
            continue
        alternatives = item.get("alternatives")
        first = alternatives[0] if isinstance(alternatives, list) and alternatives else None
        value = first.get("confidence") if isinstance(first, dict) else None
        try:
            confidence = float(value) if value is not None else None
        except (TypeError, ValueError):
            confidence = None
        if confidence is not None and 0.0 <= confidence <= 1.0:
            confidences.append(confidence)
    return confidences


def make_prompt(text: str, max_chars: int) -> tuple[str, bool]:
    """The prompt for a transcript: whitespace collapsed, cut at a word boundary; and whether it was cut."""
    prompt = " ".join(text.split())
    if len(prompt) <= max_chars:
        return prompt, False
    head = prompt[: max_chars + 1]
    boundary = head.rfind(" ")
    # Cut between words unless that would throw away more than half (one enormous "word").
    return (head[:boundary] if boundary > max_chars // 2 else prompt[:max_chars]), True


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
        return _innermost_message(str(original))
    return error_message(error)


def _innermost_message(text: str, depth: int = 0) -> str:
    # The DLC's Multi Model Server wraps the model's `{"error": ...}` as a JSON string inside its own
    # `{"code", "type", "message"}` envelope: unwrap until plain text.
    try:
        body = json.loads(text)
    except (TypeError, ValueError):
        return text
    if not isinstance(body, dict) or depth > 3:
        return text
    inner = body.get("error") or body.get("message")
    return _innermost_message(str(inner), depth + 1) if inner else text


def describe_endpoint_failure(error: BaseException, endpoint_name: str, attempts: int) -> EndpointFailure:
    """Turn the last endpoint error into an error code, a reason and what to do about it."""
    message = endpoint_message(error)
    code = error_code(error)
    rerun = (
        "then run `make replay` to send this event (it waits in invoke_sd's dead-letter queue) through again, "
        "or upload the recording again under a new name"
    )
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
            f"the endpoint {endpoint_name} kept failing (overloaded, scaling or starting): check its status and "
            f"CloudWatch logs, {rerun}",
            attempts,
        )
    if code == "ModelError":
        log_stream = getattr(error, "response", {}).get("LogStreamArn")
        return EndpointFailure(
            "endpoint-rejected",
            message,
            f"the model rejected the request: check IMAGE_PARAMETERS (imageParameters in cdk.json) and the "
            f"endpoint's logs{f' ({log_stream})' if log_stream else ''}, {rerun}",
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
    """Call the endpoint, retrying transient errors; returns the response body and the attempts used.

    The botocore client is configured not to retry itself, so this loop is the only one.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            response = sagemaker.invoke_endpoint(
                EndpointName=endpoint_name, ContentType="application/json", Accept="application/json", Body=body
            )
            # Reading the stream can time out too: it belongs to the attempt.
            return response["Body"].read(), attempt
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


def parse_response(payload: bytes, requested: Mapping[str, Any]) -> GeneratedImage:
    """Parse the endpoint's JSON response (docs/CONTRACTS.md); `ValueError` when it does not match."""
    try:
        document = json.loads(payload)
        images = document["images"]
        png = base64.b64decode(images[0], validate=True)
    except (UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError, binascii.Error) as error:
        raise ValueError(f"the endpoint response has no base64 image in 'images': {error!r}") from None
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("the endpoint's first image is not a PNG")
    return GeneratedImage(
        png=png,
        parameters=document.get("parameters") or dict(requested),
        nsfw_content_detected=any(document.get("nsfw_content_detected") or []),
        prompt_truncated=bool(document.get("prompt_truncated", False)),
        timings=document.get("timings") or {},
        model=document.get("model") or {},
    )


def truncation_notices(
    *, transcript_truncated: bool, prompt_truncated: bool, max_prompt_chars: int, prompt: str
) -> list[str]:
    """Plain-language notices for a prompt that was cut, by this function or by the model's tokenizer."""
    notices: list[str] = []
    if transcript_truncated:
        notices.append(
            f"the transcript was longer than {max_prompt_chars} characters (MAX_PROMPT_CHARS): "
            f"only its first {len(prompt)} characters were sent to the model"
        )
    if prompt_truncated:
        notices.append(
            f"the transcript was longer than the model reads ({MODEL_PROMPT_TOKENS} tokens): only the start was used"
        )
    return notices


def render_html(
    *,
    source_key: str,
    transcript: str,
    prompt: str,
    png: bytes,
    parameters: Mapping[str, Any],
    notices: Sequence[str] = (),
) -> str:
    """A self-contained page: the transcript and the image as a data: URI, all text HTML-escaped."""
    title = html.escape(PurePosixPath(source_key).name)
    settings = ", ".join(f"{html.escape(str(k))}={html.escape(str(v))}" for k, v in sorted(parameters.items()))
    image = base64.b64encode(png).decode("ascii")
    notes = "".join(f'<p class="notice" role="note">Note: {html.escape(notice)}</p>\n' for notice in notices)
    return f"""<!doctype html>
<html>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem}}
img{{max-width:100%;height:auto}}.meta{{color:#555;font-size:.9rem}}
.notice{{background:#fff4ce;border-left:4px solid #c19c00;padding:.5rem 1rem}}</style>
</head>
<body>
<h1>{title}</h1>
{notes}<figure>
<img src="data:image/png;base64,{image}" alt="{html.escape(prompt)}">
<figcaption><blockquote>{html.escape(transcript)}</blockquote></figcaption>
</figure>
<p class="meta">Recording: {html.escape(source_key)}<br>Parameters: {settings}</p>
</body>
</html>
"""


def generate_images(
    records: Sequence[S3Record],
    *,
    settings: Settings,
    s3: Any,
    sagemaker: Any,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
) -> list[Result]:
    """Handle every transcript of an event; raise at the end if any failed."""
    return process_each(
        records,
        lambda record: generate_image(
            record, settings=settings, s3=s3, sagemaker=sagemaker, policy=policy, sleep=sleep, rand=rand
        ),
    )


@dataclass
class _Stage:
    """The error-record stage an unexpected failure belongs to: `transcript` until the endpoint is called."""

    name: str = "transcript"


def generate_image(
    record: S3Record,
    *,
    settings: Settings,
    s3: Any,
    sagemaker: Any,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
) -> Result:
    """Read one transcript, call the endpoint and write image, metadata and page (or an error record)."""
    # A key outside the layout names no upload, so there is nothing to record it against: it just raises.
    source_key = source_key_from_transcript_key(settings.transcript_prefix, record.key)
    stage = _Stage()
    try:
        return _generate(
            record,
            source_key,
            stage,
            settings=settings,
            s3=s3,
            sagemaker=sagemaker,
            policy=policy or RetryPolicy(),
            sleep=sleep,
            rand=rand,
        )
    except EndpointFailure:
        # Its own error record (endpoint-*) is written; re-raised so Lambda retries and the DLQ sees it.
        raise
    except Exception as error:
        ResultStore.of(s3, settings).record_internal_error(
            source_key,
            stage=stage.name,
            failure=error,
            function=FUNCTION,
            details={"transcript": _transcript_location(record)},
        )
        raise


def _transcript_location(record: S3Record) -> dict[str, Any]:
    location: dict[str, Any] = {"bucket": record.bucket, "key": record.key}
    if record.version_id:
        location["version_id"] = record.version_id
    return location


def _generate(
    record: S3Record,
    source_key: str,
    stage: _Stage,
    *,
    settings: Settings,
    s3: Any,
    sagemaker: Any,
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    rand: Callable[[], float],
) -> Result:
    context = {**record.log_context(), "source_key": source_key, "endpoint_name": settings.endpoint_name}
    keys = image_keys(settings.image_prefix, source_key)

    store = ResultStore.of(s3, settings)

    def record_error(stage_name: str, code: str, reason: str, action: str, **details: Any) -> str:
        return store.write_error(
            source_key,
            stage=stage_name,
            error=code,
            reason=reason,
            action=action,
            details={"transcript": _transcript_location(record), **details},
        )

    started = time.perf_counter()
    # The transcripts bucket is versioned: a quick re-upload's job may already have replaced the latest
    # version, so read exactly the one this event is about.
    version = {"VersionId": record.version_id} if record.version_id else {}
    try:
        data = s3.get_object(Bucket=record.bucket, Key=record.key, **version)["Body"].read()
    except Exception as error:
        if not (is_not_found(error) or error_code(error) == "NoSuchVersion"):
            raise
        # Old versions expire a day after a newer job replaced them (and a deleted transcript is gone):
        # an event that late, e.g. a replay, is about an upload that has been superseded.
        logger.info("transcript version no longer exists; skipped", extra={**context, "outcome": "superseded"})
        return Result(source_key, "superseded")
    transcript_read_s = time.perf_counter() - started
    problem: TranscriptError | None = None
    try:
        transcript = parse_transcript(data)
    except TranscriptError as error:
        problem = error
    job = problem.job_name if problem is not None else transcript.job_name

    skipped = staleness(s3, bucket=settings.input_bucket, key=source_key, job=job, prefix=settings.job_name_prefix)
    if skipped is not None:
        # The upload was deleted, or replaced by one whose own transcript event produces its result.
        logger.info(
            "transcript is not about the current upload; skipped",
            extra={**context, "outcome": skipped, "job_name": job},
        )
        return Result(source_key, skipped)

    if problem is not None:
        key = record_error(
            "transcript",
            problem.code,
            str(problem),
            # The same file again would reuse its finished Transcribe job (same key and ETag), hence a new name.
            "upload the recording again under a new name; if this repeats, check the Transcribe job in the AWS console",
        )
        return Result(source_key, "rejected", error_key=key)

    if (
        transcript.job_name is not None
        and _finished_job(s3, settings.output_bucket, keys.metadata) == transcript.job_name
    ):
        # S3 delivered this transcript's event again: its image set is already there, so no second endpoint call.
        # An error record next to it can only be left from a failed attempt of the same job.
        store.remove_error_record(source_key)
        logger.info("image set for this job already exists; repeated event skipped", extra={**context, "job_name": job})
        return Result(source_key, "duplicate", image_key=keys.png)

    prompt, transcript_truncated = make_prompt(transcript.text, settings.max_prompt_chars)
    retry_speech = "record again: speak clearly, close to the microphone, and check that the recording has sound"
    if not prompt:
        key = record_error("transcript", "no-speech", "no speech detected: the transcript is empty", retry_speech)
        return Result(source_key, "rejected", error_key=key)
    mean = transcript.mean_confidence
    if mean is not None and mean < settings.min_transcript_confidence:
        key = record_error(
            "transcript",
            "no-speech",
            f"no speech detected: the words heard have a mean confidence of {mean:.2f}, below "
            f"{settings.min_transcript_confidence} (MIN_TRANSCRIPT_CONFIDENCE); heard {_clip(transcript.text)!r}",
            f"{retry_speech}; noise or music alone often transcribes as a few unlikely words",
            mean_confidence=round(mean, 4),
            min_transcript_confidence=settings.min_transcript_confidence,
            words=transcript.scored_words,
            heard=transcript.text,
        )
        return Result(source_key, "rejected", error_key=key)

    stage.name = "generate"
    parameters = request_parameters(settings.image_parameters, source_key)
    body = json.dumps({"inputs": prompt, "parameters": parameters}).encode("utf-8")
    started = time.perf_counter()
    try:
        payload, attempts = invoke_endpoint(
            sagemaker,
            endpoint_name=settings.endpoint_name,
            body=body,
            policy=policy,
            sleep=sleep,
            rand=rand,
        )
        endpoint_call_s = time.perf_counter() - started
        try:
            image = parse_response(payload, parameters)
        except ValueError as error:
            raise EndpointFailure(
                "bad-endpoint-response",
                str(error),
                f"check that {settings.endpoint_name} serves this project's code/inference.py",
                attempts,
            ) from error
    except EndpointFailure as failure:
        logger.error("image generation failed", extra={**context, "error_code": failure.code})
        record_error("generate", failure.code, failure.reason, failure.action, attempts=failure.attempts)
        raise

    notices = truncation_notices(
        transcript_truncated=transcript_truncated,
        prompt_truncated=image.prompt_truncated,
        max_prompt_chars=settings.max_prompt_chars,
        prompt=prompt,
    )
    started = time.perf_counter()
    s3.put_object(Bucket=settings.output_bucket, Key=keys.png, Body=image.png, ContentType="image/png")
    page = render_html(
        source_key=source_key,
        transcript=transcript.text,
        prompt=prompt,
        png=image.png,
        parameters=image.parameters,
        notices=notices,
    )
    s3.put_object(
        Bucket=settings.output_bucket, Key=keys.html, Body=page.encode("utf-8"), ContentType="text/html; charset=utf-8"
    )
    writes_s = time.perf_counter() - started
    metadata = {
        "status": "ok",
        "source": {"bucket": settings.input_bucket, "key": source_key},
        "transcript": transcript.text,
        "transcript_source": {
            **_transcript_location(record),
            "job_name": transcript.job_name,
            "language_code": transcript.language_code,
            "mean_confidence": round(mean, 4) if mean is not None else None,
        },
        "prompt": prompt,
        # Cut by this function (MAX_PROMPT_CHARS) vs. cut by the model's tokenizer (reported by the endpoint).
        "transcript_truncated": transcript_truncated,
        "prompt_truncated": image.prompt_truncated,
        "notices": notices,
        "parameters": dict(image.parameters),
        "nsfw_content_detected": image.nsfw_content_detected,
        "model": {**image.model, "endpoint_name": settings.endpoint_name},
        "outputs": {"bucket": settings.output_bucket, "image": keys.png, "metadata": keys.metadata, "html": keys.html},
        "timings": {
            "transcript_read_s": round(transcript_read_s, 4),
            "endpoint_call_s": round(endpoint_call_s, 4),
            "endpoint_attempts": attempts,
            # PNG and HTML; the metadata document cannot time its own write.
            "writes_s": round(writes_s, 4),
            "endpoint": dict(image.timings),
        },
        "created": utc_now(),
    }
    # Written last: its presence (with this job name) is what marks the image set complete for `duplicate`.
    s3.put_object(
        Bucket=settings.output_bucket,
        Key=keys.metadata,
        Body=json.dumps(metadata, ensure_ascii=False, indent=2).encode("utf-8"),
        ContentType="application/json",
    )
    # One upload, one final result: an earlier failed attempt may have left an error record.
    store.remove_error_record(source_key)
    logger.info("image written", extra={**context, "image_key": keys.png})
    return Result(source_key, "generated", image_key=keys.png)


def _finished_job(s3: Any, bucket: str, metadata_key: str) -> str | None:
    """The job name recorded in an existing metadata document, or None when there is none (or it is unreadable)."""
    try:
        data = s3.get_object(Bucket=bucket, Key=metadata_key)["Body"].read()
    except Exception as error:
        if is_not_found(error):
            return None
        raise
    try:
        job = json.loads(data)["transcript_source"]["job_name"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        # A damaged document is no proof of a finished image: generate again and overwrite it.
        return None
    return job if isinstance(job, str) else None


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
