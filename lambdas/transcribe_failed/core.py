"""Turn a FAILED Transcribe job into its upload's error record; clients come in as arguments."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from pipeline_common.events import EventError
from pipeline_common.results import COMMITTED, SUPERSEDED, Results
from pipeline_common.settings import CommonSettings, as_media_formats, require

logger = logging.getLogger(__name__)

FUNCTION = "transcribe_failed"
EVENT_SOURCE = "aws.transcribe"
EVENT_DETAIL_TYPE = "Transcribe Job State Change"
FAILED = "FAILED"
STAGE = "transcribe"
ERROR = "transcription-failed"
NO_REASON = "Amazon Transcribe reported the job as FAILED without a reason"

# FailureReason is free text; these patterns pick the advice. The order matters: a file that is too large
# is "invalid" too, but the fix is a shorter recording, not another format.
_TOO_LONG = re.compile(r"too large|too long|maximum (audio )?duration|duration exceeds", re.IGNORECASE)
_TOO_LITTLE_SPEECH = re.compile(r"speech segment|long enough|too short", re.IGNORECASE)
_BAD_MEDIA = re.compile(
    r"media format|unsupported|corrupt|decod|\bpars(e|ing)\b|codec|sample rate|no audio|audio stream|"
    r"not a valid|invalid (audio|media|file)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Settings(CommonSettings):
    """What transcribe_failed needs from its environment."""

    media_formats: tuple[str, ...]

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and check the variables set by infra/pipeline.py; `SettingsError` names any bad one."""
        return cls(
            **cls.common_from_env(environ),
            media_formats=as_media_formats("MEDIA_FORMATS", require(environ, "MEDIA_FORMATS")),
        )


@dataclass(frozen=True)
class JobStateChange:
    """The parts of a `Transcribe Job State Change` event this function uses."""

    job_name: str
    status: str


