"""The shared shape of both Lambda entry points: parse the S3 event, process its records, report."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pipeline_common.events import S3Record, parse_s3_event

logger = logging.getLogger(__name__)


class Reportable(Protocol):
    """A per-record result that can describe itself as JSON."""

    def as_dict(self) -> dict[str, Any]: ...


def handle_s3_event(
    event: dict[str, Any], context: Any, process: Callable[[list[S3Record]], Sequence[Reportable]]
) -> dict[str, Any]:
    """Run `process` on every object-created record of `event`; test events give no results."""
    records = parse_s3_event(event)
    logger.info(
        "event received", extra={"records": len(records), "request_id": getattr(context, "aws_request_id", None)}
    )
    if not records:
        return {"results": []}
    return {"results": [result.as_dict() for result in process(records)]}
