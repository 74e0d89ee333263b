"""Alarms: every failure a user would otherwise never hear about notifies one encrypted topic."""

from __future__ import annotations

from typing import Any

from aws_cdk.assertions import Match

from infra.pipeline import Handler

from .conftest import ACCOUNT, REGION, Synth
from .support import handlers


def topic_id(synth: Synth) -> str:
    return synth.infra.get_logical_id(synth.infra.alarm_topic.topic.node.default_child)


def key_id(synth: Synth) -> str:
    return synth.infra.get_logical_id(synth.infra.alarm_topic.key.node.default_child)


def alarms_on(template: Any, metric_name: str) -> list[dict[str, Any]]:
    """The properties of every alarm on `metric_name`."""
    found = template.find_resources("AWS::CloudWatch::Alarm", {"Properties": {"MetricName": metric_name}})
    return [alarm["Properties"] for alarm in found.values()]


def assert_notifies(props: dict[str, Any], topic: Any) -> None:
    """Fires on one bad data point, tells the topic on ALARM and on OK, and explains itself."""
    assert props["AlarmActions"] == [topic]
    assert props["OKActions"] == [topic]
    assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert (props["EvaluationPeriods"], props["DatapointsToAlarm"], props["Period"]) == (1, 1, 300)
    assert "InsufficientDataActions" not in props


def description(props: dict[str, Any]) -> str:
    """The alarm description with its tokens (queue, log group) shown as `<Ref>`."""
    text = props["AlarmDescription"]
    if isinstance(text, str):
        return text
    return "".join(part if isinstance(part, str) else "<Ref>" for part in text["Fn::Join"][1])


# --- topic and key -------------------------------------------------------------------------


def test_alarm_topic_is_encrypted_with_its_own_rotating_key_and_ssl_only(synth_realtime: Synth) -> None:
    # Real-time mode has no async notification topics: the alarm topic and its key are the only ones.
    synth = synth_realtime
    template = synth.infra_template
    assert len(template.find_resources("AWS::SNS::Topic")) == 1
    template.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": {"Fn::GetAtt": [key_id(synth), "Arn"]}})
    assert len(template.find_resources("AWS::KMS::Key")) == 1
    template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    template.has_resource_properties(
        "AWS::SNS::TopicPolicy",
        {
            "Topics": [{"Ref": topic_id(synth)}],
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})]
                )
            },
        },
    )


