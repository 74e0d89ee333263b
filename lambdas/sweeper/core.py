"""Give every upload whose ledger stage has not moved for too long an error record: nothing waits silently."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline_common.ledger import GENERATING, RECEIVED, TRANSCRIBING, WAITING, Entry
from pipeline_common.results import COMMITTED, Results
from pipeline_common.settings import CommonSettings, as_int, require

logger = logging.getLogger(__name__)

FUNCTION = "sweeper"
STUCK = "stuck"
STILL_WAITING = "waiting"
# The error record's stage for each ledger stage an upload can be stuck in.
_RECORD_STAGE = {RECEIVED: "validate", TRANSCRIBING: "transcribe", GENERATING: "generate", WAITING: "generate"}
_WHAT_HAPPENED = {
    RECEIVED: "the recording was received but its transcription never started",
    TRANSCRIBING: "the transcription never delivered a transcript (or its event was lost)",
    GENERATING: "the image generation never finished",
    WAITING: "the GPU endpoint never answered the queued request (it expired, or its notification was lost)",
}


@dataclass(frozen=True)
class Settings(CommonSettings):
    """What the sweeper needs from its environment."""

    stuck_after_minutes: int
    pending_index: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and check the variables set by infra/pipeline.py; `SettingsError` names any bad one."""
        return cls(
            **cls.common_from_env(environ),
            stuck_after_minutes=as_int("STUCK_AFTER_MINUTES", require(environ, "STUCK_AFTER_MINUTES"), minimum=1),
            pending_index=require(environ, "LEDGER_PENDING_INDEX"),
        )


class SweepError(RuntimeError):
    """Some stuck uploads could not be recorded; the others were. Raised so the run counts as failed."""


@dataclass(frozen=True)
class Result:
    """What the sweeper did about one stuck upload: `stuck` (recorded) or skipped because it moved on."""

    key: str
    stage: str
    outcome: str
    error_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data."""
        return asdict(self)


def iso(moment: datetime) -> str:
    """`moment` as the ledger writes times: ISO-8601 UTC with milliseconds and a Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sweep(
    *, settings: Settings, results: Results, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> list[Result]:
    """Record every upload stuck longer than `stuck_after_minutes` in one stage; skip those that move meanwhile."""
    cutoff = iso(now() - timedelta(minutes=settings.stuck_after_minutes))
    swept: list[Result] = []
    failed: list[str] = []
    for entry in results.ledger.pending_before(cutoff, index=settings.pending_index):
        try:
            swept.append(_sweep_one(entry, settings, results, clock=now().timestamp()))
        except Exception:
            # One upload that cannot be recorded now must not hide every later one: go on, fail at the end.
            logger.exception("stuck upload not recorded; tried again next run", extra={"key": entry.key})
            failed.append(entry.key)
    logger.info("sweep done", extra={"cutoff": cutoff, "stuck": sum(r.outcome == STUCK for r in swept)})
    if failed:
        raise SweepError(f"{len(failed)} stuck upload(s) could not be recorded: {failed[:10]}")
    return swept


def _sweep_one(entry: Entry, settings: Settings, results: Results, *, clock: float) -> Result:
    if entry.stage == WAITING and entry.lease_until is not None and entry.lease_until > clock:
        # A request still within its TTL (requestTtlMinutes may exceed stuckAfterMinutes) can still be answered.
        logger.info("queued request still within its time to live; not stuck yet", extra={"key": entry.key})
        results.metrics.outcome(STILL_WAITING)
        return Result(entry.key, entry.stage, STILL_WAITING)
    stage = _RECORD_STAGE.get(entry.stage, "validate")
    what = _WHAT_HAPPENED.get(entry.stage, "the upload stopped making progress")
    committed = results.commit_error(
        entry,
        stage=stage,
        code=STUCK,
        reason=f"{what} within {settings.stuck_after_minutes} minutes (stuck since {entry.updated_at})",
        action=(
            "upload the recording again; if uploads keep getting stuck, an operator should check the pipeline's "
            "dead-letter queues and alarms (then run `make replay`)"
        ),
        details={"ledger_stage": entry.stage, "since": entry.updated_at, "job_name": entry.job_name},
        # Only if nothing moved since the index was read: a late event may be finishing it right now.
        expect_updated_at=entry.updated_at,
    )
    outcome = STUCK if committed.outcome == COMMITTED else committed.outcome
    results.metrics.outcome(outcome)
    return Result(entry.key, entry.stage, outcome, committed.key if committed.outcome == COMMITTED else None)
