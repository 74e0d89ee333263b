"""Alarms that tell a person when an upload may be stuck, and the encrypted topic they notify."""

from __future__ import annotations

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from infra.config import PipelineConfig

# Every alarm looks at one 5-minute period: one failure is worth a look.
ALARM_PERIOD = Duration.minutes(5)
CLOUDWATCH = "cloudwatch.amazonaws.com"


class AlarmTopic(Construct):
    """An SNS topic for alarm notifications, encrypted with its own rotating KMS key, e-mailing `alarmEmail`."""

    def __init__(self, scope: Construct, construct_id: str, *, config: PipelineConfig) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.key = kms.Key(
            self,
            "Key",
            description="speech-to-image: encrypts the alarm notification topic",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY if config.destroy_on_removal else RemovalPolicy.RETAIN,
        )
        # CloudWatch encrypts each notification itself, so it needs the key. This is AWS's documented statement
        # exactly, with NO condition: kms:CallerAccount/kms:ViaService break delivery and an aws:SourceAccount
        # condition here is undocumented; the topic policy below carries the documented source conditions.
        # (docs/DEPLOY-CHECKLIST.md, "Alarm topic key")
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarmsToPublishToTheEncryptedTopic",
                principals=[iam.ServicePrincipal(CLOUDWATCH)],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],  # in a key policy, "*" is this key
            )
        )
        self.topic = sns.Topic(
            self,
            "Topic",
            display_name="speech-to-image alarms",
            master_key=self.key,
            enforce_ssl=True,
        )
        # The SSL-only topic policy replaces SNS's default one: allow this account's alarms explicitly.
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarmsToPublish",
                principals=[iam.ServicePrincipal(CLOUDWATCH)],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={
                    "StringEquals": {"aws:SourceAccount": stack.account},
                    "ArnLike": {
                        "aws:SourceArn": stack.format_arn(
                            service="cloudwatch",
                            resource="alarm",
                            resource_name="*",
                            arn_format=ArnFormat.COLON_RESOURCE_NAME,
                        )
                    },
                },
            )
        )
        if config.alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(config.alarm_email))


def notify_alarm(
    scope: Construct,
    construct_id: str,
    *,
    metric: cloudwatch.IMetric,
    threshold: float,
    description: str,
    topic: sns.ITopic,
    treat_missing_data: cloudwatch.TreatMissingData = cloudwatch.TreatMissingData.NOT_BREACHING,
) -> cloudwatch.Alarm:
    """An alarm when `metric` reaches `threshold` in one period; it notifies `topic` on ALARM and on OK."""
    alarm = cloudwatch.Alarm(
        scope,
        construct_id,
        metric=metric,
        threshold=threshold,
        comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluation_periods=1,
        datapoints_to_alarm=1,
        # By default no data means nothing happened (no invocations, no requests): that is healthy.
        treat_missing_data=treat_missing_data,
        alarm_description=description,
    )
    action = cw_actions.SnsAction(topic)
    alarm.add_alarm_action(action)
    alarm.add_ok_action(action)
    return alarm
