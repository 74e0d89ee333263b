"""InfraStack in async mode: SageMaker's result topics, their queue, the async_result stage and its clean-up rule."""

from __future__ import annotations

from typing import Any

from infra.pipeline import ASYNC_OBJECT_RETENTION_DAYS, ASYNC_RESULT_QUEUE, BucketRole, Handler

from .conftest import Synth
from .support import bucket_id, dead_letter_queue_id, function, logical_id, source_queue_id
from .test_ledger import metric_lines, widgets

SSL_ONLY = {"Bool": {"aws:SecureTransport": "false"}}


def topic_ids(synth: Synth) -> tuple[str, str]:
    """Logical ids of the success and error topics."""
    topics = synth.infra.async_topics
    assert topics is not None
    return (logical_id(synth, topics.success), logical_id(synth, topics.error))


def key_id(synth: Synth) -> str:
    topics = synth.infra.async_topics
    assert topics is not None
    return logical_id(synth, topics.key)


def resources(synth: Synth, resource_type: str) -> dict[str, dict[str, Any]]:
    return synth.infra_template.find_resources(resource_type)


# --- topics and key ------------------------------------------------------------------------


def test_two_result_topics_encrypted_with_their_own_rotating_key(synth: Synth) -> None:
    topics = resources(synth, "AWS::SNS::Topic")
    key = resources(synth, "AWS::KMS::Key")[key_id(synth)]
    assert key["Properties"]["EnableKeyRotation"] is True
    for topic in topic_ids(synth):
        assert topics[topic]["Properties"] == {"KmsMasterKeyId": {"Fn::GetAtt": [key_id(synth), "Arn"]}}
    assert key_id(synth) != logical_id(synth, synth.infra.alarm_topic.key), "not the alarm topic's key"


def test_the_key_trusts_iam_policies_and_names_no_service(synth: Synth) -> None:
    # SageMaker publishes with the endpoint's execution role, whose IAM policy grants the key (the endpoint
    # stack's tests check it); a service-principal statement here would be unused access.
    key = resources(synth, "AWS::KMS::Key")[key_id(synth)]
    (statement,) = key["Properties"]["KeyPolicy"]["Statement"]
    assert statement["Principal"] == {
        "AWS": {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":iam::123456789012:root"]]}
    }
    assert key["DeletionPolicy"] == "Delete"


def test_topics_refuse_plain_http_and_allow_no_one_else(synth: Synth) -> None:
    policies = resources(synth, "AWS::SNS::TopicPolicy")
    for topic in topic_ids(synth):
        (policy,) = [p for p in policies.values() if p["Properties"]["Topics"] == [{"Ref": topic}]]
        (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
        assert (statement["Effect"], statement["Action"], statement["Condition"]) == ("Deny", "sns:Publish", SSL_ONLY)
        assert statement["Resource"] == {"Ref": topic}


def test_both_topics_deliver_raw_messages_to_async_results_queue(synth: Synth) -> None:
    queue = source_queue_id(synth, Handler.ASYNC_RESULT)
    subscriptions = resources(synth, "AWS::SNS::Subscription")
    found = {
        s["Properties"]["TopicArn"]["Ref"]: s["Properties"]
        for s in subscriptions.values()
        if s["Properties"]["Protocol"] == "sqs"
    }
    assert set(found) == set(topic_ids(synth))
    for props in found.values():
        assert props["Endpoint"] == {"Fn::GetAtt": [queue, "Arn"]}
        # Raw: the queue (and a replay) holds SageMaker's own JSON, not an SNS envelope.
        assert props["RawMessageDelivery"] is True


def test_sns_may_send_to_the_queue_only_from_the_two_topics(synth: Synth) -> None:
    queue = source_queue_id(synth, Handler.ASYNC_RESULT)
    (policy,) = [
        p for p in resources(synth, "AWS::SQS::QueuePolicy").values() if p["Properties"]["Queues"] == [{"Ref": queue}]
    ]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    sns = [s for s in statements if s.get("Principal") == {"Service": "sns.amazonaws.com"}]
    assert {s["Condition"]["ArnEquals"]["aws:SourceArn"]["Ref"] for s in sns} == set(topic_ids(synth))
    for statement in sns:
        assert (statement["Effect"], statement["Action"]) == ("Allow", "sqs:SendMessage")
        assert statement["Resource"] == {"Fn::GetAtt": [queue, "Arn"]}
    assert any(s["Effect"] == "Deny" and s.get("Condition") == SSL_ONLY for s in statements), "SSL only"


# --- the async_result stage ----------------------------------------------------------------


def test_async_result_reads_its_queue_in_batches_with_partial_failures(synth: Synth) -> None:
    fn_id, fn = function(synth, Handler.ASYNC_RESULT)
    assert (fn["Properties"]["Timeout"], fn["Properties"]["MemorySize"]) == (60, 512)
    queue = source_queue_id(synth, Handler.ASYNC_RESULT)
    (mapping,) = [
        m["Properties"]
        for m in resources(synth, "AWS::Lambda::EventSourceMapping").values()
        if m["Properties"]["FunctionName"] == {"Ref": fn_id}
    ]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": [queue, "Arn"]}
    assert mapping["BatchSize"] == ASYNC_RESULT_QUEUE.batch_size
    assert mapping["ScalingConfig"] == {"MaximumConcurrency": ASYNC_RESULT_QUEUE.max_concurrency}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    props = resources(synth, "AWS::SQS::Queue")[queue]["Properties"]
    assert props["SqsManagedSseEnabled"] is True
    assert props["VisibilityTimeout"] >= 6 * 60
    assert props["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": [dead_letter_queue_id(synth, Handler.ASYNC_RESULT), "Arn"]},
        "maxReceiveCount": ASYNC_RESULT_QUEUE.max_receive_count,
    }


