"""InfraStack: buckets, EventBridge rules, Lambdas, dead-letter queues, outputs."""

from __future__ import annotations

import json
import re

from aws_cdk.assertions import Match

from infra.config import PipelineConfig
from infra.pipeline import VERSIONED_BUCKETS, BucketRole, Handler, event_routes, handler_environment

from .conftest import REPO, Synth
from .support import bucket_id, dead_letter_queue_id, function, handlers, logical_id, queued, source_queue_id, stage

# --- buckets -------------------------------------------------------------------------------


def test_five_private_encrypted_buckets(synth: Synth) -> None:
    buckets = synth.infra_template.find_resources("AWS::S3::Bucket")
    assert len(buckets) == 5  # input, transcripts, output, model + access logs
    for props in (bucket["Properties"] for bucket in buckets.values()):
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        rule = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        assert "BucketName" not in props, "bucket names are generated, never physical"


def test_uploads_and_transcripts_are_versioned_and_old_versions_expire_after_a_day(
    synth: Synth, synth_variant: Synth
) -> None:
    # An upload's identity is its version id: a handler reads exactly the upload (or transcript) its event names.
    assert {BucketRole.INPUT, BucketRole.TRANSCRIPTS} == VERSIONED_BUCKETS
    for result in (synth, synth_variant):
        buckets = result.infra_template.find_resources("AWS::S3::Bucket")
        versioned = {
            logical_id
            for logical_id, bucket in buckets.items()
            if bucket["Properties"].get("VersioningConfiguration") == {"Status": "Enabled"}
        }
        assert versioned == {bucket_id(result, BucketRole.INPUT), bucket_id(result, BucketRole.TRANSCRIPTS)}
        for role in (BucketRole.INPUT, BucketRole.TRANSCRIPTS):
            rules = buckets[bucket_id(result, role)]["Properties"]["LifecycleConfiguration"]["Rules"]
            assert rules[0] == {
                "Id": "ExpireReplacedVersions",
                "Status": "Enabled",
                "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
                "ExpiredObjectDeleteMarker": True,
            }
            # Async mode adds one rule to the transcripts bucket (tests/infra/test_async_infra.py), nothing else.
            async_mode = result.infra.async_result_recorder is not None
            assert len(rules) == 1 + (async_mode and role is BucketRole.TRANSCRIPTS)
        for role in (BucketRole.OUTPUT, BucketRole.MODEL):
            assert "LifecycleConfiguration" not in buckets[bucket_id(result, role)]["Properties"]


def test_every_bucket_denies_plain_http(synth: Synth) -> None:
    policies = synth.infra_template.find_resources("AWS::S3::BucketPolicy")
    secured = set()
    for policy in policies.values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}:
                assert statement["Effect"] == "Deny"
                secured.add(policy["Properties"]["Bucket"]["Ref"])
    assert secured == set(synth.infra_template.find_resources("AWS::S3::Bucket"))


def test_pipeline_buckets_log_access_to_the_log_bucket(synth: Synth) -> None:
    log_bucket = synth.infra.get_logical_id(synth.infra.buckets.access_logs.node.default_child)
    buckets = synth.infra_template.find_resources("AWS::S3::Bucket")
    for role in BucketRole:
        logging = buckets[bucket_id(synth, role)]["Properties"]["LoggingConfiguration"]
        assert logging["DestinationBucketName"] == {"Ref": log_bucket}
        assert logging["LogFilePrefix"] == f"{role.value.lower()}/"
    assert "LoggingConfiguration" not in buckets[log_bucket]["Properties"]


def test_removal_destroy_empties_and_deletes_everything_but_the_access_logs(synth: Synth) -> None:
    buckets = synth.infra_template.find_resources("AWS::S3::Bucket")
    log_bucket = synth.infra.get_logical_id(synth.infra.buckets.access_logs.node.default_child)
    pipeline = {logical_id for logical_id in buckets if logical_id != log_bucket}
    assert {buckets[logical_id]["DeletionPolicy"] for logical_id in pipeline} == {"Delete"}
    auto_delete = synth.infra_template.find_resources("Custom::S3AutoDeleteObjects")
    assert {resource["Properties"]["BucketName"]["Ref"] for resource in auto_delete.values()} == pipeline
    # S3 keeps delivering access logs while the other buckets are emptied: this one is always kept.
    assert buckets[log_bucket]["DeletionPolicy"] == "Retain"
    for resource_type in ("AWS::Logs::LogGroup", "AWS::SQS::Queue", "AWS::KMS::Key", "AWS::DynamoDB::Table"):
        assert {r["DeletionPolicy"] for r in synth.infra_template.find_resources(resource_type).values()} == {"Delete"}


