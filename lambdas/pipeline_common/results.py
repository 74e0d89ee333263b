"""One upload, one result: the only code that writes an upload's final result, and decides whether it may.

A result (the image set, or `errors/<key>.json`) is written only for the upload the ledger names as
current, under the key's writer lock, and committed with a conditional ledger update; when a newer upload
took the key meanwhile, the writes are undone and the newer upload's own result follows. The lock keeps
two writers of a key from interleaving: a writer of an older upload finishes or undoes before the next
one writes. docs/CONTRACTS.md has the protocol.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline_common.aws_errors import is_throttling
from pipeline_common.entry import remaining_seconds
from pipeline_common.error_records import INTERNAL_ERROR, ResultStore, internal_error_action, utc_now
from pipeline_common.keys import job_name
from pipeline_common.ledger import DONE, FAILED, TRANSCRIBING, DynamoLedger, Entry, LedgerError
from pipeline_common.metrics import Metrics

logger = logging.getLogger(__name__)

COMMITTED = "committed"
SUPERSEDED = "superseded"
DUPLICATE = "duplicate"
UNATTRIBUTABLE = "unattributable"
# Writes of a result take well under a second; a held lock is waited for this long before the event is
# retried later (a transient failure): the holder is a writer of an older upload finishing or undoing.
LOCK_WAIT_S = 5.0
# Beyond the invocation's own deadline: a request sent just before a timeout may still land at S3.
LOCK_MARGIN_S = 30.0
DEFAULT_REMAINING_S = 900.0


class LedgerBusyError(RuntimeError):
    """Another writer holds the key's lock for longer than we wait: a transient failure, retried later."""


@dataclass(frozen=True)
class Committed:
    """What a commit did: `committed`, or nothing because the upload is `superseded` or already `duplicate`."""

    outcome: str
    key: str | None = None


@dataclass(frozen=True)
class ImageSet:
    """The three objects of a finished image: PNG, HTML page, and metadata (written last)."""

    png: bytes
    html: str
    metadata: bytes


