"""One CloudWatch dashboard: what the pipeline did (the handlers' EMF metrics) and what waits in its queues."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from constructs import Construct

from infra.components.endpoint_metrics import endpoint_metric
from infra.components.stage_function import StageFunction
from infra.pipeline import METRICS_NAMESPACE, Handler

PERIOD = Duration.minutes(5)
WIDTH = 12  # two widgets per row (the grid is 24 wide)
HEIGHT = 6
# Every error record counts under its code; SEARCH finds each code the handlers ever emitted, so a new
# code appears on the dashboard without a deploy.
ERRORS_BY_CODE = f"SEARCH('{{{METRICS_NAMESPACE},Code}} MetricName=\"ErrorRecords\"', 'Sum', {PERIOD.to_seconds()})"
# `total` is upload to result; the others are the two slow steps inside it.
STAGES = ("transcribe", "generate", "total")


def outcome(handler: Handler, name: str, label: str | None = None) -> cloudwatch.Metric:
    """How often a handler ended with this outcome (the EMF metric `Outcomes`, Sum per period)."""
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name="Outcomes",
        dimensions_map={"Function": handler.value, "Outcome": name},
        statistic="Sum",
        period=PERIOD,
        label=label or f"{handler.value} {name}",
    )


def stage_seconds(stage: str, percentile: str) -> cloudwatch.Metric:
    """How long uploads spent in one stage (the EMF metric `StageSeconds`) at a percentile such as p50."""
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name="StageSeconds",
        dimensions_map={"Stage": stage},
        statistic=percentile,
        period=PERIOD,
        label=f"{stage} {percentile}",
    )


class PipelineDashboard(Construct):
    """Uploads, images, errors by code, repeats, stage times, queue depths and Lambda health, one page."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        stages: Mapping[Handler, StageFunction],
        async_endpoint: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        # No dashboard name: CloudFormation generates one, so two deployments never collide.
        self.dashboard = cloudwatch.Dashboard(self, "Dashboard", default_interval=Duration.hours(24))
        trigger, invoke_sd = Handler.TRANSCRIBE_TRIGGER, Handler.INVOKE_SD
        self.dashboard.add_widgets(
            _graph(
                "Uploads",
                [outcome(trigger, "started", "started"), outcome(trigger, "rejected", "rejected")],
            ),
            _graph(
                "Images generated",
                [outcome(handler, "generated", f"{handler.value} generated") for handler in (invoke_sd,)]
                + ([outcome(Handler.ASYNC_RESULT, "generated", "async_result generated")] if async_endpoint else []),
            ),
        )
        self.dashboard.add_widgets(
            _graph(
                "Error records by code",
                [cloudwatch.MathExpression(expression=ERRORS_BY_CODE, using_metrics={}, label="", period=PERIOD)],
            ),
            _graph(
                "Repeats, superseded uploads and internal errors",
                [
                    outcome(handler, name)
                    for handler in stages
                    for name in ("duplicate", "superseded", "internal-error")
                    if handler is not Handler.SWEEPER
                ]
                + [outcome(Handler.SWEEPER, "stuck")],
            ),
        )
        self.dashboard.add_widgets(
            _graph(
                "Seconds per stage (p50, p90)",
                [stage_seconds(stage, percentile) for stage in STAGES for percentile in ("p50", "p90")],
            ),
            _graph(
                "Lambda errors and throttles",
                [stage.function.metric_errors(period=PERIOD, label=f"{h.value} errors") for h, stage in stages.items()]
                + [
                    stage.function.metric_throttles(period=PERIOD, label=f"{h.value} throttles")
                    for h, stage in stages.items()
                ],
            ),
        )
        queues = [(f"{h.value} queue", stage.source_queue) for h, stage in stages.items() if stage.source_queue]
        queues += [(f"{h.value} dead letters", stage.dead_letter_queue) for h, stage in stages.items()]
        self.dashboard.add_widgets(
            _graph(
                "Messages waiting",
                [
                    queue.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum", label=name)
                    for name, queue in queues
                ],
            ),
            _graph(
                "Age of the oldest message (seconds)",
                [
                    queue.metric_approximate_age_of_oldest_message(period=PERIOD, statistic="Maximum", label=name)
                    for name, queue in queues
                ],
            ),
        )

        if async_endpoint:
            self._add_async_endpoint(async_endpoint)

    def _add_async_endpoint(self, endpoint_name: str) -> None:
        """The async endpoint's queue, the age of its oldest request, and its failures (by endpoint name).

        By name, not by reference: the endpoint lives in the other stack, which may be destroyed and
        redeployed alone; a cross-stack reference would tie the two together.
        """
        self.dashboard.add_widgets(
            _graph(
                "Async endpoint: requests waiting (and waiting with no instance)",
                [
                    endpoint_metric(
                        endpoint_name, "ApproximateBacklogSize", statistic="Maximum", period=PERIOD, label="backlog"
                    ),
                    endpoint_metric(
                        endpoint_name,
                        "ApproximateBacklogSizePerInstance",
                        statistic="Average",
                        period=PERIOD,
                        label="backlog per instance",
                    ),
                    endpoint_metric(
                        endpoint_name,
                        "HasBacklogWithoutCapacity",
                        statistic="Maximum",
                        period=PERIOD,
                        label="backlog, no instance",
                    ),
                ],
            ),
            _graph(
                "Async endpoint: age of the oldest request (seconds)",
                [
                    endpoint_metric(
                        endpoint_name,
                        "ApproximateAgeOfOldestRequest",
                        statistic="Maximum",
                        period=PERIOD,
                        label="oldest request",
                    )
                ],
            ),
        )
        self.dashboard.add_widgets(
            _graph(
                "Async endpoint: failed invocations and notifications",
                [
                    endpoint_metric(endpoint_name, name, statistic="Sum", period=PERIOD, label=name)
                    for name in ("InvocationFailures", "NotificationFailures")
                ],
            ),
        )


def _graph(title: str, metrics: list[cloudwatch.IMetric]) -> cloudwatch.GraphWidget:
    """A line graph of `metrics`, half the dashboard wide."""
    return cloudwatch.GraphWidget(title=title, left=metrics, width=WIDTH, height=HEIGHT)
