"""Error records (`errors/<source key>.json`): what failed, why, and what the user should do."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pipeline_common.keys import ImageKeys, KeyMappingError, error_key, image_keys

logger = logging.getLogger(__name__)

STAGES = ("validate", "transcribe", "transcript", "generate")
INTERNAL_ERROR = "internal-error"
# Enough to say what went wrong; a whole traceback belongs in the logs, not in a user-facing record.
MAX_REASON_CHARS = 1000
# What a reason must never show a user: role and resource ARNs, account ids (they go to the logs only).
# S3 ARNs name no region or account (`arn:aws:s3:::bucket/key`), so both parts are optional.
_ARN = re.compile(r"arn:aws[a-z-]*:[a-z0-9-]*:[a-z0-9-]*:\d{0,12}:[^\s\"',;)]+")
_ACCOUNT_ID = re.compile(r"(?<!\d)\d{12}(?!\d)")


class ImageSetNotRemovedError(RuntimeError):
    """S3 refused to delete part of an image set; the error record is not written, so both never coexist."""


def utc_now() -> str:
    """The current time as ISO-8601 UTC with milliseconds, e.g. 2024-05-01T12:00:00.000Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def redact(text: str) -> str:
    """`text` without ARNs and account ids, cut to MAX_REASON_CHARS: fit for a user-facing record."""
    text = _ACCOUNT_ID.sub("<account>", _ARN.sub("<arn>", text))
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def _redacted(value: Any) -> Any:
    """`value` with every string in it redacted (details hold service text too, e.g. a FailureReason)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    return value


def build_error_record(
    *,
    source_bucket: str,
    source_key: str,
    stage: str,
    error: str,
    reason: str,
    action: str,
    details: Mapping[str, Any] | None = None,
    request_id: str | None = None,
    now: Callable[[], str] = utc_now,
) -> dict[str, Any]:
    """The error record of docs/CONTRACTS.md as a dict; reason, action and details are redacted."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {STAGES}")
    return {
        "status": "error",
        "source": {"bucket": source_bucket, "key": source_key},
        "stage": stage,
        "error": error,
        "reason": redact(reason),
        "action": redact(action),
        "time": now(),
        # Quote it to the operator: it finds the invocation's log lines.
        "request_id": request_id,
        "details": _redacted(dict(details or {})),
    }


def internal_error_action(function: str) -> str:
    """What a user should do about an `internal-error` record written by `function`."""
    return (
        f"nothing yet: {function} retries automatically; if it keeps failing, the event waits in {function}'s "
        "dead-letter queue: an operator finds the cause in the function's logs (search for the request_id), "
        "fixes it and runs `make replay`"
    )


class OutputSettings(Protocol):
    """The settings every handler has for where an upload's result goes (infra/pipeline.py's common block)."""

    input_bucket: str
    output_bucket: str
    image_prefix: str
    error_prefix: str


@dataclass(frozen=True)
class ResultStore:
    """The output bucket's objects of an upload's result: the image set or `errors/<key>.json`.

    Only `pipeline_common.results` calls the writing methods, under the ledger's rules.
    """

    s3: Any
    input_bucket: str
    output_bucket: str
    image_prefix: str
    error_prefix: str

    @classmethod
    def of(cls, s3: Any, settings: OutputSettings) -> ResultStore:
        """The store a handler's settings describe, using the client `s3`."""
        return cls(s3, settings.input_bucket, settings.output_bucket, settings.image_prefix, settings.error_prefix)

    def error_key(self, source_key: str) -> str:
        """Where the key's error record goes."""
        return error_key(self.error_prefix, source_key)

    def image_keys(self, source_key: str) -> ImageKeys:
        """Where the key's image set goes; `KeyMappingError` when no image key fits S3's limit."""
        return image_keys(self.image_prefix, source_key)

    def write_image_set(self, source_key: str, *, png: bytes, html: str, metadata: bytes) -> None:
        """Write PNG, page and metadata (last: it marks the set complete), then remove the key's error record."""
        keys = self.image_keys(source_key)
        self.s3.put_object(Bucket=self.output_bucket, Key=keys.png, Body=png, ContentType="image/png")
        self.s3.put_object(
            Bucket=self.output_bucket, Key=keys.html, Body=html.encode("utf-8"), ContentType="text/html; charset=utf-8"
        )
        self.s3.put_object(Bucket=self.output_bucket, Key=keys.metadata, Body=metadata, ContentType="application/json")
        self.remove_error_record(source_key)

    def remove_image_set(self, source_key: str) -> None:
        """Delete `images/<key>.png/.json/.html` (whether or not they exist) with one DeleteObjects request."""
        try:
            keys = image_keys(self.image_prefix, source_key)
        except KeyMappingError:
            # No image key fits S3's limit for this source key, so no image set can exist.
            return
        # DeleteObjects needs a Content-MD5 or checksum header: botocore adds it. Quiet: only failures come back.
        response = self.s3.delete_objects(
            Bucket=self.output_bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True}
        )
        # DeleteObjects reports per-key failures in the response body, not as an exception.
        failures = response.get("Errors") or []
        if failures:
            listed = "; ".join(f"{item.get('Key')}: {item.get('Code')} {item.get('Message')}" for item in failures)
            raise ImageSetNotRemovedError(
                f"could not delete the image set of {source_key!r} in {self.output_bucket}: {listed}"
            )

    def remove_error_record(self, source_key: str) -> None:
        """Delete the key's error record; DeleteObject succeeds whether or not it exists: no read access needed."""
        self.s3.delete_object(Bucket=self.output_bucket, Key=error_key(self.error_prefix, source_key))

    def write_error(
        self,
        source_key: str,
        *,
        stage: str,
        error: str,
        reason: str,
        action: str,
        details: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        now: Callable[[], str] = utc_now,
    ) -> str:
        """Remove the key's image set, then write the error record at `errors/<source key>.json`; return its key."""
        record = build_error_record(
            source_bucket=self.input_bucket,
            source_key=source_key,
            stage=stage,
            error=error,
            reason=reason,
            action=action,
            details=details,
            request_id=request_id,
            now=now,
        )
        key = error_key(self.error_prefix, source_key)
        # One upload, one final result: images of an earlier upload under this key go first, then the record.
        self.remove_image_set(source_key)
        self.s3.put_object(
            Bucket=self.output_bucket,
            Key=key,
            Body=json.dumps(record, ensure_ascii=False, indent=2, default=str).encode("utf-8"),
            ContentType="application/json",
        )
        logger.warning(
            "error record written",
            extra={
                "bucket": self.input_bucket,
                "key": source_key,
                "stage": stage,
                "error_code": error,
                "error_key": key,
            },
        )
        return key
