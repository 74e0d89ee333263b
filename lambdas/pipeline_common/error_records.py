"""Error records (`errors/<source key>.json`): what failed, why, and what the user should do."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pipeline_common.keys import KeyMappingError, error_key, image_keys

logger = logging.getLogger(__name__)

STAGES = ("validate", "transcribe", "transcript", "generate")
INTERNAL_ERROR = "internal-error"
# Enough to name the failure; a whole traceback belongs in the logs, not in a user-facing record.
MAX_INTERNAL_REASON_CHARS = 1000


class ImageSetNotRemovedError(RuntimeError):
    """S3 refused to delete part of an image set; the error record is not written, so both never coexist."""


def utc_now() -> str:
    """The current time as ISO-8601 UTC with milliseconds, e.g. 2024-05-01T12:00:00.000Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_error_record(
    *,
    source_bucket: str,
    source_key: str,
    stage: str,
    error: str,
    reason: str,
    action: str,
    details: Mapping[str, Any] | None = None,
    now: Callable[[], str] = utc_now,
) -> dict[str, Any]:
    """The error record of docs/CONTRACTS.md as a dict."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {STAGES}")
    return {
        "status": "error",
        "source": {"bucket": source_bucket, "key": source_key},
        "stage": stage,
        "error": error,
        "reason": reason,
        "action": action,
        "time": now(),
        "details": dict(details or {}),
    }


def internal_error_action(function: str) -> str:
    """What a user should do about an `internal-error` record written by `function`."""
    return (
        f"nothing yet: {function} retries automatically; if it keeps failing, the event waits in {function}'s "
        "dead-letter queue: fix the cause (see the reason and the function's logs), then run `make replay`"
    )


class OutputSettings(Protocol):
    """The settings every handler has for where an upload's result goes (infra/pipeline.py's common block)."""

    input_bucket: str
    output_bucket: str
    image_prefix: str
    error_prefix: str


@dataclass(frozen=True)
class ResultStore:
    """An upload's one final result in the output bucket: the image set or `errors/<key>.json`, never both.

    Source keys are keys of the input bucket: every handler skips events about other buckets first.
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

    def record_internal_error(
        self,
        source_key: str,
        *,
        stage: str,
        failure: BaseException,
        function: str,
        details: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Best effort: record an unexpected failure as `internal-error`; the caller re-raises it either way.

        Returns the record's key, or None when the record itself could not be written (that is logged):
        the original failure matters more than the record, so nothing raised here may replace it.
        """
        reason = f"{type(failure).__name__}: {failure}"
        if len(reason) > MAX_INTERNAL_REASON_CHARS:
            reason = reason[: MAX_INTERNAL_REASON_CHARS - 3] + "..."
        try:
            return self.write_error(
                source_key,
                stage=stage,
                error=INTERNAL_ERROR,
                reason=reason,
                action=internal_error_action(function),
                details={"error_type": type(failure).__name__, **(details or {})},
            )
        except Exception as error:
            logger.exception(
                "internal-error record could not be written",
                extra={
                    "bucket": self.input_bucket,
                    "key": source_key,
                    "stage": stage,
                    "error_type": type(error).__name__,
                    "original_error_type": type(failure).__name__,
                },
            )
            return None