def test_async_objects_expire_from_the_transcripts_bucket(synth: Synth) -> None:
    bucket = resources(synth, "AWS::S3::Bucket")[bucket_id(synth, BucketRole.TRANSCRIPTS)]
    rules = bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    assert {
        "Id": "ExpireAsyncInferenceObjects",
        "Status": "Enabled",
        "Prefix": "async/",
        "ExpirationInDays": ASYNC_OBJECT_RETENTION_DAYS,
    } in rules


def test_the_transcripts_notification_never_sees_async_objects(synth: Synth) -> None:
    # async/ objects must not start invoke_sd: only transcripts/*.json reach its queue.
    (notification,) = [
        n
        for n in resources(synth, "Custom::S3BucketNotifications").values()
        if n["Properties"]["BucketName"] == {"Ref": bucket_id(synth, BucketRole.TRANSCRIPTS)}
    ]
    for config in notification["Properties"]["NotificationConfiguration"]["QueueConfigurations"]:
        rules = {r["Name"]: r["Value"] for r in config["Filter"]["Key"]["FilterRules"]}
        assert rules["prefix"] == "transcripts/"


def test_outputs_name_the_topics_for_operators(synth: Synth) -> None:
    outputs = synth.infra_template.find_outputs("*")
    success, error = topic_ids(synth)
    assert outputs["AsyncSuccessTopicArn"]["Value"] == {"Ref": success}
    assert outputs["AsyncErrorTopicArn"]["Value"] == {"Ref": error}
    assert "SageMaker notifications" in outputs["AsyncResultQueueUrl"]["Description"]


def test_retain_keeps_the_topics_key(synth_async_variant: Synth) -> None:
    key = resources(synth_async_variant, "AWS::KMS::Key")[key_id(synth_async_variant)]
    assert key["DeletionPolicy"] == "Retain"


# --- realtime mode -------------------------------------------------------------------------


def test_realtime_mode_has_none_of_it(synth_realtime: Synth) -> None:
    infra = synth_realtime.infra
    assert infra.async_result_recorder is None and infra.async_topics is None
    assert Handler.ASYNC_RESULT not in infra.stages
    template = synth_realtime.infra_template
    assert len(template.find_resources("AWS::SNS::Topic")) == 1, "the alarm topic only"
    assert template.find_resources("AWS::SNS::Subscription", {"Properties": {"Protocol": "sqs"}}) == {}
    assert not [name for name in template.find_outputs("*") if name.startswith("Async")]
    bucket = template.find_resources("AWS::S3::Bucket")[bucket_id(synth_realtime, BucketRole.TRANSCRIPTS)]
    rule_ids = [rule["Id"] for rule in bucket["Properties"]["LifecycleConfiguration"]["Rules"]]
    assert rule_ids == ["ExpireReplacedVersions"]
    functions = template.find_resources("AWS::Lambda::Function")
    assert not [f for f in functions.values() if f["Properties"].get("Handler") == Handler.ASYNC_RESULT.entry_point]


# --- dashboard -----------------------------------------------------------------------------


def test_dashboard_shows_the_async_queue_its_age_and_its_failures_by_endpoint_name(
    synth: Synth, synth_async_variant: Synth
) -> None:
    for result, name in ((synth, "speech-to-image-sd"), (synth_async_variant, "My-SD-Endpoint")):
        graphs = widgets(result)
        queue = metric_lines(graphs["Async endpoint: requests waiting (and waiting with no instance)"])
        # Queue metrics carry EndpointName ONLY (with a VariantName they match no data).
        assert queue == {
            ("AWS/SageMaker", "ApproximateBacklogSize", "EndpointName", name, "Maximum"),
            # No stat rendered: Average, CloudWatch's default.
            ("AWS/SageMaker", "ApproximateBacklogSizePerInstance", "EndpointName", name, None),
            ("AWS/SageMaker", "HasBacklogWithoutCapacity", "EndpointName", name, "Maximum"),
        }
        assert metric_lines(graphs["Async endpoint: age of the oldest request (seconds)"]) == {
            ("AWS/SageMaker", "ApproximateAgeOfOldestRequest", "EndpointName", name, "Maximum")
        }
        assert metric_lines(graphs["Async endpoint: failed invocations and notifications"]) == {
            ("AWS/SageMaker", metric, "EndpointName", name, "VariantName", "AllTraffic", "Sum")
            for metric in ("InvocationFailures", "NotificationFailures")
        }
    # By name, not by reference: InfraStack depends on nothing in the endpoint stack.
    assert synth.infra.dependencies == []
