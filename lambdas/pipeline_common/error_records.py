"""Error records (`errors/<source key>.json`): what failed, why, and what the user should do."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pipeline_common.keys import error_key

logger = logging.getLogger(__name__)

STAGES = ("validate", "transcribe", "transcript", "generate")


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


def write_error_record(
    s3: Any,
    *,
    bucket: str,
    prefix: str,
    source_bucket: str,
    source_key: str,
    stage: str,
    error: str,
    reason: str,
    action: str,
    details: Mapping[str, Any] | None = None,
    now: Callable[[], str] = utc_now,
) -> str:
    """Write the error record to `bucket` at `prefix + source key + .json` and return its key."""
    record = build_error_record(
        source_bucket=source_bucket,
        source_key=source_key,
        stage=stage,
        error=error,
        reason=reason,
        action=action,
        details=details,
        now=now,
    )
    key = error_key(prefix, source_key)
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=json.dumps(record, ensure_ascii=False, indent=2, default=str).encode("utf-8"),
        ContentType="application/json",
    )
    logger.warning(
        "error record written",
        extra={"bucket": source_bucket, "key": source_key, "stage": stage, "error_code": error, "error_key": key},
    )
    return key
