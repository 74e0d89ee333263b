"""CloudWatch metrics in the Embedded Metric Format, through AWS Lambda Powertools: a log line, no API call.

Lambda sends stdout to CloudWatch Logs, which turns EMF lines into metrics in `METRICS_NAMESPACE`.
The names and dimensions are what InfraStack's dashboard graphs: `Outcomes` (Function, Outcome),
`ErrorRecords` (Code) and `StageSeconds` (Stage). Each data point has its own dimensions, hence
`single_metric` (flushed at once) rather than a shared `Metrics` object.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_lambda_powertools.metrics import MetricUnit, single_metric

DEFAULT_NAMESPACE = "SpeechToImage"


class Metrics:
    """Emits the pipeline's metrics for one function."""

    def __init__(self, function: str, namespace: str = DEFAULT_NAMESPACE) -> None:
        """Metrics of `function` in `namespace`."""
        self.function = function
        self.namespace = namespace

    def outcome(self, outcome: str) -> None:
        """One event ended with `outcome` (started, generated, duplicate, superseded, internal-error, ...)."""
        self._emit("Outcomes", 1, MetricUnit.Count, {"Function": self.function, "Outcome": outcome})

    def error_record(self, code: str) -> None:
        """An error record with `code` was written (a final result, or a record before a retry)."""
        self._emit("ErrorRecords", 1, MetricUnit.Count, {"Code": code})

    def stage_seconds(self, stage: str, seconds: float) -> None:
        """How long an upload spent in `stage` (transcribe, generate, total)."""
        self._emit("StageSeconds", round(seconds, 3), MetricUnit.Seconds, {"Stage": stage})

    def _emit(self, name: str, value: float, unit: MetricUnit, dimensions: Mapping[str, str]) -> None:
        with single_metric(name=name, unit=unit, value=value, namespace=self.namespace) as metric:
            for dimension, dimension_value in dimensions.items():
                metric.add_dimension(name=dimension, value=dimension_value)
