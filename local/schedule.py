"""Scheduled invocations, locally: the EventBridge Scheduled Event, and a timer that stands in for the schedule."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)


def scheduled_event(account: str, region: str, rule: str = "s2i-local-sweeper") -> dict[str, Any]:
    """The event an EventBridge schedule sends its target."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{account}:rule/{rule}"],
        "detail": {},
    }


class Timer:
    """Calls `target` every `interval_s` seconds on its own thread until `stop()`; a failure is logged."""

    def __init__(self, interval_s: float, target: Callable[[], Any], *, name: str) -> None:
        """Start at once; the first call comes after one interval, as a schedule's first run."""
        self._interval_s = interval_s
        self._target = target
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._thread.start()

    def stop(self) -> None:
        """Stop; a call in progress finishes first."""
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._target()
            except Exception:
                log.exception("the scheduled call failed")