class Results:
    """Commits an upload's result through the ledger; one instance per invocation."""

    def __init__(
        self,
        ledger: DynamoLedger,
        store: ResultStore,
        *,
        function: str,
        metrics: Metrics,
        request_id: str | None = None,
        remaining_s: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Write through `store` under `ledger`'s rules; `remaining_s` is the invocation's time left."""
        self.ledger = ledger
        self.store = store
        self.function = function
        self.metrics = metrics
        self.request_id = request_id
        self._remaining_s = remaining_s or (lambda: DEFAULT_REMAINING_S)
        self._clock = clock
        self._sleep = sleep

    @classmethod
    def for_invocation(cls, function: str, settings: Any, *, s3: Any, dynamodb: Any, context: Any) -> Results:
        """The committer a handler uses for one invocation (settings: a `CommonSettings`)."""
        return cls(
            DynamoLedger(dynamodb, settings.ledger_table),
            ResultStore.of(s3, settings),
            function=function,
            metrics=Metrics(function, settings.metrics_namespace),
            request_id=getattr(context, "aws_request_id", None),
            remaining_s=remaining_seconds(context),
        )

    def current_for_job(
        self, key: str, job: str | None, prefix: str, *, written_at: datetime | None = None
    ) -> tuple[Entry | None, str | None]:
        """The key's entry, and None when `job` belongs to its current upload, which has no result yet.

        Otherwise the reason to skip: `superseded` (another upload is current, or the ledger never saw this
        one), `duplicate` (the upload has its result) or `unattributable`. A `job` of None (a transcript too
        damaged to name its job) is the current upload's only if that upload waits for its transcript and the
        transcript was written (`written_at`) after the upload was received: an older upload's damaged
        transcript must not fail the newer upload.
        """
        entry = self.ledger.get(key)
        if entry is None:
            return None, SUPERSEDED
        if job is None:
            # S3 times objects to the second: a transcript of the same second as the upload may be its own.
            received = _parse_time(entry.received_at).replace(microsecond=0)
            if entry.stage != TRANSCRIBING or written_at is None or written_at < received:
                logger.error(
                    "a transcript that names no job cannot be matched to the upload; skipped", extra={"key": key}
                )
                return entry, UNATTRIBUTABLE
        elif job_name(key, entry.upload_id, prefix) != job:
            return entry, SUPERSEDED
        if entry.final:
            return entry, DUPLICATE
        return entry, None

    def lease_until(self) -> float:
        """Until when a lock or lease taken now may be held: this invocation cannot outlive it."""
        return self._clock() + self._remaining_s() + LOCK_MARGIN_S

    def commit_error(
        self,
        entry: Entry,
        *,
        stage: str,
        code: str,
        reason: str,
        action: str,
        details: Mapping[str, Any] | None = None,
        expect_updated_at: str | None = None,
    ) -> Committed:
        """Make an error record the upload's result (removing any older image set under its key)."""
        error_key = self.store.error_key(entry.key)

        def write() -> None:
            self.store.write_error(
                entry.key,
                stage=stage,
                error=code,
                reason=reason,
                action=action,
                details=details,
                request_id=self.request_id,
            )

        committed = self._commit(
            entry,
            write=write,
            undo=lambda: self.store.remove_error_record(entry.key),
            stage=FAILED,
            result={"kind": "error", "key": error_key, "code": code, "stage": stage},
            expect_updated_at=expect_updated_at,
        )
        if committed.outcome == COMMITTED:
            self.metrics.error_record(code)
        return committed

    def commit_images(self, entry: Entry, images: ImageSet) -> Committed:
        """Make the image set the upload's result (removing any error record under its key)."""
        keys = self.store.image_keys(entry.key)
        return self._commit(
            entry,
            write=lambda: self.store.write_image_set(
                entry.key, png=images.png, html=images.html, metadata=images.metadata
            ),
            undo=lambda: self.store.remove_image_set(entry.key),
            stage=DONE,
            result={"kind": "image", "key": keys.png},
        )

    def record_retry(
        self,
        entry: Entry,
        *,
        stage: str,
        failure: BaseException | None = None,
        code: str = INTERNAL_ERROR,
        reason: str | None = None,
        action: str | None = None,
    ) -> str | None:
        """Best effort, before a retry: a record saying the current upload's processing failed and is retried.

        Only for the current upload, and never over its result. The upload's stage stays where it was, so
        a retry can still finish it and replace the record. Without `reason` the record says what happened in
        plain words; the exception itself goes to the log. Returns the record's key, or None.
        """
        self.metrics.outcome(code)
        if failure is not None:
            logger.error(
                "processing failed; retried",
                exc_info=failure,
                extra={"key": entry.key, "upload_id": entry.upload_id, "stage": stage},
            )
            if is_throttling(failure) or isinstance(failure, LedgerBusyError):
                # Expected in a burst, and over in minutes: the queue retries without telling the user.
                return None
        token = uuid.uuid4().hex
        try:
            self.ledger.acquire_writer(
                entry.key, entry.upload_id, token=token, until=self.lease_until(), clock=self._clock()
            )
        except LedgerError:
            logger.info(
                "no retry record: the upload is no longer current, has its result, or is being written",
                extra={"key": entry.key, "upload_id": entry.upload_id, "stage": stage},
            )
            return None
        except Exception:
            logger.exception("retry record skipped: the ledger could not be reached", extra={"key": entry.key})
            return None
        error_type = type(failure).__name__ if failure is not None else code
        try:
            key = self.store.write_error(
                entry.key,
                stage=stage,
                error=code,
                reason=reason or f"an unexpected {error_type} interrupted {self.function}; it is retried automatically",
                action=action or internal_error_action(self.function),
                details={"error_type": error_type, "retried": True},
                request_id=self.request_id,
            )
            self.ledger.note_internal_error(
                entry.key,
                entry.upload_id,
                token=token,
                note={"key": key, "code": code, "function": self.function, "request_id": self.request_id or ""},
            )
        except Exception:
            logger.exception("retry record could not be written", extra={"key": entry.key})
            self._release(entry.key, token)
            return None
        self.metrics.error_record(code)
        return key

    def _commit(
        self,
        entry: Entry,
        *,
        write: Callable[[], None],
        undo: Callable[[], None],
        stage: str,
        result: Mapping[str, str],
        expect_updated_at: str | None = None,
    ) -> Committed:
        token = uuid.uuid4().hex
        refused = self._lock(entry, token, expect_updated_at)
        if refused is not None:
            return refused
        try:
            write()
        except BaseException:
            # Nothing is committed; whatever was written is replaced by the retry or a newer upload's result.
            self._release(entry.key, token)
            raise
        try:
            self.ledger.commit(entry.key, entry.upload_id, token=token, stage=stage, result=result, now=utc_now())
        except LedgerError as lost:
            # A newer upload took the key while we wrote: take our result back before anyone else may write.
            logger.info(
                "upload superseded while its result was written; undone",
                extra={"key": entry.key, "upload_id": entry.upload_id, "current": _upload_of(lost.entry)},
            )
            undo()
            self._release(entry.key, token)
            return Committed(SUPERSEDED)
        except BaseException:
            # Not committed (the ledger could not be reached): the retry writes the same result again.
            self._release(entry.key, token)
            raise
        return Committed(COMMITTED, result["key"])

    def _lock(self, entry: Entry, token: str, expect_updated_at: str | None) -> Committed | None:
        """Take the key's writer lock; a `Committed` saying why not when the upload cannot have a result now."""
        waited, delay = 0.0, 0.05
        while True:
            try:
                self.ledger.acquire_writer(
                    entry.key,
                    entry.upload_id,
                    token=token,
                    until=self.lease_until(),
                    clock=self._clock(),
                    expect_updated_at=expect_updated_at,
                )
                return None
            except LedgerError as refused:
                current = refused.entry
                if current is None or not current.is_upload(entry.upload_id):
                    return Committed(SUPERSEDED)
                if current.final:
                    return Committed(DUPLICATE, (current.result or {}).get("key"))
                if expect_updated_at is not None and current.updated_at != expect_updated_at:
                    # The sweeper's view is out of date: the upload moved on since it was read.
                    return Committed(SUPERSEDED)
                if waited >= LOCK_WAIT_S:
                    raise LedgerBusyError(
                        f"the results of {entry.key!r} are being written by another invocation; retried later"
                    ) from None
                self._sleep(delay)
                waited += delay
                delay = min(delay * 2, 1.0)

    def _release(self, key: str, token: str) -> None:
        try:
            self.ledger.release_writer(key, token=token)
        except Exception:
            # The lock runs out on its own; the original failure matters more.
            logger.exception("writer lock could not be released", extra={"key": key})


def _parse_time(iso: str) -> datetime:
    """A ledger time (ISO-8601 UTC with a Z) as an aware datetime; the epoch when it cannot be read."""
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return datetime.fromtimestamp(0, UTC)


def _upload_of(entry: Entry | None) -> str | None:
    return entry.upload_id if entry is not None else None