@dataclass(frozen=True)
class Result:
    """What happened to one job: recorded, ignored (not FAILED), foreign, duplicate or superseded."""

    job_name: str
    outcome: str
    bucket: str | None = None
    key: str | None = None
    error_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (one entry of the handler's `results`)."""
        return asdict(self)


def parse_job_state_change(event: Any) -> JobStateChange:
    """The job name and status of an EventBridge Transcribe job event; `EventError` for anything else."""
    if not isinstance(event, Mapping):
        raise EventError(f"expected a Transcribe job state event (a JSON object), got {type(event).__name__}")
    source, detail_type = event.get("source"), event.get("detail-type")
    if source != EVENT_SOURCE or detail_type != EVENT_DETAIL_TYPE:
        hint = ""
        if "Records" in event:
            hint = " (this looks like an S3 notification: it belongs to transcribe_trigger or invoke_sd)"
        elif "requestPayload" in event:
            hint = " (this looks like a dead-letter record: send its requestPayload instead)"
        raise EventError(
            f"not a Transcribe job state event: source {source!r}, detail-type {detail_type!r}; expected "
            f"{EVENT_SOURCE!r} and {EVENT_DETAIL_TYPE!r}{hint}"
        )
    detail = event.get("detail")
    if not isinstance(detail, Mapping):
        raise EventError("the Transcribe job state event has no 'detail' object")
    name, status = detail.get("TranscriptionJobName"), detail.get("TranscriptionJobStatus")
    if not isinstance(name, str) or not name or not isinstance(status, str) or not status:
        raise EventError(
            "the Transcribe job state event needs detail.TranscriptionJobName and detail.TranscriptionJobStatus, "
            f"got {dict(detail)!r}"
        )
    return JobStateChange(job_name=name, status=status)


def parse_media_uri(uri: str) -> tuple[str, str] | None:
    """Bucket and key of a MediaFileUri, or None if it names no S3 object.

    `s3://bucket/key` carries the key verbatim (Transcribe takes it as is: spaces, '+', unicode);
    S3 https URLs (path or virtual-hosted style) carry it URL-encoded.
    """
    if uri.startswith("s3://"):
        bucket, slash, key = uri[len("s3://") :].partition("/")
        return (bucket, key) if bucket and slash and key else None
    parts = urlsplit(uri)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or not (host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn")):
        return None
    labels = host.split(".")
    s3_label = next((i for i, label in enumerate(labels) if label == "s3" or label.startswith("s3-")), None)
    if s3_label is None:
        return None
    path = unquote(parts.path)[1:]
    if s3_label == 0:
        # Path style: https://s3.<region>.amazonaws.com/<bucket>/<key>
        bucket, slash, key = path.partition("/")
        return (bucket, key) if bucket and slash and key else None
    # Virtual-hosted style: https://<bucket>.s3.<region>.amazonaws.com/<key> (bucket names may hold dots).
    bucket = ".".join(labels[:s3_label])
    return (bucket, path) if path else None


def failure_action(reason: str, media_formats: Sequence[str]) -> str:
    """What the user should do about a failed transcription, judged from Transcribe's FailureReason."""
    if _TOO_LONG.search(reason):
        return "upload a shorter recording: Amazon Transcribe takes at most 4 hours and 2 GB per file"
    if _TOO_LITTLE_SPEECH.search(reason):
        return "record again with a few seconds of clear speech at least, and upload that recording"
    if _BAD_MEDIA.search(reason):
        return (
            f"upload a playable recording in one of: {', '.join(media_formats)} "
            "(the file may be damaged, hold no audio, or be in another format than its name says)"
        )
    return (
        "upload the recording again (every upload gets its own job); if it fails again, check the job in the "
        "Amazon Transcribe console"
    )


def handle_job_state_change(event: Any, *, settings: Settings, transcribe: Any, results: Results) -> Result:
    """Give the upload of a FAILED job of this pipeline its error record; other events are skipped with a reason."""
    change = parse_job_state_change(event)
    context = {"job_name": change.job_name, "job_status": change.status}
    if change.status != FAILED:
        # The EventBridge rule sends FAILED only; a COMPLETED job's transcript reaches invoke_sd through S3.
        logger.info("job state is not FAILED; ignored", extra=context)
        return _done(results, Result(change.job_name, "ignored"))
    if not change.job_name.startswith(settings.job_name_prefix):
        logger.warning("job was not started by this pipeline; ignored", extra=context)
        return _done(results, Result(change.job_name, "foreign"))

    # The event names the job only: its media (the upload) and the reason come from the job itself.
    job = transcribe.get_transcription_job(TranscriptionJobName=change.job_name)["TranscriptionJob"]
    uri = str((job.get("Media") or {}).get("MediaFileUri") or "")
    location = parse_media_uri(uri)
    if location is None or location[0] != settings.input_bucket:
        logger.warning("job's media is not in INPUT_BUCKET; ignored", extra={**context, "media_file_uri": uri})
        return _done(results, Result(change.job_name, "foreign"))
    bucket, key = location
    context |= {"bucket": bucket, "key": key}

    entry, skip = results.current_for_job(key, change.job_name, settings.job_name_prefix)
    if skip is not None or entry is None:
        # Replaced by a newer upload whose own job produces its result, or already given its result.
        logger.info("job is not about an unfinished current upload; skipped", extra={**context, "outcome": skip})
        return _done(results, Result(change.job_name, skip or SUPERSEDED, bucket, key))
    try:
        reason = str(job.get("FailureReason") or NO_REASON)
        details = {
            "job_name": change.job_name,
            "failure_reason": job.get("FailureReason"),
            "media_format": job.get("MediaFormat"),
            "language_code": job.get("LanguageCode"),
        }
        committed = results.commit_error(
            entry,
            stage=STAGE,
            code=ERROR,
            reason=reason,
            action=failure_action(reason, settings.media_formats),
            details={name: value for name, value in details.items() if value},
        )
    except Exception as error:
        results.record_retry(entry, stage=STAGE, failure=error)
        # Re-raised so Lambda retries and, in the end, the event reaches the dead-letter queue.
        raise
    outcome = "recorded" if committed.outcome == COMMITTED else committed.outcome
    return _done(results, Result(change.job_name, outcome, bucket, key, committed.key))


def _done(results: Results, result: Result) -> Result:
    results.metrics.outcome(result.outcome)
    return result
