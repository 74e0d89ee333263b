"""SageMaker endpoint metrics by endpoint name, for the endpoint's own alarms and InfraStack's dashboard."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch

NAMESPACE = "AWS/SageMaker"
# The one production variant; SageMaker's invocation metrics are per EndpointName and VariantName.
VARIANT_NAME = "AllTraffic"
# Asynchronous inference publishes its queue metrics with the EndpointName dimension ONLY; a VariantName
# (or the `Endpoint`/`Variant` names some samples use) matches no data and the alarm never fires.
ENDPOINT_ONLY_METRICS = frozenset(
    {
        "ApproximateBacklogSize",
        "ApproximateBacklogSizePerInstance",
        "ApproximateAgeOfOldestRequest",
        "HasBacklogWithoutCapacity",
    }
)


def endpoint_metric(
    endpoint_name: str, metric_name: str, *, statistic: str, period: Duration, label: str | None = None
) -> cloudwatch.Metric:
    """An AWS/SageMaker metric of the endpoint, with the dimensions SageMaker publishes it under."""
    dimensions = {"EndpointName": endpoint_name}
    if metric_name not in ENDPOINT_ONLY_METRICS:
        dimensions["VariantName"] = VARIANT_NAME
    return cloudwatch.Metric(
        namespace=NAMESPACE,
        metric_name=metric_name,
        dimensions_map=dimensions,
        statistic=statistic,
        period=period,
        label=label,
    )