def test_cloudwatch_may_use_the_key_and_publish_for_this_accounts_alarms_only(synth_realtime: Synth) -> None:
    synth = synth_realtime
    key = synth.infra_template.find_resources("AWS::KMS::Key")[key_id(synth)]
    (statement,) = [
        s
        for s in key["Properties"]["KeyPolicy"]["Statement"]
        if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    ]
    assert statement["Effect"] == "Allow"
    # What AWS documents for alarms publishing to an encrypted topic: nothing more.
    assert sorted(statement["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    assert statement["Resource"] == "*"
    # AWS's documented key statement has no condition: one here can silently stop every alarm e-mail.
    assert "Condition" not in statement

    (policy,) = synth.infra_template.find_resources("AWS::SNS::TopicPolicy").values()
    (publish,) = [
        s
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
        if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}
    ]
    assert (publish["Effect"], publish["Action"]) == ("Allow", "sns:Publish")
    assert publish["Resource"] == {"Ref": topic_id(synth)}
    assert publish["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    source = publish["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Join"][1]
    assert source[-1] == f":cloudwatch:{REGION}:{ACCOUNT}:alarm:*"


def test_email_subscription_exists_only_when_alarm_email_is_set(synth: Synth, make_synth) -> None:
    assert synth.infra_template.find_resources("AWS::SNS::Subscription", {"Properties": {"Protocol": "email"}}) == {}
    subscribed = make_synth(alarmEmail="ops@example.com")
    subscriptions = subscribed.infra_template.find_resources(
        "AWS::SNS::Subscription", {"Properties": {"Protocol": "email"}}
    )
    assert [s["Properties"] for s in subscriptions.values()] == [
        {"Protocol": "email", "Endpoint": "ops@example.com", "TopicArn": {"Ref": topic_id(subscribed)}}
    ]


# --- pipeline alarms -----------------------------------------------------------------------


def test_every_function_alarms_on_its_first_error(synth: Synth) -> None:
    alarms = alarms_on(synth.infra_template, "Errors")
    by_function = {}
    for props in alarms:
        assert props["Namespace"] == "AWS/Lambda"
        assert (props["Statistic"], props["Threshold"]) == ("Sum", 1)
        assert props["TreatMissingData"] == "notBreaching", "no invocations is healthy"
        assert_notifies(props, {"Ref": topic_id(synth)})
        ((dimension),) = props["Dimensions"]
        assert dimension["Name"] == "FunctionName"
        by_function[dimension["Value"]["Ref"]] = props
    expected = {synth.infra.get_logical_id(synth.infra.stages[h].function.node.default_child) for h in handlers(synth)}
    assert set(by_function) == expected
    for handler in handlers(synth):
        fn_id = synth.infra.get_logical_id(synth.infra.stages[handler].function.node.default_child)
        assert handler.value in description(by_function[fn_id])


def test_every_dead_letter_queue_alarms_while_events_wait_in_it(synth: Synth) -> None:
    alarms = alarms_on(synth.infra_template, "ApproximateNumberOfMessagesVisible")
    by_queue = {}
    for props in alarms:
        assert props["Namespace"] == "AWS/SQS"
        assert (props["Statistic"], props["Threshold"]) == ("Maximum", 1)
        # SQS stops reporting an idle queue after 6 hours even with messages in it: a gap is no all-clear.
        assert props["TreatMissingData"] == "ignore"
        assert_notifies(props, {"Ref": topic_id(synth)})
        ((dimension),) = props["Dimensions"]
        assert dimension["Name"] == "QueueName"
        by_queue[dimension["Value"]["Fn::GetAtt"][0]] = props
    queues = {
        synth.infra.get_logical_id(synth.infra.stages[h].dead_letter_queue.node.default_child) for h in handlers(synth)
    }
    assert set(by_queue) == queues
    for props in by_queue.values():
        text = description(props)
        assert "<Ref>" in text, "names the queue"
        assert "make replay" in text, "says what to do"


# --- endpoint alarms -----------------------------------------------------------------------


def endpoint_alarm(synth: Synth, metric_name: str) -> dict[str, Any]:
    (props,) = alarms_on(synth.endpoint_template, metric_name)
    assert props["Namespace"] == "AWS/SageMaker"
    endpoint_id = synth.endpoint.get_logical_id(synth.endpoint.sd_endpoint.endpoint)
    assert props["Dimensions"] == [
        {"Name": "EndpointName", "Value": {"Fn::GetAtt": [endpoint_id, "EndpointName"]}},
        {"Name": "VariantName", "Value": "AllTraffic"},
    ]
    assert props["TreatMissingData"] == "notBreaching", "no requests is healthy"
    # The topic lives in InfraStack: the endpoint stack imports exactly its ARN.
    export = synth.infra_template.find_outputs("*", {"Value": {"Ref": topic_id(synth)}})
    (export_name,) = [output["Export"]["Name"] for output in export.values() if "Export" in output]
    assert_notifies(props, {"Fn::ImportValue": export_name})
    return props


def test_endpoint_alarms_on_server_errors(synth: Synth) -> None:
    props = endpoint_alarm(synth, "Invocation5XXErrors")
    assert (props["Statistic"], props["Threshold"]) == ("Sum", 1)
    assert "make deploy-endpoint" in description(props)


def test_endpoint_alarms_before_images_hit_sagemakers_60_s_limit(synth_realtime: Synth, synth: Synth) -> None:
    props = endpoint_alarm(synth_realtime, "ModelLatency")
    assert props["Statistic"] == "Maximum"
    # ModelLatency is reported in microseconds: 50 s, not 50 ms or 50 us.
    assert props["Threshold"] == 50 * 1_000_000
    assert "60 s" in description(props)
    # Asynchronous requests may take up to an hour: no 60 s limit, no such alarm.
    assert alarms_on(synth.endpoint_template, "ModelLatency") == []


def test_endpoint_alarms_follow_the_configured_endpoint(synth_variant: Synth) -> None:
    (props,) = alarms_on(synth_variant.endpoint_template, "ModelLatency")
    assert "My-SD-Endpoint" in description(props)
    assert synth_variant.endpoint_template.find_resources(
        "AWS::SageMaker::Endpoint", {"Properties": {"EndpointName": "My-SD-Endpoint"}}
    )


def test_a_transcript_waiting_half_an_hour_for_the_gpu_alarms(synth: Synth) -> None:
    (props,) = alarms_on(synth.infra_template, "ApproximateAgeOfOldestMessage")
    assert props["Namespace"] == "AWS/SQS"
    assert (props["Statistic"], props["Threshold"]) == ("Maximum", 30 * 60)  # seconds
    assert props["TreatMissingData"] == "notBreaching"
    assert_notifies(props, {"Ref": topic_id(synth)})
    queue = synth.infra.stages[Handler.INVOKE_SD].source_queue
    assert queue is not None
    queue_id = synth.infra.get_logical_id(queue.node.default_child)
    assert props["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue_id, "QueueName"]}}]
    text = description(props)
    assert "invoke_sd" in text and "endpoint" in text, "says what is slow and where to look"
