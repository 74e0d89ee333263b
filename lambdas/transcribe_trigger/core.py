"""Check an uploaded recording and start its Amazon Transcribe job; clients come in as arguments."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any, TypeVar

from pipeline_common.aws_errors import error_code, is_not_found
from pipeline_common.error_records import utc_now
from pipeline_common.events import EventError, S3Record
from pipeline_common.keys import KeyMappingError, job_name, normalise_etag, transcript_key
from pipeline_common.ledger import RECEIVED, TRANSCRIBING, Entry, LedgerError, Upload, normalise_sequencer
from pipeline_common.results import COMMITTED, DUPLICATE, SUPERSEDED, Results
from pipeline_common.settings import (
    CommonSettings,
    SettingsError,
    as_int,
    as_list,
    as_media_formats,
    optional,
    require,
)

logger = logging.getLogger(__name__)

FUNCTION = "transcribe_trigger"
# Enough for every container signature below; a ranged GET keeps large uploads cheap to check.
SNIFF_BYTES = 64
AUTO_LANGUAGE = "auto"


@dataclass(frozen=True)
class Settings(CommonSettings):
    """What transcribe_trigger needs from its environment."""

    transcript_bucket: str
    transcript_prefix: str
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
            **cls.common_from_env(environ),
            transcript_bucket=require(environ, "TRANSCRIPT_BUCKET"),
            transcript_prefix=require(environ, "TRANSCRIPT_PREFIX"),
            media_formats=as_media_formats("MEDIA_FORMATS", require(environ, "MEDIA_FORMATS")),
            max_media_bytes=as_int("MAX_MEDIA_BYTES", require(environ, "MAX_MEDIA_BYTES"), minimum=1),
            language_code=language_code,
            language_options=language_options,
        )


@dataclass(frozen=True)
class Result:
    """What happened to one upload: started, duplicate, rejected, superseded or foreign."""

    bucket: str
    key: str
    outcome: str
    job_name: str | None = None
    transcript_key: str | None = None
    error_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (the handler's return value)."""
        return asdict(self)


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


def upload_of(record: S3Record) -> Upload:
    """The upload an S3 event is about: its version (the identity) and its sequencer (the order)."""
    if not record.sequencer:
        raise EventError(f"{record.uri}: the S3 event has no s3.object.sequencer; S3 always sends one")
    try:
        sequencer = normalise_sequencer(record.sequencer)
    except ValueError as error:
        raise EventError(f"{record.uri}: {error}") from None
    # An unversioned bucket (a misconfiguration) still gets a distinct identity per upload.
    upload_id = record.version_id or f"{normalise_etag(record.etag or '')}.{sequencer.lstrip('0')}"
    return Upload(key=record.key, upload_id=upload_id, sequencer=sequencer, etag=record.etag)


def start_transcription(record: S3Record, *, settings: Settings, s3: Any, transcribe: Any, results: Results) -> Result:
    """Claim one upload in the ledger, check it and start its Transcribe job, or give it an error record."""
    if record.bucket != settings.input_bucket:
        # Wired to the input bucket only: anything else is a configuration mistake, not an upload to judge.
        logger.warning("event from a bucket other than INPUT_BUCKET; skipped", extra=record.log_context())
        return _done(results, Result(record.bucket, record.key, "foreign"))
    claim = results.ledger.claim(upload_of(record), utc_now())
    entry = claim.entry
    if claim.outcome == "stale":
        # A later upload under this key is already current: its own event produces the key's result.
        logger.info("a newer upload is current; skipped", extra={**record.log_context(), "outcome": SUPERSEDED})
        return _done(results, Result(record.bucket, record.key, SUPERSEDED))
    if claim.outcome == "repeat" and entry.stage != RECEIVED:
        # S3 delivered this event again (at least once): the job was started, or the upload has its result.
        logger.info("repeated event skipped", extra={**record.log_context(), "stage": entry.stage})
        return _done(results, Result(record.bucket, record.key, DUPLICATE, job_name=entry.job_name))
    try:
        try:
            return _done(results, _start(record, entry, settings, s3, transcribe, results))
        except _Rejected as rejected:
            committed = results.commit_error(
                entry,
                stage="validate",
                code=rejected.error,
                reason=rejected.reason,
                action=rejected.action,
                details=rejected.details,
            )
            outcome = "rejected" if committed.outcome == COMMITTED else committed.outcome
            return _done(results, Result(record.bucket, record.key, outcome, error_key=committed.key))
    except Exception as error:
        results.record_retry(entry, stage="validate", failure=error)
        # Re-raised: the message returns to the queue, and after the last receive goes to the dead-letter queue.
        raise


def _done(results: Results, result: Result) -> Result:
    results.metrics.outcome(result.outcome)
    return result


def _start(record: S3Record, entry: Entry, settings: Settings, s3: Any, transcribe: Any, results: Results) -> Result:
    formats = ", ".join(settings.media_formats)
    extension = PurePosixPath(record.key).suffix.lower().lstrip(".")
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

    # Every read names the upload's own version: a newer upload under the key cannot be mistaken for it.
    version = {"VersionId": record.version_id} if record.version_id else {}
    size = record.size
    if size is None:
        size = _read(lambda: s3.head_object(Bucket=record.bucket, Key=record.key, **version))["ContentLength"]
    if size == 0:
        raise _Rejected("empty-file", "the uploaded file is empty (0 bytes)", "record again and upload the audio file")
    if size > settings.max_media_bytes:
        raise _Rejected(
            "too-large",
            f"the file is {size} bytes; the limit is {settings.max_media_bytes} bytes",
            "upload a shorter recording or compress it (for example to mp3)",
            size=size,
            max_media_bytes=settings.max_media_bytes,
        )
    head_bytes = _read(
        lambda: s3.get_object(Bucket=record.bucket, Key=record.key, Range=f"bytes=0-{SNIFF_BYTES - 1}", **version)[
            "Body"
        ].read()
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

    # Key + version id: the same upload always gets the same name, and re-uploaded bytes are a new upload.
    name = job_name(record.key, entry.upload_id, settings.job_name_prefix)
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
        if error_code(error) != "ConflictException":
            logger.exception("StartTranscriptionJob failed", extra=context)
            raise
        # An earlier attempt of this upload started the job and failed before the ledger knew.
        logger.info("transcription job already exists", extra=context)
    try:
        results.ledger.advance(
            record.key, entry.upload_id, to=TRANSCRIBING, expect=(RECEIVED, TRANSCRIBING), now=utc_now(), job_name=name
        )
    except LedgerError as lost:
        current = lost.entry
        # Either a newer upload is current (its own job will give the key its result) or this one moved on.
        outcome = SUPERSEDED if current is None or not current.is_upload(entry.upload_id) else DUPLICATE
        logger.info("ledger moved on while the job started", extra={**context, "outcome": outcome})
        return Result(record.bucket, record.key, outcome, job_name=name, transcript_key=output_key)
    logger.info("transcription job started", extra=context)
    return Result(record.bucket, record.key, "started", job_name=name, transcript_key=output_key)


R = TypeVar("R")


def _read(request: Callable[[], R]) -> R:
    """Run an S3 read of the upload's version; a version deleted since is `gone`."""
    try:
        return request()
    except Exception as error:
        if is_not_found(error) or error_code(error) == "NoSuchVersion":
            raise _Rejected(
                "upload-deleted",
                "the recording was deleted before it could be transcribed",
                "upload the recording again if you still want its picture",
            ) from error
        raise
