"""Check an uploaded recording and start its Amazon Transcribe job; clients come in as arguments."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any, TypeVar

from pipeline_common.aws_errors import error_code, is_not_found, is_precondition_failed
from pipeline_common.batch import process_each
from pipeline_common.error_records import ResultStore
from pipeline_common.events import S3Record
from pipeline_common.keys import KeyMappingError, job_name, normalise_etag, transcript_key
from pipeline_common.settings import (
    SettingsError,
    as_int,
    as_job_name_prefix,
    as_list,
    as_media_formats,
    optional,
    require,
)
from pipeline_common.uploads import GONE, SUPERSEDED, current_etag

logger = logging.getLogger(__name__)

FUNCTION = "transcribe_trigger"
# Enough for every container signature below; a ranged GET keeps large uploads cheap to check.
SNIFF_BYTES = 64
AUTO_LANGUAGE = "auto"


@dataclass(frozen=True)
class Settings:
    """What transcribe_trigger needs from its environment."""

    input_bucket: str
    transcript_bucket: str
    transcript_prefix: str
    output_bucket: str
    image_prefix: str
    error_prefix: str
    job_name_prefix: str
    media_formats: tuple[str, ...]
    max_media_bytes: int
    language_code: str = "en-US"
    language_options: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and check the variables set by infra/pipeline.py; `SettingsError` names any bad one."""
        language_code = optional(environ, "LANGUAGE_CODE", "en-US")
        language_options = as_list(optional(environ, "LANGUAGE_OPTIONS", ""))
        if language_code == AUTO_LANGUAGE and len(language_options) < 2:
            raise SettingsError(
                "environment variable LANGUAGE_OPTIONS needs at least two language codes "
                "(e.g. en-US,de-DE) when LANGUAGE_CODE=auto"
            )
        return cls(
            input_bucket=require(environ, "INPUT_BUCKET"),
            transcript_bucket=require(environ, "TRANSCRIPT_BUCKET"),
            transcript_prefix=require(environ, "TRANSCRIPT_PREFIX"),
            output_bucket=require(environ, "OUTPUT_BUCKET"),
            image_prefix=require(environ, "IMAGE_PREFIX"),
            error_prefix=require(environ, "ERROR_PREFIX"),
            job_name_prefix=as_job_name_prefix("JOB_NAME_PREFIX", require(environ, "JOB_NAME_PREFIX")),
            media_formats=as_media_formats("MEDIA_FORMATS", require(environ, "MEDIA_FORMATS")),
            max_media_bytes=as_int("MAX_MEDIA_BYTES", require(environ, "MAX_MEDIA_BYTES"), minimum=1),
            language_code=language_code,
            language_options=language_options,
        )


