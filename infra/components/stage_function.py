"""A pipeline Lambda with everything it owns: code, role, log group, source queue and dead-letter queue."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from infra.config import LOG_RETENTION_DAYS, PipelineConfig
from infra.nag import acknowledge, render_intrinsic
from infra.pipeline import BucketRole, Handler, QueueSettings, handler_environment

LAMBDAS_DIR = Path(__file__).resolve().parents[2] / "lambdas"
RUNTIME = lambda_.Runtime.PYTHON_3_14
ARCHITECTURE = lambda_.Architecture.X86_64
# The handlers use AWS Lambda Powertools (EMF metrics, SQS partial batch responses), which the Lambda runtime
# does not include. AWS publishes each release as a layer in every region and names its ARN in a public SSM
# parameter: the release the tests run against (requirements-dev.txt), resolved at deploy time.
POWERTOOLS_VERSION = "3.37.0"
POWERTOOLS_PARAMETER = f"/aws/service/powertools/python/{ARCHITECTURE.name}/{RUNTIME.name}/{POWERTOOLS_VERSION}"
# EventBridge and the schedule invoke asynchronously: two retries, then the event goes to the dead-letter queue.
ASYNC_RETRY_ATTEMPTS = 2
# An event older than this is no longer worth retrying; it goes to the dead-letter queue.
MAX_EVENT_AGE = Duration.hours(6)
# Dead-letter messages stay 14 days (SQS's maximum) so a fix can be replayed later.
DLQ_RETENTION = Duration.days(14)
# A source queue keeps messages as long as its dead-letter queue does: SQS counts a message's age from its
# first enqueue, even after a redrive, so a shorter retention here would only drop uploads sooner, unseen.
SOURCE_QUEUE_RETENTION = DLQ_RETENTION
# AWS's rule for SQS event sources: visibility timeout at least six times the function timeout (no batching
# window here), so a batch that Lambda retries after throttling is not handed to a second function meanwhile.
VISIBILITY_TIMEOUT_FACTOR = 6


class StageFunction(Construct):
    """One pipeline stage's Lambda function, built from `lambdas/<handler>/`.

    The asset is the whole `lambdas/` folder minus the other handlers, so each function
    carries the shared `pipeline_common` package. The role has no managed policy:
    the function may write to its own log group, send to its own dead-letter queue,
    consume its own source queue (`add_source_queue`), and do what `allow()` adds, nothing else.
    No reserved concurrency: the source queue's event source mapping bounds it, and a reservation
    fails the deploy on accounts with the default 10 concurrent executions.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        handler: Handler,
        config: PipelineConfig,
        bucket_names: Mapping[BucketRole, str],
        ledger_table: str,
        timeout: Duration,
        memory_mb: int,
        description: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.handler = handler
        self.removal = RemovalPolicy.DESTROY if config.destroy_on_removal else RemovalPolicy.RETAIN
        self.source_queue: sqs.Queue | None = None
        self._acknowledged: set[str] = set()
        others = [other.value for other in Handler if other is not handler]
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=retention_days(config.log_retention_days),
            removal_policy=self.removal,
        )
        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetterQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=DLQ_RETENTION,
            removal_policy=self.removal,
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
            architecture=ARCHITECTURE,
            layers=[powertools_layer(self)],
            description=description,
            # Exactly what local mode gives the handler too: one definition in infra/pipeline.py.
            environment=handler_environment(handler, config, bucket_names, ledger_table),
            timeout=timeout,
            memory_size=memory_mb,
            role=self.role,
            log_group=self.log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            retry_attempts=ASYNC_RETRY_ATTEMPTS,
            max_event_age=MAX_EVENT_AGE,
            on_failure=destinations.SqsDestination(self.dead_letter_queue),
        )
        self.log_group.grant_write(self.role)
        acknowledge(
            self.dead_letter_queue,
            "AwsSolutions-SQS3",
            "This queue is itself the stage's dead-letter queue (the source queue's redrive target and the "
            "Lambda on-failure destination of asynchronous invocations); a further one would have nothing to catch.",
        )

    def add_source_queue(self, settings: QueueSettings) -> sqs.Queue:
        """The queue S3 notifies for this stage, read by an event source mapping; made once per stage.

        A message the function fails on `max_receive_count` times moves to the stage's dead-letter
        queue as it is (a raw S3 event notification), where `make replay` finds it.
        """
        if self.source_queue is not None:
            raise ValueError(f"{self.handler.value} already has a source queue")
        timeout = self.function.timeout
        assert timeout is not None  # always set in __init__
        self.source_queue = sqs.Queue(
            self,
            "SourceQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            visibility_timeout=Duration.seconds(VISIBILITY_TIMEOUT_FACTOR * timeout.to_seconds()),
            retention_period=SOURCE_QUEUE_RETENTION,
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dead_letter_queue, max_receive_count=settings.max_receive_count
            ),
            removal_policy=self.removal,
        )
        # s3n.SqsDestination lets S3 send from the bucket's ARN only, and a bucket ARN names no account: a bucket
        # of that name in another account (after ours is deleted) must not reach the queue (AWS's S3 -> SQS example).
        self.source_queue.add_to_resource_policy(
            iam.PolicyStatement(
                sid="DenyS3NotificationsFromOtherAccounts",
                effect=iam.Effect.DENY,
                principals=[iam.ServicePrincipal("s3.amazonaws.com")],
                actions=["sqs:SendMessage"],
                resources=[self.source_queue.queue_arn],
                conditions={"StringNotEquals": {"aws:SourceAccount": Stack.of(self).account}},
            )
        )
        self.function.add_event_source(
            event_sources.SqsEventSource(
                self.source_queue,
                batch_size=settings.batch_size,
                max_concurrency=settings.max_concurrency,
                # The handler names the records it failed on: only those are retried, never the whole batch.
                report_batch_item_failures=True,
            )
        )
        return self.source_queue

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


def powertools_layer(scope: Construct) -> lambda_.ILayerVersion:
    """AWS's Powertools layer for this runtime and architecture, one per stack."""
    stack = Stack.of(scope)
    existing = stack.node.try_find_child("PowertoolsLayer")
    if existing is not None:
        return existing  # type: ignore[return-value]
    arn = ssm.StringParameter.value_for_string_parameter(stack, POWERTOOLS_PARAMETER)
    return lambda_.LayerVersion.from_layer_version_arn(stack, "PowertoolsLayer", arn)


# RetentionDays lists CloudWatch's allowed periods in ascending order, INFINITE last.
_RETENTION = dict(
    zip(LOG_RETENTION_DAYS, [item for item in logs.RetentionDays if item.name != "INFINITE"], strict=True)
)


def retention_days(days: int) -> logs.RetentionDays:
    """The RetentionDays member for a day count that config has already validated."""
    return _RETENTION[days]