def test_removal_retain_keeps_buckets_and_their_objects(synth_variant: Synth) -> None:
    template = synth_variant.infra_template
    assert {b["DeletionPolicy"] for b in template.find_resources("AWS::S3::Bucket").values()} == {"Retain"}
    assert template.find_resources("Custom::S3AutoDeleteObjects") == {}
    for resource_type in ("AWS::Logs::LogGroup", "AWS::SQS::Queue", "AWS::KMS::Key", "AWS::DynamoDB::Table"):
        assert {r["DeletionPolicy"] for r in template.find_resources(resource_type).values()} == {"Retain"}


# --- EventBridge ---------------------------------------------------------------------------


def test_failed_pipeline_jobs_reach_transcribe_failed_through_the_shared_event_pattern(synth: Synth) -> None:
    # The other rule is the sweeper's schedule (tests/infra/test_ledger.py).
    rules = synth.infra_template.find_resources(
        "AWS::Events::Rule", {"Properties": {"EventPattern": Match.any_value()}}
    )
    routes = event_routes(PipelineConfig())
    assert len(rules) == len(routes) == 1
    ((rule_id, rule),) = rules.items()
    (route,) = routes
    assert route.handler is Handler.TRANSCRIBE_FAILED
    props = rule["Properties"]
    # Exactly the pattern local mode and the contract use: FAILED jobs named s2i-..., nothing else.
    assert props["EventPattern"] == route.pattern
    assert props["EventPattern"]["detail"]["TranscriptionJobName"] == [{"prefix": "s2i-"}]
    assert "EventBusName" not in props, "the default bus, where AWS service events arrive"
    fn_id, _ = function(synth, Handler.TRANSCRIBE_FAILED)
    queue_id = logical_id(synth, stage(synth, Handler.TRANSCRIBE_FAILED).dead_letter_queue)
    (target,) = props["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [fn_id, "Arn"]}
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [queue_id, "Arn"]}}
    assert target["RetryPolicy"]["MaximumEventAgeInSeconds"] == 6 * 3600
    assert 1 <= target["RetryPolicy"]["MaximumRetryAttempts"] < 185, "bounded, not EventBridge's default"
    # EventBridge may invoke the function, and send undeliverable events to its queue, for this rule only.
    synth.infra_template.has_resource_properties(
        "AWS::Lambda::Permission",
        {
            "Action": "lambda:InvokeFunction",
            "Principal": "events.amazonaws.com",
            "FunctionName": {"Fn::GetAtt": [fn_id, "Arn"]},
            "SourceArn": {"Fn::GetAtt": [rule_id, "Arn"]},
        },
    )
    synth.infra_template.has_resource_properties(
        "AWS::SQS::QueuePolicy",
        {
            "Queues": [{"Ref": queue_id}],
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Allow",
                                "Principal": {"Service": "events.amazonaws.com"},
                                "Action": "sqs:SendMessage",
                                "Resource": {"Fn::GetAtt": [queue_id, "Arn"]},
                                "Condition": {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": [rule_id, "Arn"]}}},
                            }
                        )
                    ]
                )
            },
        },
    )


def test_only_eventbridge_invokes_functions_directly(synth: Synth) -> None:
    # S3 notifies queues now: no function may be invoked by S3 (an old permission would outlive the design).
    principals = {
        (perm["Properties"]["FunctionName"]["Fn::GetAtt"][0], perm["Properties"]["Principal"])
        for perm in synth.infra_template.find_resources("AWS::Lambda::Permission").values()
        if perm["Properties"]["FunctionName"].get("Fn::GetAtt", [""])[0]
        in {function(synth, h)[0] for h in handlers(synth)}
    }
    assert principals == {
        (function(synth, Handler.TRANSCRIBE_FAILED)[0], "events.amazonaws.com"),
        (function(synth, Handler.SWEEPER)[0], "events.amazonaws.com"),
    }


# --- functions -----------------------------------------------------------------------------


def test_functions_run_current_python_with_json_logs_in_their_own_log_group(synth: Synth) -> None:
    groups = synth.infra_template.find_resources("AWS::Logs::LogGroup")
    for handler in handlers(synth):
        _, fn = function(synth, handler)
        props = fn["Properties"]
        assert props["Runtime"] == "python3.14"
        assert props["LoggingConfig"]["LogFormat"] == "JSON"
        group_id = props["LoggingConfig"]["LogGroup"]["Ref"]
        assert groups[group_id]["Properties"]["RetentionInDays"] == 14
        assert "FunctionName" not in props


def test_log_retention_comes_from_context(synth_variant: Synth) -> None:
    retention = {
        group["Properties"]["RetentionInDays"]
        for group in synth_variant.infra_template.find_resources("AWS::Logs::LogGroup").values()
    }
    assert retention == {30}