@dataclass(frozen=True)
class Result:
    """What happened to one upload: started, duplicate, rejected, gone, superseded or foreign."""

    bucket: str
    key: str
    outcome: str
    job_name: str | None = None
    transcript_key: str | None = None
    error_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (the handler's return value)."""
        return asdict(self)


class _Skipped(Exception):
    """The upload is no longer the object under its key: `gone` or `superseded`; nothing is written."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class _Rejected(Exception):
    """Bad input: becomes an error record, never a retry."""

    def __init__(self, error: str, reason: str, action: str, **details: Any) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.action = action
        self.details = details


def detect_container(head: bytes) -> str | None:
    """The audio container the first bytes announce (a Transcribe MediaFormat), or None."""
    if head.startswith(b"ID3") or _is_mpeg_audio_frame(head):
        return "mp3"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    if head.startswith(b"#!AMR"):
        return "amr"
    return None


def _is_mpeg_audio_frame(head: bytes) -> bool:
    # An MPEG audio frame header: 11 sync bits, then fields whose reserved values rule out
    # most random bytes that merely start with 0xFFE.
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version = (head[1] >> 3) & 0b11
    layer = (head[1] >> 1) & 0b11
    bitrate = head[2] >> 4
    sample_rate = (head[2] >> 2) & 0b11
    return version != 0b01 and layer != 0b00 and bitrate != 0b1111 and sample_rate != 0b11


def media_format(container: str, extension: str) -> str:
    """Transcribe's MediaFormat: the sniffed container, except that mp4 and m4a share one."""
    if container == "mp4" and extension in ("mp4", "m4a"):
        return extension
    return container


def language_arguments(settings: Settings) -> dict[str, Any]:
    """StartTranscriptionJob's language arguments: a fixed code, or automatic identification."""
    if settings.language_code == AUTO_LANGUAGE:
        return {"IdentifyLanguage": True, "LanguageOptions": list(settings.language_options)}
    return {"LanguageCode": settings.language_code}


def start_transcriptions(records: Sequence[S3Record], *, settings: Settings, s3: Any, transcribe: Any) -> list[Result]:
    """Handle every upload of an event; raise at the end if any failed unexpectedly."""
    return process_each(
        records, lambda record: start_transcription(record, settings=settings, s3=s3, transcribe=transcribe)
    )


def start_transcription(record: S3Record, *, settings: Settings, s3: Any, transcribe: Any) -> Result:
    """Check one upload and start its Transcribe job, or write an error record for bad input."""
    if record.bucket != settings.input_bucket:
        # Wired to the input bucket only: anything else is a configuration mistake, not an upload to judge.
        logger.warning("event from a bucket other than INPUT_BUCKET; skipped", extra=record.log_context())
        return Result(record.bucket, record.key, "foreign")
    try:
        try:
            return _start(record, settings, s3, transcribe)
        except _Skipped as skipped:
            # The newer upload's own event produces its result; this one must not touch it.
            logger.info(
                "upload is gone or was replaced; skipped", extra={**record.log_context(), "outcome": skipped.outcome}
            )
            return Result(record.bucket, record.key, skipped.outcome)
        except _Rejected as rejected:
            key = ResultStore.of(s3, settings).write_error(
                record.key,
                stage="validate",
                error=rejected.error,
                reason=rejected.reason,
                action=rejected.action,
                details=rejected.details,
            )
            return Result(record.bucket, record.key, "rejected", error_key=key)
    except Exception as error:
        ResultStore.of(s3, settings).record_internal_error(
            record.key,
            stage="validate",
            failure=error,
            function=FUNCTION,
            details={"etag": record.etag} if record.etag else None,
        )
        # Re-raised so Lambda retries and, in the end, the event reaches the dead-letter queue.
        raise


def _start(record: S3Record, settings: Settings, s3: Any, transcribe: Any) -> Result:
    formats = ", ".join(settings.media_formats)
    extension = PurePosixPath(record.key).suffix.lower().lstrip(".")
    # The key alone decides these two, so they hold for every upload under the key: no need to ask S3 first.
    if extension not in settings.media_formats:
        raise _Rejected(
            "unsupported-format",
            f"'.{extension}' files are not accepted" if extension else "the file name has no extension",
            f"convert the recording to one of: {formats}, and upload it with that extension",
            extension=extension,
        )
    try:
        output_key = transcript_key(settings.transcript_prefix, record.key)
    except KeyMappingError as error:
        raise _Rejected(
            "key-too-long",
            f"the file name is too long to name its transcript: {error}",
            "upload the recording again under a shorter name (non-ASCII characters count several times)",
        ) from None

    size, etag = record.size, record.etag
    from_event = size is not None and etag is not None
    if not from_event:
        head = _read(lambda: s3.head_object(Bucket=record.bucket, Key=record.key))
        size, etag = head["ContentLength"], head["ETag"]
    etag = normalise_etag(str(etag))
    if size == 0 or size > settings.max_media_bytes:
        if from_event:
            # These verdicts come from the event's size: make sure it still describes the object under the key.
            _ensure_current(s3, record, etag)
        if size == 0:
            raise _Rejected(
                "empty-file", "the uploaded file is empty (0 bytes)", "record again and upload the audio file"
            )
        raise _Rejected(
            "too-large",
            f"the file is {size} bytes; the limit is {settings.max_media_bytes} bytes",
            "upload a shorter recording or compress it (for example to mp3)",
            size=size,
            max_media_bytes=settings.max_media_bytes,
        )

    # If-Match: the bytes judged are those of the object the event (and the job name) is about.
    head_bytes = _read(
        lambda: s3.get_object(
            Bucket=record.bucket, Key=record.key, Range=f"bytes=0-{SNIFF_BYTES - 1}", IfMatch=f'"{etag}"'
        )["Body"].read()
    )
    container = detect_container(head_bytes)
    if container is None:
        raise _Rejected(
            "not-audio",
            f"the content is not audio in a supported container (starts with {head_bytes[:8].hex()})",
            f"upload an audio recording ({formats}); the file may be damaged or only renamed",
            first_bytes_hex=head_bytes[:16].hex(),
        )
    fmt = media_format(container, extension)
    if fmt not in settings.media_formats:
        raise _Rejected(
            "unsupported-format",
            f"the file is named .{extension} but contains {container}, which is not accepted",
            f"convert the recording to one of: {formats}",
            extension=extension,
            container=container,
        )

    name = job_name(record.key, etag, settings.job_name_prefix)
    context = {**record.log_context(), "job_name": name, "media_format": fmt, "transcript_key": output_key}
    try:
        transcribe.start_transcription_job(
            TranscriptionJobName=name,
            Media={"MediaFileUri": record.uri},
            MediaFormat=fmt,
            OutputBucketName=settings.transcript_bucket,
            OutputKey=output_key,
            **language_arguments(settings),
        )
    except Exception as error:
        if error_code(error) == "ConflictException":
            # Same key and ETag -> same job name: S3 delivered this event again (at-least-once).
            logger.info("transcription job already exists; repeated event skipped", extra=context)
            return Result(record.bucket, record.key, "duplicate", job_name=name, transcript_key=output_key)
        logger.exception("StartTranscriptionJob failed", extra=context)
        raise
    # The job's own result (image set or error record) follows; an error record left by a failed earlier
    # attempt, or by an earlier upload under this key, would only contradict it until then.
    ResultStore.of(s3, settings).remove_error_record(record.key)
    logger.info("transcription job started", extra=context)
    return Result(record.bucket, record.key, "started", job_name=name, transcript_key=output_key)


R = TypeVar("R")


def _read(request: Callable[[], R]) -> R:
    """Run an S3 read of the upload; a deleted upload is `gone`, a changed one (If-Match) `superseded`."""
    try:
        return request()
    except Exception as error:
        if is_not_found(error):
            raise _Skipped(GONE) from error
        if is_precondition_failed(error):
            raise _Skipped(SUPERSEDED) from error
        raise


def _ensure_current(s3: Any, record: S3Record, etag: str) -> None:
    current = current_etag(s3, record.bucket, record.key)
    if current is None:
        raise _Skipped(GONE)
    if current != etag:
        raise _Skipped(SUPERSEDED)
