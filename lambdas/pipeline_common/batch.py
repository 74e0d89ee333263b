"""Process every record of an event, then fail loudly if any of them failed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from pipeline_common.events import S3Record

logger = logging.getLogger(__name__)

R = TypeVar("R")


class RecordsFailedError(RuntimeError):
    """Some records failed unexpectedly; the others were processed. Raised so Lambda retries."""

    def __init__(self, failures: Sequence[tuple[S3Record, BaseException]], total: int) -> None:
        """Keep the failures; the message names each failed object and its error."""
        self.failures = list(failures)
        listed = "; ".join(f"{record.uri}: {type(error).__name__}: {error}" for record, error in self.failures)
        super().__init__(f"{len(self.failures)} of {total} records failed: {listed}")


def process_each(records: Sequence[S3Record], process: Callable[[S3Record], R]) -> list[R]:
    """Run `process` on every record; raise `RecordsFailedError` at the end if any raised."""
    results: list[R] = []
    failures: list[tuple[S3Record, BaseException]] = []
    for record in records:
        try:
            results.append(process(record))
        except Exception as error:
            # One bad record must not stop the others; the raise below still reaches Lambda.
            logger.exception("record failed", extra={**record.log_context(), "error_type": type(error).__name__})
            failures.append((record, error))
    if failures:
        raise RecordsFailedError(failures, len(records)) from failures[0][1]
    return results
