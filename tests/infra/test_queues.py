"""S3 notifies SQS queues; each stage reads its queue through an event source mapping, no reserved concurrency."""

from __future__ import annotations

from typing import Any

from infra.config import PipelineConfig
from infra.pipeline import ASYNC_RESULT_QUEUE, BucketRole, Handler, routes

from .conftest import ACCOUNT, Synth
from .support import QUEUED, bucket_id, dead_letter_queue_id, function, queued, source_queue_id


def notifications(synth: Synth) -> dict[str, list[dict[str, Any]]]:
    """QueueConfigurations by bucket logical id."""
    found = synth.infra_template.find_resources("Custom::S3BucketNotifications")
    result = {}
    for resource in found.values():
        config = resource["Properties"]["NotificationConfiguration"]
        assert set(config) == {"QueueConfigurations"}, "S3 notifies queues only, never a function"
        result[resource["Properties"]["BucketName"]["Ref"]] = config["QueueConfigurations"]
    return result


def filters(configs: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(event, queue logical id, prefix, suffix) of each notification."""
    out = set()
    for config in configs:
        rules = {rule["Name"]: rule["Value"] for rule in config.get("Filter", {}).get("Key", {}).get("FilterRules", [])}
        target = config["QueueArn"]["Fn::GetAtt"][0]
        (event,) = config["Events"]
        out.add((event, target, rules.get("prefix", ""), rules.get("suffix", "")))
    return out


def route_for(handler: Handler, config: PipelineConfig) -> Any:
    """The route (infra/pipeline.py) that feeds `handler`."""
    (route,) = [route for route in routes(config) if route.handler is handler]
    return route


def config_of(synth: Synth) -> PipelineConfig:
    """The configuration the app was built with."""
    return PipelineConfig.from_context(synth.app.node.try_get_context)


# --- notifications -------------------------------------------------------------------------


def test_every_upload_reaches_transcribe_triggers_queue(synth: Synth) -> None:
    # No suffix filter: a .txt or .Mp3 upload must reach the trigger, which answers it with an error record.
    [config] = notifications(synth)[bucket_id(synth, BucketRole.INPUT)]
    assert "Filter" not in config
    assert filters([config]) == {("s3:ObjectCreated:*", source_queue_id(synth, Handler.TRANSCRIBE_TRIGGER), "", "")}


def test_media_formats_from_context_reach_the_trigger_not_the_filters(synth_variant: Synth) -> None:
    [config] = notifications(synth_variant)[bucket_id(synth_variant, BucketRole.INPUT)]
    assert "Filter" not in config
    _, trigger = function(synth_variant, Handler.TRANSCRIBE_TRIGGER)
    assert trigger["Properties"]["Environment"]["Variables"]["MEDIA_FORMATS"] == "mp3,wav"


def test_transcripts_reach_invoke_sds_queue_and_output_notifies_nothing(synth: Synth) -> None:
    wired = notifications(synth)
    assert filters(wired[bucket_id(synth, BucketRole.TRANSCRIPTS)]) == {
        ("s3:ObjectCreated:*", source_queue_id(synth, Handler.INVOKE_SD), "transcripts/", ".json")
    }
    # No recursion: results never start another run; the model bucket notifies nothing either.
    assert set(wired) == {bucket_id(synth, BucketRole.INPUT), bucket_id(synth, BucketRole.TRANSCRIPTS)}


def test_s3_may_send_to_each_queue_only_from_its_bucket_in_this_account(synth: Synth) -> None:
    policies = synth.infra_template.find_resources("AWS::SQS::QueuePolicy")
    for handler, role in ((Handler.TRANSCRIBE_TRIGGER, BucketRole.INPUT), (Handler.INVOKE_SD, BucketRole.TRANSCRIPTS)):
        queue_id = source_queue_id(synth, handler)
        (policy,) = [p for p in policies.values() if p["Properties"]["Queues"] == [{"Ref": queue_id}]]
        s3_statements = [
            s
            for s in policy["Properties"]["PolicyDocument"]["Statement"]
            if s.get("Principal") == {"Service": "s3.amazonaws.com"}
        ]
        allow = [s for s in s3_statements if s["Effect"] == "Allow"]
        deny = [s for s in s3_statements if s["Effect"] == "Deny"]
        # What s3n.SqsDestination generates: send from this bucket's ARN only.
        assert allow == [
            {
                "Action": ["sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SendMessage"],
                "Condition": {"ArnLike": {"aws:SourceArn": {"Fn::GetAtt": [bucket_id(synth, role), "Arn"]}}},
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Resource": {"Fn::GetAtt": [queue_id, "Arn"]},
            }
        ]
        # A bucket ARN names no account: a same-named bucket elsewhere is refused by account.
        assert deny == [
            {
                "Sid": "DenyS3NotificationsFromOtherAccounts",
                "Action": "sqs:SendMessage",
                "Condition": {"StringNotEquals": {"aws:SourceAccount": ACCOUNT}},
                "Effect": "Deny",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Resource": {"Fn::GetAtt": [queue_id, "Arn"]},
            }
        ]
    # The bucket notification is written only once the queue accepts S3's test message.
    for resource in synth.infra_template.find_resources("Custom::S3BucketNotifications").values():
        assert any("QueuePolicy" in dependency for dependency in resource.get("DependsOn", []))


# --- queues --------------------------------------------------------------------------------


def test_source_queues_hide_a_message_for_six_function_timeouts(synth: Synth) -> None:
    queues = synth.infra_template.find_resources("AWS::SQS::Queue")
    for handler in QUEUED:
        timeout = function(synth, handler)[1]["Properties"]["Timeout"]
        props = queues[source_queue_id(synth, handler)]["Properties"]
        # AWS: at least 6x the function timeout (plus the batching window, none here), or a retried
        # batch would be handed to a second function while the first still works on it.
        assert props["VisibilityTimeout"] >= 6 * timeout
        assert props["VisibilityTimeout"] <= 12 * 3600, "SQS's maximum"
        assert (props["SqsManagedSseEnabled"], props["MessageRetentionPeriod"]) == (True, 14 * 24 * 3600)


def test_source_queues_redrive_to_the_stages_dead_letter_queue(synth: Synth) -> None:
    queues = synth.infra_template.find_resources("AWS::SQS::Queue")
    config = config_of(synth)
    for handler in QUEUED:
        redrive = queues[source_queue_id(synth, handler)]["Properties"]["RedrivePolicy"]
        assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": [dead_letter_queue_id(synth, handler), "Arn"]}
        assert redrive["maxReceiveCount"] == route_for(handler, config).queue.max_receive_count
        assert redrive["maxReceiveCount"] >= 5, "AWS's minimum: throttled receives must not dead-letter an upload"


# --- event source mappings -----------------------------------------------------------------


def mappings(synth: Synth) -> dict[str, dict[str, Any]]:
    """Event source mapping properties by function logical id."""
    found = synth.infra_template.find_resources("AWS::Lambda::EventSourceMapping")
    return {m["Properties"]["FunctionName"]["Ref"]: m["Properties"] for m in found.values()}


def test_each_queued_stage_reads_its_queue_in_bounded_batches_with_partial_failures(
    synth: Synth, synth_variant: Synth
) -> None:
    for result in (synth, synth_variant):
        config = config_of(result)
        found = mappings(result)
        assert set(found) == {function(result, handler)[0] for handler in queued(result)}
        for handler in queued(result):
            props = found[function(result, handler)[0]]
            settings = ASYNC_RESULT_QUEUE if handler is Handler.ASYNC_RESULT else route_for(handler, config).queue
            assert props["EventSourceArn"] == {"Fn::GetAtt": [source_queue_id(result, handler), "Arn"]}
            assert props["BatchSize"] == settings.batch_size
            assert props["ScalingConfig"] == {"MaximumConcurrency": settings.max_concurrency}
            # Only the records the handler names are retried, never the whole batch.
            assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mappings(synth)[function(synth, Handler.INVOKE_SD)[0]]["BatchSize"] == 1, "one GPU call per invocation"


def test_concurrency_comes_from_context(synth: Synth, synth_variant: Synth) -> None:
    def concurrency(result: Synth, handler: Handler) -> int:
        return mappings(result)[function(result, handler)[0]]["ScalingConfig"]["MaximumConcurrency"]

    assert (concurrency(synth, Handler.INVOKE_SD), concurrency(synth, Handler.TRANSCRIBE_TRIGGER)) == (2, 5)
    assert (concurrency(synth_variant, Handler.INVOKE_SD), concurrency(synth_variant, Handler.TRANSCRIBE_TRIGGER)) == (
        4,
        7,
    )


def test_no_function_reserves_concurrency(synth: Synth, synth_variant: Synth) -> None:
    # A reservation fails the deploy on new accounts (10 concurrent executions); the queues bound the load instead.
    for result in (synth, synth_variant):
        for logical_id, fn in result.infra_template.find_resources("AWS::Lambda::Function").items():
            assert "ReservedConcurrentExecutions" not in fn["Properties"], logical_id
