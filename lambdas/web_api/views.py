"""What one upload looks like to its owner: the ledger's stage in plain words, elapsed time, and the result."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline_common.aws_errors import is_not_found
from pipeline_common.keys import KeyMappingError, error_key, image_keys
from pipeline_common.ledger import DONE, FAILED, GENERATING, RECEIVED, TRANSCRIBING, WAITING, Entry
from web_api.settings import Settings

logger = logging.getLogger(__name__)

UPLOADED = "uploaded"
# The ledger's stage -> the API's stage and the words the page shows. No ledger item yet: the object is in
# the input bucket but its event has not reached transcribe_trigger.
STAGES = {
    None: (UPLOADED, "Uploaded"),
    RECEIVED: (UPLOADED, "Uploaded"),
    TRANSCRIBING: ("transcribing", "Transcribing"),
    WAITING: ("waiting", "Waiting for the GPU"),
    GENERATING: ("generating", "Generating the picture"),
    DONE: ("done", "Done"),
    FAILED: ("failed", "Failed"),
}
# When the pipeline finished but its record cannot be read (removed, or the ledger names no record).
_UNREADABLE = {
    "reason": "the result was recorded but cannot be read any more",
    "action": "upload the recording again",
}


@dataclass(frozen=True)
class UploadObject:
    """An upload as the input bucket lists it."""

    key: str
    upload_id: str
    uploaded_at: datetime
    size: int


def stage_of(entry: Entry | None) -> tuple[str, str]:
    """The API's stage and its label for a ledger entry (None: not in the ledger yet)."""
    return STAGES.get(entry.stage if entry else None, (UPLOADED, "Uploaded"))


def elapsed_seconds(upload: UploadObject, entry: Entry | None, now: datetime) -> float:
    """Seconds from the upload to its result (final) or to now (in flight)."""
    end = now
    if entry is not None and entry.final and entry.updated_at:
        end = _parse_time(entry.updated_at)
    return round(max(0.0, (end - upload.uploaded_at).total_seconds()), 1)


def upload_view(
    upload: UploadObject, entry: Entry | None, settings: Settings, s3: Any, *, now: datetime, detail: bool
) -> dict[str, Any]:
    """The JSON of one upload: stage, elapsed time; the result in full (`detail`) or as a thumbnail."""
    stage, label = stage_of(entry)
    view: dict[str, Any] = {
        "id": upload.upload_id,
        "key": upload.key,
        "size": upload.size,
        "uploadedAt": upload.uploaded_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "stage": stage,
        "stageLabel": label,
        "final": stage in ("done", "failed"),
        "elapsedSeconds": elapsed_seconds(upload, entry, now),
        # A step failed and is being retried: the page says so instead of looking stuck.
        "retrying": bool(entry and entry.internal_error and not entry.final),
    }
    if stage == "done":
        view |= _done(upload.key, settings, s3, detail=detail)
    elif stage == "failed":
        view["error"] = _failure(upload.key, entry, settings, s3, detail=detail)
    return view


def _done(key: str, settings: Settings, s3: Any, *, detail: bool) -> dict[str, Any]:
    keys = image_keys(settings.image_prefix, key)
    links = {"image": _link(s3, settings, keys.png)}
    if not detail:
        return {"links": links}
    links |= {"metadata": _link(s3, settings, keys.metadata), "html": _link(s3, settings, keys.html)}
    metadata = _read_json(s3, settings.output_bucket, keys.metadata) or {}
    return {
        "links": links,
        "transcript": metadata.get("transcript"),
        "prompt": metadata.get("prompt"),
        "parameters": metadata.get("parameters") or {},
        "notices": metadata.get("notices") or [],
    }


def _failure(key: str, entry: Entry | None, settings: Settings, s3: Any, *, detail: bool) -> dict[str, Any]:
    result = dict(entry.result or {}) if entry else {}
    summary = {"code": result.get("code"), "stage": result.get("stage")}
    if not detail:
        return summary
    try:
        record = _read_json(s3, settings.output_bucket, error_key(settings.error_prefix, key))
    except KeyMappingError:
        record = None
    if record is None:
        return summary | _UNREADABLE
    return {
        "code": record.get("error") or summary["code"],
        "stage": record.get("stage") or summary["stage"],
        "reason": record.get("reason") or _UNREADABLE["reason"],
        "action": record.get("action") or _UNREADABLE["action"],
    }


def _link(s3: Any, settings: Settings, key: str) -> str:
    return s3.generate_presigned_url(
        "get_object", Params={"Bucket": settings.output_bucket, "Key": key}, ExpiresIn=settings.url_ttl_seconds
    )


def _read_json(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """An output document, or None when it is missing or not a JSON object (logged: the result is damaged)."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as error:
        if is_not_found(error):
            logger.warning("a recorded result is missing", extra={"bucket": bucket, "object_key": key})
            return None
        raise
    try:
        document = json.loads(body)
    except ValueError:
        logger.warning("a recorded result is not JSON", extra={"bucket": bucket, "object_key": key})
        return None
    return document if isinstance(document, dict) else None


def _parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)
