"""Typed S3 event notification records, parsed from the raw Lambda event."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

logger = logging.getLogger(__name__)


class EventError(ValueError):
    """The event is not an S3 notification this pipeline understands."""


@dataclass(frozen=True)
class S3Record:
    """One object-created notification; `key` is already URL-decoded."""

    bucket: str
    key: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    event_name: str = "ObjectCreated:Put"
    event_time: str | None = None

    @property
    def uri(self) -> str:
        """The object as an `s3://bucket/key` URI (the key unencoded, as Transcribe expects)."""
        return f"s3://{self.bucket}/{self.key}"

    def log_context(self) -> dict[str, Any]:
        """Fields for `logger.*(..., extra=...)`; names avoid LogRecord's own attributes."""
        return {"bucket": self.bucket, "key": self.key, "etag": self.etag, "sequencer": self.sequencer}


def is_test_event(event: Mapping[str, Any]) -> bool:
    """True for the `s3:TestEvent` S3 sends when a notification is configured."""
    return event.get("Event") == "s3:TestEvent"


def parse_s3_event(event: Any) -> list[S3Record]:
    """All object-created records of an S3 event (or of S3 events wrapped in SQS messages).

    `s3:TestEvent` messages give no records. Records of other S3 event types are logged and
    left out; anything that is not an S3 notification raises `EventError`.
    """
    if not isinstance(event, Mapping):
        raise EventError(f"expected an S3 event notification (a JSON object), got {type(event).__name__}")
    if is_test_event(event):
        logger.info("s3:TestEvent skipped", extra={"bucket": event.get("Bucket")})
        return []
    raw_records = event.get("Records")
    if not isinstance(raw_records, list):
        raise EventError(f"not an S3 event notification: no 'Records' list (top-level keys: {sorted(event)})")
    records: list[S3Record] = []
    for index, raw in enumerate(raw_records):
        if not isinstance(raw, Mapping):
            raise EventError(f"record {index} is not a JSON object")
        source = raw.get("eventSource")
        if source == "aws:sqs":
            # S3 -> SQS -> Lambda wiring delivers S3 events wrapped in SQS messages: unwrap them.
            records += parse_s3_event(_sqs_body(raw, index))
        elif source == "aws:s3":
            record = _parse_s3_record(raw, index)
            if record is not None:
                records.append(record)
        else:
            raise EventError(f"record {index}: eventSource {source!r} is neither aws:s3 nor aws:sqs")
    return records


def _sqs_body(raw: Mapping[str, Any], index: int) -> Any:
    try:
        return json.loads(raw["body"])
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise EventError(f"record {index}: SQS message body is not an S3 event ({error})") from error


def _parse_s3_record(raw: Mapping[str, Any], index: int) -> S3Record | None:
    event_name = str(raw.get("eventName") or "ObjectCreated:Put")
    try:
        s3 = raw["s3"]
        bucket = s3["bucket"]["name"]
        obj = s3["object"]
        encoded_key = obj["key"]
    except (KeyError, TypeError) as error:
        raise EventError(f"record {index}: missing s3.bucket.name or s3.object.key ({error!r})") from error
    # Keys arrive form-encoded: '+' is a space and a literal '+' is %2B.
    key = unquote_plus(encoded_key)
    if not event_name.startswith("ObjectCreated:"):
        # The bucket notifications subscribe to object-created events only; say so if others arrive.
        logger.warning("non-create S3 event skipped", extra={"bucket": bucket, "key": key, "event_name": event_name})
        return None
    size = obj.get("size")
    return S3Record(
        bucket=bucket,
        key=key,
        size=int(size) if size is not None else None,
        etag=obj.get("eTag") or None,
        version_id=obj.get("versionId") or None,
        sequencer=obj.get("sequencer") or None,
        event_name=event_name,
        event_time=raw.get("eventTime"),
    )
