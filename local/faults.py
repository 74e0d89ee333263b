"""Fault injection for local mode: make a stand-in fail the way its AWS service can, a given number of times.

    runtime.faults.inject("endpoint", "unavailable", times=2)   # two 503s, then the endpoint answers again
    runtime.faults.inject("s3-put", "denied", prefix="images/")  # every image write fails until cleared

The stand-ins (local SageMaker endpoint, embedded S3, local Transcribe) consult this object on every
request; the handlers are the real ones and see only what AWS would send them. Tests use it to prove
that nothing is lost whatever fails; a person can use it to see what a user would get.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

# target -> the kinds of failure it can inject, and what each one does.
KINDS: dict[str, dict[str, str]] = {
    "endpoint": {
        "unavailable": "SageMaker answers 503 ServiceUnavailable (endpoint updating, scaling or overloaded)",
        "error": "the model container answers with an error status (option status=500)",
        "slow": "the model takes `seconds` longer; past the 60 s real-time limit SageMaker cuts the call off",
    },
    "async": {
        "error": "the model answers the queued request with an error status (option status=400): a Failed notification",
        "duplicate-notification": "the request's notification is delivered twice (SNS and SQS deliver at least once)",
        "missing-output": "the Completed notification names an output object that is not there",
        "malformed-output": "the output object is not the model's JSON",
        "test-notification": 'a {"eventName": "TestNotification"} arrives first (as CreateEndpoint sends)',
        "expire": "the request outlives its RequestTTLSeconds in the queue (option notify=True: a Failed notification)",
    },
    "s3-put": {
        "denied": "PutObject fails with 403 AccessDenied (options bucket=, prefix= select the writes)",
    },
    "transcript": {
        "malformed": "the Transcribe job writes a transcript that is not JSON",
    },
    "transcriber": {
        "crash": "the speech recogniser's process dies in the middle of a job",
    },
}


@dataclass
class Fault:
    """One injected failure: which kind, how many more times (None: until cleared), its options."""

    target: str
    kind: str
    remaining: int | None
    options: dict[str, Any] = field(default_factory=dict)
    fired: int = 0


class Faults:
    """The faults waiting to fire, per target; thread-safe (every stand-in runs on its own threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def inject(self, target: str, kind: str, *, times: int | None = 1, **options: Any) -> Fault:
        """Make `target` fail as `kind` the next `times` matching requests (None: until `clear`)."""
        if kind not in KINDS.get(target, {}):
            known = {name: sorted(kinds) for name, kinds in KINDS.items()}
            raise ValueError(f"unknown fault {target}/{kind}; known: {known}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for 'until cleared')")
        fault = Fault(target, kind, times, dict(options))
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, target: str, kinds: tuple[str, ...] | None = None, **request: Any) -> Fault | None:
        """The first fault of `target` (of one of `kinds`) whose options match the request, used up by one."""
        with self._lock:
            for fault in self._faults:
                if fault.target == target and (kinds is None or fault.kind in kinds) and _matches(fault, request):
                    fault.fired += 1
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining == 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def clear(self, target: str | None = None) -> None:
        """Remove every waiting fault (of one target, or all): the stand-in works normally again."""
        with self._lock:
            self._faults = [fault for fault in self._faults if target is not None and fault.target != target]

    def pending(self) -> list[Fault]:
        """The faults still waiting to fire."""
        with self._lock:
            return list(self._faults)


def _matches(fault: Fault, request: dict[str, Any]) -> bool:
    bucket = fault.options.get("bucket")
    prefix = fault.options.get("prefix")
    if bucket is not None and request.get("bucket") != bucket:
        return False
    return prefix is None or str(request.get("key", "")).startswith(prefix)
