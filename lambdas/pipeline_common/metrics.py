"""CloudWatch metrics in the Embedded Metric Format: one JSON log line per data point, no API call.

Lambda sends stdout to CloudWatch Logs, which turns `_aws`-tagged lines into metrics in
`METRICS_NAMESPACE`. The names and dimensions are what InfraStack's dashboard graphs:
`Outcomes` (Function, Outcome), `ErrorRecords` (Code) and `StageSeconds` (Stage).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

DEFAULT_NAMESPACE = "SpeechToImage"


class Metrics:
    """Emits the pipeline's metrics for one function."""

    def __init__(
        self,
        function: str,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Metrics of `function` in `namespace`, written to `stream` (stdout by default)."""
        self.function = function
        self.namespace = namespace
        self._stream = stream
        self._clock = clock

    def outcome(self, outcome: str) -> None:
        """One event ended with `outcome` (started, generated, duplicate, superseded, ...)."""
        self._emit("Outcomes", 1, "Count", {"Function": self.function, "Outcome": outcome})

    def error_record(self, code: str) -> None:
        """An error record with `code` became an upload's result (or an internal-error record was written)."""
        self._emit("ErrorRecords", 1, "Count", {"Code": code})

    def stage_seconds(self, stage: str, seconds: float) -> None:
        """How long an upload spent in `stage` (transcribe, generate, total)."""
        self._emit("StageSeconds", round(seconds, 3), "Seconds", {"Stage": stage})

    def _emit(self, name: str, value: float, unit: str, dimensions: Mapping[str, str]) -> None:
        document: dict[str, Any] = {
            "_aws": {
                "Timestamp": int(self._clock() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": self.namespace,
                        "Dimensions": [list(dimensions)],
                        "Metrics": [{"Name": name, "Unit": unit}],
                    }
                ],
            },
            **dimensions,
            name: value,
        }
        stream = self._stream or sys.stdout
        stream.write(json.dumps(document) + "\n")
        stream.flush()
