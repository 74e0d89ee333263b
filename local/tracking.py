"""What local mode observes while the pipeline runs: in-flight work, progress and per-upload traces.

The pipeline is event driven (S3 -> queue -> handler -> Transcribe -> S3 -> queue -> handler), so "done"
means "nothing left in flight". Every stage marks its work busy before the stage that caused it marks
its own work finished, so the count never drops to zero while an upload is still moving.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Activity:
    """Counts work in flight and wakes waiters the moment it drops to zero (no polling interval)."""

    def __init__(self) -> None:
        self._busy = 0
        self._changed = threading.Condition()

    def begin(self) -> None:
        """One more unit of work is in flight."""
        with self._changed:
            self._busy += 1

    def end(self) -> None:
        """One unit of work has finished."""
        with self._changed:
            self._busy -= 1
            self._changed.notify_all()

    @property
    def busy(self) -> int:
        """How many units of work are in flight."""
        return self._busy

    def wait_until_idle(self, confirm: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until nothing is in flight and `confirm()` agrees (queues empty); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                if self._busy == 0:
                    # Messages waiting in a queue are not counted here; `confirm` asks the queues.
                    self._changed.release()
                    try:
                        if confirm():
                            return True
                    finally:
                        self._changed.acquire()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                # Woken by `end()`; the short cap only covers messages that arrive while nothing is busy.
                self._changed.wait(timeout=min(remaining, 0.05) if self._busy == 0 else remaining)


@dataclass(frozen=True)
class Progress:
    """A step a person can follow: which upload, which stage, what happened."""

    key: str
    stage: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


ProgressListener = Callable[[Progress], None]


@dataclass
class EndpointCall:
    """One request the local SageMaker endpoint served."""

    endpoint_name: str
    received_at: float
    finished_at: float = 0.0
    status: int = 0
    inference_s: float = 0.0
    # The handler process that called (its `/_caller/<id>` path prefix); "" for other clients.
    caller: str = ""
    # The Transcribe job (so the upload) the call generated for, when local mode could tell.
    job_name: str = ""
    # The upload it generated for; an asynchronous request keeps it from submission to its run.
    key: str = ""
    # When the model took the request (an async one waits in the endpoint's queue, cold start included, first).
    started_at: float = 0.0
    # InvokeEndpointAsync's InferenceId ("" for a real-time call).
    inference_id: str = ""


@dataclass
class Trace:
    """Everything local mode saw happen for one upload, for the timing breakdown."""

    key: str
    uploaded_at: float = 0.0
    upload_s: float = 0.0
    etag: str = ""
    # The input object's version: the upload's identity (the ledger's upload_id).
    version_id: str = ""
    invocations: list[Any] = field(default_factory=list)
    job: Any = None
    endpoint_calls: list[EndpointCall] = field(default_factory=list)

    def invocations_of(self, handler_value: str) -> list[Any]:
        """The invocations of one handler (by `Handler.value`) for this upload."""
        return [item for item in self.invocations if item.handler == handler_value]


class Traces:
    """Traces by source key; a new upload of the same key starts a new trace."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, Trace] = {}

    def new(self, key: str) -> Trace:
        """Start a fresh trace for an upload."""
        with self._lock:
            trace = self._by_key[key] = Trace(key=key)
            return trace

    def get(self, key: str) -> Trace:
        """The trace of a source key (created if local mode did not upload it itself)."""
        with self._lock:
            return self._by_key.setdefault(key, Trace(key=key))