def test_timeouts_are_sized_to_the_work(synth: Synth) -> None:
    assert function(synth, Handler.TRANSCRIBE_TRIGGER)[1]["Properties"]["Timeout"] == 60
    failed = function(synth, Handler.TRANSCRIBE_FAILED)[1]["Properties"]
    assert (failed["Timeout"], failed["MemorySize"]) == (60, 256)
    sweeper = function(synth, Handler.SWEEPER)[1]["Properties"]
    assert (sweeper["Timeout"], sweeper["MemorySize"]) == (300, 256)
    # Four endpoint attempts of up to 70 s read + 10 s connect (the real-time limit is 60 s) plus backoff.
    assert function(synth, Handler.INVOKE_SD)[1]["Properties"]["Timeout"] >= 4 * 80 + 10


def test_every_function_has_an_encrypted_ssl_only_dead_letter_queue_kept_14_days(synth: Synth) -> None:
    queues = synth.infra_template.find_resources("AWS::SQS::Queue")
    dead_letter_queues = {dead_letter_queue_id(synth, handler) for handler in handlers(synth)}
    assert len(dead_letter_queues) == len(Handler) == 5, "one per function (async mode has all five)"
    assert set(queues) == dead_letter_queues | {source_queue_id(synth, handler) for handler in queued(synth)}
    for queue in queues.values():
        assert queue["Properties"]["SqsManagedSseEnabled"] is True
        assert queue["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600
    for queue_id in dead_letter_queues:
        assert "RedrivePolicy" not in queues[queue_id]["Properties"], "the end of the line"
    secured = set()
    for policy in synth.infra_template.find_resources("AWS::SQS::QueuePolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if (
                statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
                and statement["Effect"] == "Deny"
            ):
                secured |= {ref["Ref"] for ref in policy["Properties"]["Queues"]}
    assert secured == set(queues)


def test_failed_asynchronous_invocations_go_to_the_functions_dead_letter_queue(synth: Synth) -> None:
    # EventBridge and the schedule invoke asynchronously; the queued stages keep the same safety net.
    targets = {}
    for config in synth.infra_template.find_resources("AWS::Lambda::EventInvokeConfig").values():
        props = config["Properties"]
        assert props["MaximumRetryAttempts"] == 2
        assert props["MaximumEventAgeInSeconds"] == 6 * 3600
        targets[props["FunctionName"]["Ref"]] = props["DestinationConfig"]["OnFailure"]["Destination"]["Fn::GetAtt"][0]
    assert targets == {function(synth, handler)[0]: dead_letter_queue_id(synth, handler) for handler in handlers(synth)}


def test_lambda_assets_hold_only_their_own_handler_and_the_shared_package(synth: Synth) -> None:
    for handler in handlers(synth):
        _, fn = function(synth, handler)
        asset_hash = fn["Properties"]["Code"]["S3Key"].removesuffix(".zip")
        folder = synth.assembly_dir / f"asset.{asset_hash}"
        assert (folder / handler.value / "handler.py").is_file()
        assert (folder / "pipeline_common").is_dir()
        assert [other for other in Handler if other is not handler and (folder / other.value).exists()] == []
        assert not list(folder.rglob("__pycache__"))


def test_functions_get_aws_powertools_from_its_layer_at_the_version_the_tests_run(synth: Synth) -> None:
    # The Lambda runtime has boto3 but not Powertools, which the handlers import: without the layer every
    # invocation fails at import. The layer must hold the release the unit tests ran against.
    pinned = re.search(r"^aws-lambda-powertools==(\S+)$", (REPO / "requirements-dev.txt").read_text(), re.MULTILINE)
    assert pinned is not None
    parameters = synth.infra_template.to_json()["Parameters"]
    for handler in handlers(synth):
        props = function(synth, handler)[1]["Properties"]
        assert props["Architectures"] == ["x86_64"]
        ((layer,),) = [props["Layers"]]
        parameter = parameters[layer["Ref"]]
        assert parameter["Type"] == "AWS::SSM::Parameter::Value<String>", "resolved by CloudFormation at deploy"
        assert parameter["Default"] == f"/aws/service/powertools/python/x86_64/python3.14/{pinned[1]}"


def test_handler_environment_is_the_shared_definition(synth: Synth, synth_variant: Synth) -> None:
    for result in (synth, synth_variant):
        names = {role: {"Ref": bucket_id(result, role)} for role in BucketRole}
        table = {"Ref": logical_id(result, result.infra.ledger.table)}
        config = PipelineConfig.from_context(result.app.node.try_get_context)
        for handler in handlers(result):
            _, fn = function(result, handler)
            env = fn["Properties"]["Environment"]["Variables"]
            assert env == handler_environment(handler, config, names, table)
            assert env["LEDGER_TABLE"] == table, "every handler finds the ledger"
    sweeper = function(synth_variant, Handler.SWEEPER)[1]["Properties"]["Environment"]["Variables"]
    assert (sweeper["LEDGER_PENDING_INDEX"], sweeper["STUCK_AFTER_MINUTES"]) == ("pending-by-age", "60")


def test_transcription_language_is_fixed_or_identified(synth: Synth, synth_variant: Synth) -> None:
    env = function(synth, Handler.TRANSCRIBE_TRIGGER)[1]["Properties"]["Environment"]["Variables"]
    assert env["LANGUAGE_CODE"] == "en-US"
    env = function(synth_variant, Handler.TRANSCRIBE_TRIGGER)[1]["Properties"]["Environment"]["Variables"]
    assert (env["LANGUAGE_CODE"], env["LANGUAGE_OPTIONS"]) == ("auto", "en-US,de-DE")


def test_image_parameters_come_from_context(synth: Synth, synth_variant: Synth) -> None:
    env = function(synth, Handler.INVOKE_SD)[1]["Properties"]["Environment"]["Variables"]
    # Nothing configured: every request leaves size, steps and guidance to the model family's defaults.
    assert json.loads(env["IMAGE_PARAMETERS"]) == {}
    env = function(synth_variant, Handler.INVOKE_SD)[1]["Properties"]["Environment"]["Variables"]
    assert json.loads(env["IMAGE_PARAMETERS"]) == {"num_inference_steps": 30, "height": 768, "width": 768, "seed": 42}


# --- outputs -------------------------------------------------------------------------------


def test_outputs_name_every_bucket_and_the_endpoint(synth: Synth) -> None:
    outputs = synth.infra_template.find_outputs("*")
    for role, name in (
        (BucketRole.INPUT, "InputBucketName"),
        (BucketRole.TRANSCRIPTS, "TranscriptBucketName"),
        (BucketRole.OUTPUT, "OutputBucketName"),
        (BucketRole.MODEL, "ModelBucketName"),
    ):
        assert outputs[name]["Value"] == {"Ref": bucket_id(synth, role)}
    log_bucket = synth.infra.get_logical_id(synth.infra.buckets.access_logs.node.default_child)
    assert outputs["AccessLogBucketName"]["Value"] == {"Ref": log_bucket}
    assert outputs["EndpointName"]["Value"] == "speech-to-image-sd"
    assert outputs["ModelDataKey"]["Value"] == "models/stable-diffusion-v1-4/model.tar.gz"
    assert outputs["LedgerTableName"]["Value"] == {"Ref": logical_id(synth, synth.infra.ledger.table)}
    assert outputs["DashboardName"]["Value"] == {"Ref": logical_id(synth, synth.infra.dashboard.dashboard)}


def test_outputs_name_every_queue_for_make_replay(synth: Synth, synth_realtime: Synth) -> None:
    # `make replay` pairs `<Stage>DeadLetterQueueUrl` with `<Stage>QueueUrl` by these exact names.
    async_stage = {
        "AsyncResultDeadLetterQueueUrl": {"Ref": dead_letter_queue_id(synth, Handler.ASYNC_RESULT)},
        "AsyncResultQueueUrl": {"Ref": source_queue_id(synth, Handler.ASYNC_RESULT)},
    }
    assert queue_outputs(synth) == queue_outputs(synth_realtime) | async_stage
    synth = synth_realtime
    outputs = synth.infra_template.find_outputs("*")
    assert queue_outputs(synth) == {
        "TranscribeTriggerDeadLetterQueueUrl": {"Ref": dead_letter_queue_id(synth, Handler.TRANSCRIBE_TRIGGER)},
        "InvokeSdDeadLetterQueueUrl": {"Ref": dead_letter_queue_id(synth, Handler.INVOKE_SD)},
        "TranscribeFailedDeadLetterQueueUrl": {"Ref": dead_letter_queue_id(synth, Handler.TRANSCRIBE_FAILED)},
        "SweeperDeadLetterQueueUrl": {"Ref": dead_letter_queue_id(synth, Handler.SWEEPER)},
        "TranscribeTriggerQueueUrl": {"Ref": source_queue_id(synth, Handler.TRANSCRIBE_TRIGGER)},
        "InvokeSdQueueUrl": {"Ref": source_queue_id(synth, Handler.INVOKE_SD)},
    }
    assert outputs["AlarmTopicArn"]["Value"] == {"Ref": logical_id(synth, synth.infra.alarm_topic.topic)}


def queue_outputs(synth: Synth) -> dict[str, object]:
    """The stack outputs `make replay` reads (names ending in QueueUrl), with their values."""
    outputs = synth.infra_template.find_outputs("*")
    return {name: output["Value"] for name, output in outputs.items() if name.endswith("QueueUrl")}


def test_infra_stack_holds_no_sagemaker_resources(synth: Synth) -> None:
    template = synth.infra_template.to_json()["Resources"]
    assert not [r for r in template.values() if r["Type"].startswith("AWS::SageMaker::")]
