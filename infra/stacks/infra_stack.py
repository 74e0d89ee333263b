"""InfraStack: buckets, the upload ledger, the pipeline stages, the events between them, and what watches them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_cdk import CfnOutput, Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_events as events
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from constructs import Construct

from infra.components.alarms import ALARM_PERIOD, AlarmTopic, notify_alarm
from infra.components.async_result import AsyncResultRecorder, AsyncResultTopics
from infra.components.dashboard import PipelineDashboard
from infra.components.ledger import UploadLedger
from infra.components.stage_function import StageFunction
from infra.components.stages import (
    DeadlineSweeper,
    ImageGenerator,
    TranscribeFailureRecorder,
    TranscribeTrigger,
    event_target,
)
from infra.components.storage import PipelineBuckets
from infra.config import PipelineConfig
from infra.nag import acknowledge
from infra.pipeline import BucketRole, Handler, event_routes, routes

# A transcript waiting this long in invoke_sd's queue means the endpoint cannot keep up (or is down):
# the uploads behind it will be swept as stuck unless someone looks.
SOURCE_QUEUE_AGE_ALARM = Duration.minutes(30)


class InfraStack(Stack):
    """Everything except the GPU endpoint: it deploys before any model exists."""

    def __init__(self, scope: Construct, construct_id: str, *, config: PipelineConfig, **kwargs: Any) -> None:
        super().__init__(
            scope, construct_id, description="speech-to-image: buckets and the event-driven pipeline", **kwargs
        )
        self.buckets = PipelineBuckets(self, "Buckets", config=config)
        self.ledger = UploadLedger(self, "Ledger", config=config)
        parts = {"config": config, "buckets": self.buckets, "ledger": self.ledger}
        self.transcribe_trigger = TranscribeTrigger(self, "TranscribeTrigger", **parts)
        self.image_generator = ImageGenerator(self, "ImageGenerator", **parts)
        self.transcribe_failure_recorder = TranscribeFailureRecorder(self, "TranscribeFailureRecorder", **parts)
        self.sweeper = DeadlineSweeper(self, "Sweeper", **parts)
        # Async mode only: SageMaker reports each result to SNS, and this stage turns it into the upload's result.
        self.async_result_recorder = (
            AsyncResultRecorder(self, "AsyncResultRecorder", **parts) if config.is_async else None
        )
        self.stages: dict[Handler, StageFunction] = {
            stage.handler: stage
            for stage in (
                self.transcribe_trigger.stage,
                self.image_generator.stage,
                self.transcribe_failure_recorder.stage,
                self.sweeper.stage,
            )
        }
        if self.async_result_recorder is not None:
            self.stages[Handler.ASYNC_RESULT] = self.async_result_recorder.stage
        # S3 notifies a queue, not the function: a burst of uploads waits there for the event source mapping
        # (bounded by MaximumConcurrency) instead of being throttled, retried twice and dead-lettered.
        for route in routes(config):
            stage = self.stages[route.handler]
            destination = s3n.SqsDestination(stage.source_queue or stage.add_source_queue(route.queue))
            # One notification per suffix (S3 allows one suffix per filter); a route without any gets one for all keys.
            for suffix in route.suffixes or (None,):
                key_filters = (
                    [s3.NotificationKeyFilter(prefix=route.prefix or None, suffix=suffix)]
                    if route.prefix or suffix
                    else []
                )
                self.buckets[route.bucket].add_event_notification(
                    s3.EventType.OBJECT_CREATED, destination, *key_filters
                )
        for event_route in event_routes(config):
            stage = self.stages[event_route.handler]
            events.Rule(
                self,
                event_route.name,
                description=f"speech-to-image: {event_route.name} events to {event_route.handler.value}",
                event_pattern=_event_pattern(event_route.pattern),
                targets=[event_target(stage)],
            )

        self.alarm_topic = AlarmTopic(self, "Alarms", config=config)
        for stage in self.stages.values():
            self._alarm_on_failures(stage)
        self._alarm_on_backlog(self.image_generator.stage)
        self.dashboard = PipelineDashboard(
            self, "Dashboard", stages=self.stages, async_endpoint=config.endpoint_name if config.is_async else None
        )

        self._acknowledge_cdk_internals()
        self.model_bucket = self.buckets[BucketRole.MODEL]
        self.transcript_bucket = self.buckets[BucketRole.TRANSCRIPTS]
        outputs = {
            "InputBucketName": (self.buckets[BucketRole.INPUT].bucket_name, "Upload recordings here"),
            "TranscriptBucketName": (self.buckets[BucketRole.TRANSCRIPTS].bucket_name, "Amazon Transcribe output"),
            "OutputBucketName": (self.buckets[BucketRole.OUTPUT].bucket_name, "Images, metadata, pages, error records"),
            "ModelBucketName": (self.model_bucket.bucket_name, "Upload model.tar.gz here (make upload-model)"),
            "AccessLogBucketName": (self.buckets.access_logs.bucket_name, "S3 server access logs (kept on destroy)"),
            "ModelDataKey": (config.model_data_key, "Key of the model archive in the model bucket"),
            "EndpointName": (config.endpoint_name, "SageMaker endpoint invoke_sd calls"),
            "AlarmTopicArn": (self.alarm_topic.topic.topic_arn, "SNS topic every alarm notifies (subscribe here)"),
        }
        # `make replay` finds the queues by these output names: `<Stage>DeadLetterQueueUrl` holds what failed,
        # `<Stage>QueueUrl` is where a redriven S3 event goes back to.
        for handler, stage in self.stages.items():
            camel = "".join(part.capitalize() for part in handler.value.split("_"))
            outputs[f"{camel}DeadLetterQueueUrl"] = (
                stage.dead_letter_queue.queue_url,
                f"Events {handler.value} failed on",
            )
            if stage.source_queue is not None:
                source = "SageMaker notifications" if handler is Handler.ASYNC_RESULT else "S3 events"
                outputs[f"{camel}QueueUrl"] = (stage.source_queue.queue_url, f"{source} waiting for {handler.value}")
        if self.async_topics is not None:
            outputs["AsyncSuccessTopicArn"] = (self.async_topics.success.topic_arn, "SageMaker async results (success)")
            outputs["AsyncErrorTopicArn"] = (self.async_topics.error.topic_arn, "SageMaker async results (failure)")
        outputs["LedgerTableName"] = (self.ledger.table_name, "The upload ledger (one item per upload key)")
        outputs["DashboardName"] = (self.dashboard.dashboard.dashboard_name, "CloudWatch dashboard of the pipeline")
        for output_id, (value, description) in outputs.items():
            CfnOutput(self, output_id, value=value, description=description)

    @property
    def async_topics(self) -> AsyncResultTopics | None:
        """The topics the async endpoint notifies (the endpoint stack grants its role on them); None in realtime."""
        return self.async_result_recorder.topics if self.async_result_recorder is not None else None

    def _alarm_on_failures(self, stage: StageFunction) -> None:
        """A failed invocation, and an event waiting in the dead-letter queue, each notify the alarm topic."""
        name = stage.handler.value
        queue = stage.dead_letter_queue.queue_name
        logs = stage.log_group.log_group_name
        notify_alarm(
            stage,
            "ErrorsAlarm",
            metric=stage.metric_errors(ALARM_PERIOD),
            threshold=1,
            description=f"{name} failed at least once in 5 minutes. Its events are tried again (SQS hands a queued "
            f"S3 event out again, Lambda retries others twice); the uploads involved may get an errors/<key>.json "
            f"record with the reason. Read the log group {logs} for the cause.",
            topic=self.alarm_topic.topic,
        )
        notify_alarm(
            stage,
            "DeadLetterAlarm",
            metric=stage.metric_dead_letters(ALARM_PERIOD),
            threshold=1,
            description=f"Events {name} could not process wait in its dead-letter queue {queue} (14 days): those "
            f"uploads have no image yet. Find the cause in the log group {logs}, fix it, then run `make replay`.",
            topic=self.alarm_topic.topic,
            # SQS stops publishing metrics for a queue left untouched for 6 hours, even with messages in it:
            # a gap must keep the alarm in ALARM, not report OK while events still wait.
            treat_missing_data=cloudwatch.TreatMissingData.IGNORE,
        )

    def _alarm_on_backlog(self, stage: StageFunction) -> None:
        """An alarm when the oldest message in a stage's source queue has waited too long."""
        assert stage.source_queue is not None
        notify_alarm(
            stage,
            "BacklogAlarm",
            metric=stage.source_queue.metric_approximate_age_of_oldest_message(
                period=ALARM_PERIOD, statistic="Maximum"
            ),
            threshold=SOURCE_QUEUE_AGE_ALARM.to_seconds(),
            description=f"A message has waited {SOURCE_QUEUE_AGE_ALARM.to_minutes()} minutes or more in "
            f"{stage.handler.value}'s queue {stage.source_queue.queue_name}: the endpoint is down or cannot keep "
            f"up. Check the endpoint's alarms and the log group {stage.log_group.log_group_name}; raise "
            "invokeSdConcurrency only if the endpoint has capacity to spare.",
            topic=self.alarm_topic.topic,
        )

    def _acknowledge_cdk_internals(self) -> None:
        """The CDK's own singleton that writes the bucket notification configuration."""
        for child in self.node.children:
            if child.node.id.startswith("BucketNotificationsHandler"):
                acknowledge(
                    child,
                    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
                    "The CDK's own deploy-time handler that writes the S3 notification configuration; it runs "
                    "only during deployments; its role (logs, plus PutBucketNotification) is created by the CDK.",
                )


def _event_pattern(pattern: Mapping[str, Any]) -> events.EventPattern:
    """The CDK form of an event pattern dict (`detail-type` -> `detail_type`); an unknown field raises."""
    return events.EventPattern(**{field.replace("-", "_"): value for field, value in pattern.items()})
