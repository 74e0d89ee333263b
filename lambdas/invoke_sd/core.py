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

from pipeline_common.aws_errors import error_code, error_message, http_status
from pipeline_common.batch import process_each
from pipeline_common.error_records import utc_now, write_error_record
from pipeline_common.events import S3Record
from pipeline_common.keys import error_key, image_keys, source_key_from_transcript_key
from pipeline_common.settings import as_int, as_json_object, optional, require

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFAULT_MAX_PROMPT_CHARS = 1000
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
    image_parameters: Mapping[str, Any] = field(default_factory=dict)
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS

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
            image_parameters=as_json_object("IMAGE_PARAMETERS", optional(environ, "IMAGE_PARAMETERS", "{}")),
            max_prompt_chars=as_int(
                "MAX_PROMPT_CHARS", optional(environ, "MAX_PROMPT_CHARS", str(DEFAULT_MAX_PROMPT_CHARS)), minimum=1
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
    """What happened to one transcript: generated, or rejected with an error record."""

    source_key: str
    outcome: str
    image_key: str | None = None
    error_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (the handler's return value)."""
        return asdict(self)


class TranscriptError(ValueError):
    """The transcript document cannot be used; `code` is the error record's short code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


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
    status = document.get("status")
    if status is None:
        raise TranscriptError("transcript-invalid", "the transcript has no 'status' field")
    if status != "COMPLETED":
        raise TranscriptError("transcription-failed", f"the transcription job status is {status!r}, not 'COMPLETED'")
    results = document.get("results")
    transcripts = results.get("transcripts") if isinstance(results, dict) else None
    if not isinstance(transcripts, list) or not transcripts:
        raise TranscriptError("transcript-invalid", "the transcript has no results.transcripts list")
    texts = [item.get("transcript") if isinstance(item, dict) else None for item in transcripts]
    if not all(isinstance(text, str) for text in texts):
        raise TranscriptError("transcript-invalid", "a results.transcripts entry has no 'transcript' text")
    return Transcript(
        text=" ".join(texts),
        job_name=document.get("jobName"),
        language_code=results.get("language_code"),
    )


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


def is_transient(error: BaseException) -> bool:
    """True for endpoint errors worth retrying: throttling, 5xx, model loading, network trouble."""
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
    rerun = "then upload the recording again under a new name (the event also waits in invoke_sd's dead-letter queue)"
    if code == "ValidationError" and re.search(r"not found|could not find|does not exist", message, re.IGNORECASE):
        return EndpointFailure(
            "endpoint-not-found",
            message,
            f"the endpoint {endpoint_name} does not exist: deploy HuggingFaceModelEndpoint "
            f"(make deploy-endpoint), {rerun}",
            attempts,
        )
    if is_transient(error):
        return EndpointFailure(
            "endpoint-unavailable",
            f"{type(error).__name__}: {message}",
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


def render_html(*, source_key: str, transcript: str, prompt: str, png: bytes, parameters: Mapping[str, Any]) -> str:
    """A self-contained page: the transcript and the image as a data: URI, all text HTML-escaped."""
    title = html.escape(PurePosixPath(source_key).name)
    settings = ", ".join(f"{html.escape(str(k))}={html.escape(str(v))}" for k, v in sorted(parameters.items()))
    image = base64.b64encode(png).decode("ascii")
    return f"""<!doctype html>
<html>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem}}
img{{max-width:100%;height:auto}}.meta{{color:#555;font-size:.9rem}}</style>
</head>
<body>
<h1>{title}</h1>
<figure>
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
    source_key = source_key_from_transcript_key(settings.transcript_prefix, record.key)
    context = {**record.log_context(), "source_key": source_key, "endpoint_name": settings.endpoint_name}

    def record_error(stage: str, code: str, reason: str, action: str, **details: Any) -> str:
        return write_error_record(
            s3,
            bucket=settings.output_bucket,
            prefix=settings.error_prefix,
            source_bucket=settings.input_bucket,
            source_key=source_key,
            stage=stage,
            error=code,
            reason=reason,
            action=action,
            details={"transcript": {"bucket": record.bucket, "key": record.key}, **details},
        )

    started = time.perf_counter()
    data = s3.get_object(Bucket=record.bucket, Key=record.key)["Body"].read()
    transcript_read_s = time.perf_counter() - started
    try:
        transcript = parse_transcript(data)
    except TranscriptError as error:
        key = record_error(
            "transcript",
            error.code,
            str(error),
            # The same file again would reuse its finished Transcribe job (same key and ETag), hence a new name.
            "upload the recording again under a new name; if this repeats, check the Transcribe job in the AWS console",
        )
        return Result(source_key, "rejected", error_key=key)

    prompt, transcript_truncated = make_prompt(transcript.text, settings.max_prompt_chars)
    if not prompt:
        key = record_error(
            "transcript",
            "no-speech",
            "no speech detected: the transcript is empty",
            "record again: speak clearly, close to the microphone, and check that the recording has sound",
        )
        return Result(source_key, "rejected", error_key=key)

    parameters = request_parameters(settings.image_parameters, source_key)
    body = json.dumps({"inputs": prompt, "parameters": parameters}).encode("utf-8")
    started = time.perf_counter()
    try:
        payload, attempts = invoke_endpoint(
            sagemaker,
            endpoint_name=settings.endpoint_name,
            body=body,
            policy=policy or RetryPolicy(),
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
        # Re-raised so Lambda's retries and the dead-letter queue see the event.
        raise

    keys = image_keys(settings.image_prefix, source_key)
    started = time.perf_counter()
    s3.put_object(Bucket=settings.output_bucket, Key=keys.png, Body=image.png, ContentType="image/png")
    page = render_html(
        source_key=source_key, transcript=transcript.text, prompt=prompt, png=image.png, parameters=image.parameters
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
            "bucket": record.bucket,
            "key": record.key,
            "job_name": transcript.job_name,
            "language_code": transcript.language_code,
        },
        "prompt": prompt,
        # Cut by this function (MAX_PROMPT_CHARS) vs. cut by the model's tokenizer (reported by the endpoint).
        "transcript_truncated": transcript_truncated,
        "prompt_truncated": image.prompt_truncated,
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
    s3.put_object(
        Bucket=settings.output_bucket,
        Key=keys.metadata,
        Body=json.dumps(metadata, ensure_ascii=False, indent=2).encode("utf-8"),
        ContentType="application/json",
    )
    _remove_stale_error_record(s3, settings, source_key)
    logger.info("image written", extra={**context, "image_key": keys.png})
    return Result(source_key, "generated", image_key=keys.png)


def _remove_stale_error_record(s3: Any, settings: Settings, source_key: str) -> None:
    # An earlier failed attempt may have left an error record: one upload, one final result.
    # DeleteObject succeeds whether or not the key exists, so the role needs no read access here.
    s3.delete_object(Bucket=settings.output_bucket, Key=error_key(settings.error_prefix, source_key))
