"""A pipeline Lambda with everything it owns: code, role, log group and dead-letter queue."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import LOG_RETENTION_DAYS, PipelineConfig
from infra.nag import acknowledge, render_intrinsic
from infra.pipeline import BucketRole, Handler, handler_environment

LAMBDAS_DIR = Path(__file__).resolve().parents[2] / "lambdas"
RUNTIME = lambda_.Runtime.PYTHON_3_14
# S3 invokes asynchronously: two retries, then the event goes to the dead-letter queue.
ASYNC_RETRY_ATTEMPTS = 2
# An event older than this is no longer worth retrying; it goes to the dead-letter queue.
MAX_EVENT_AGE = Duration.hours(6)
# Dead-letter messages stay 14 days (SQS's maximum) so a fix can be replayed later.
DLQ_RETENTION = Duration.days(14)


class StageFunction(Construct):
    """One pipeline stage's Lambda function, built from `lambdas/<handler>/`.

    The asset is the whole `lambdas/` folder minus the other handlers, so each function
    carries the shared `pipeline_common` package. The role has no managed policy:
    the function may write to its own log group, send to its own dead-letter queue,
    and do what `allow()` adds, nothing else.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        handler: Handler,
        config: PipelineConfig,
        bucket_names: Mapping[BucketRole, str],
        timeout: Duration,
        memory_mb: int,
        description: str,
        reserved_concurrency: int | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.handler = handler
        self._acknowledged: set[str] = set()
        removal = RemovalPolicy.DESTROY if config.destroy_on_removal else RemovalPolicy.RETAIN
        others = [other.value for other in Handler if other is not handler]
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=retention_days(config.log_retention_days),
            removal_policy=removal,
        )
        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetterQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=DLQ_RETENTION,
            removal_policy=removal,
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"{handler.value}: least privilege for one pipeline stage",
        )
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=RUNTIME,
            code=lambda_.Code.from_asset(
                str(LAMBDAS_DIR),
                exclude=[*others, "**/__pycache__", "**/*.pyc"],
            ),
            handler=handler.entry_point,
            description=description,
            # Exactly what local mode gives the handler too: one definition in infra/pipeline.py.
            environment=handler_environment(handler, config, bucket_names),
            timeout=timeout,
            memory_size=memory_mb,
            role=self.role,
            log_group=self.log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            reserved_concurrent_executions=reserved_concurrency,
            retry_attempts=ASYNC_RETRY_ATTEMPTS,
            max_event_age=MAX_EVENT_AGE,
            on_failure=destinations.SqsDestination(self.dead_letter_queue),
        )
        self.log_group.grant_write(self.role)
        acknowledge(
            self.dead_letter_queue,
            "AwsSolutions-SQS3",
            "This queue is itself the dead-letter destination (Lambda on-failure destination) of the "
            "function's asynchronous invocations; a further dead-letter queue would have nothing to catch.",
        )

    def metric_errors(self, period: Duration) -> cloudwatch.Metric:
        """Invocations that ended in an error (Sum per period); each is retried, then dead-lettered."""
        return self.function.metric_errors(period=period, statistic="Sum")

    def metric_dead_letters(self, period: Duration) -> cloudwatch.Metric:
        """Events waiting in the dead-letter queue (the period's Maximum)."""
        return self.dead_letter_queue.metric_approximate_number_of_messages_visible(period=period, statistic="Maximum")

    def allow(self, action: str, *resources: str, wildcard_reason: str | None = None) -> None:
        """Allow one action on the given scoped ARNs (never a wildcard action).

        A resource pattern (`bucket/prefix/*`) needs `wildcard_reason`, which becomes the
        acknowledgment of cdk-nag's IAM5 finding for exactly that pattern.
        """
        if "*" in action:
            raise ValueError(f"wildcard action {action!r}: name the exact action")
        self.role.add_to_principal_policy(iam.PolicyStatement(actions=[action], resources=list(resources)))
        for resource in resources:
            # cdk-nag names the finding after the resolved ARN, e.g. `<BucketsInputDC6E7815.Arn>/*`.
            rendered = render_intrinsic(Stack.of(self).resolve(resource))
            if "*" in rendered:
                if not wildcard_reason:
                    raise ValueError(f"{action} on a resource pattern needs a wildcard_reason")
                finding = f"AwsSolutions-IAM5[Resource::{rendered}]"
                # Several actions may share one pattern; cdk-nag reports it once, so acknowledge it once.
                if finding not in self._acknowledged:
                    self._acknowledged.add(finding)
                    acknowledge(self.role, finding, wildcard_reason)


# RetentionDays lists CloudWatch's allowed periods in ascending order, INFINITE last.
_RETENTION = dict(
    zip(LOG_RETENTION_DAYS, [item for item in logs.RetentionDays if item.name != "INFINITE"], strict=True)
)


def retention_days(days: int) -> logs.RetentionDays:
    """The RetentionDays member for a day count that config has already validated."""
    return _RETENTION[days]
