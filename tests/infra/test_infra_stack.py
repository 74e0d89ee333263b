"""InfraStack: buckets, notifications, EventBridge rule, Lambdas, least-privilege IAM, outputs."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk.assertions import Match

from infra.components.stage_function import StageFunction
from infra.config import PipelineConfig
from infra.nag import render_intrinsic
from infra.pipeline import BucketRole, Handler, event_routes, handler_environment

from .conftest import ACCOUNT, REGION, Synth


def bucket_id(synth: Synth, role: BucketRole) -> str:
    """Logical id of a pipeline bucket, computed from the construct (never hard-coded)."""
    bucket = synth.infra.buckets[role]
    return synth.infra.get_logical_id(bucket.node.default_child)


def function(synth: Synth, handler: Handler) -> tuple[str, dict[str, Any]]:
    """The Lambda function resource running `handler`."""
    found = synth.infra_template.find_resources(
        "AWS::Lambda::Function", {"Properties": {"Handler": handler.entry_point}}
    )
    assert len(found) == 1, f"expected one function for {handler}, found {list(found)}"
    return next(iter(found.items()))


def statements(synth: Synth, handler: Handler) -> set[tuple[str, str]]:
    """(action, rendered resource) pairs granted to a handler's role by its inline policies."""
    _, fn = function(synth, handler)
    role_id = fn["Properties"]["Role"]["Fn::GetAtt"][0]
    pairs: set[tuple[str, str]] = set()
    policies = synth.infra_template.find_resources("AWS::IAM::Policy")
    for policy in policies.values():
        if {"Ref": role_id} not in policy["Properties"]["Roles"]:
            continue
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            pairs |= {(action, render_intrinsic(resource)) for action in actions for resource in resources}
    return pairs


def arn(synth: Synth, role: BucketRole, suffix: str) -> str:
    return f"<{bucket_id(synth, role)}.Arn>{suffix}"


def stage(synth: Synth, handler: Handler) -> StageFunction:
    """The construct that owns a handler's function, role, log group and dead-letter queue."""
    return synth.infra.stages[handler]


def logical_id(synth: Synth, construct: Any) -> str:
    """Logical id of an L2 construct's CloudFormation resource in InfraStack."""
    return synth.infra.get_logical_id(construct.node.default_child)


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


def test_only_the_transcripts_bucket_is_versioned_and_old_versions_expire_after_a_day(
    synth: Synth, synth_variant: Synth
) -> None:
    for result in (synth, synth_variant):
        buckets = result.infra_template.find_resources("AWS::S3::Bucket")
        versioned = {
            logical_id
            for logical_id, bucket in buckets.items()
            if bucket["Properties"].get("VersioningConfiguration") == {"Status": "Enabled"}
        }
        assert versioned == {bucket_id(result, BucketRole.TRANSCRIPTS)}
        rules = buckets[bucket_id(result, BucketRole.TRANSCRIPTS)]["Properties"]["LifecycleConfiguration"]["Rules"]
        assert rules == [
            {
                "Id": "ExpireReplacedVersions",
                "Status": "Enabled",
                "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
                "ExpiredObjectDeleteMarker": True,
            }
        ]
        for role in (BucketRole.INPUT, BucketRole.OUTPUT, BucketRole.MODEL):
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
    for resource_type in ("AWS::Logs::LogGroup", "AWS::SQS::Queue", "AWS::KMS::Key"):
        assert {r["DeletionPolicy"] for r in synth.infra_template.find_resources(resource_type).values()} == {"Delete"}


def test_removal_retain_keeps_buckets_and_their_objects(synth_variant: Synth) -> None:
    template = synth_variant.infra_template
    assert {b["DeletionPolicy"] for b in template.find_resources("AWS::S3::Bucket").values()} == {"Retain"}
    assert template.find_resources("Custom::S3AutoDeleteObjects") == {}
    for resource_type in ("AWS::Logs::LogGroup", "AWS::SQS::Queue", "AWS::KMS::Key"):
        assert {r["DeletionPolicy"] for r in template.find_resources(resource_type).values()} == {"Retain"}


# --- notifications -------------------------------------------------------------------------


def notifications(synth: Synth) -> dict[str, list[dict[str, Any]]]:
    """LambdaFunctionConfigurations by bucket logical id."""
    found = synth.infra_template.find_resources("Custom::S3BucketNotifications")
    result = {}
    for resource in found.values():
        config = resource["Properties"]["NotificationConfiguration"]
        assert set(config) == {"LambdaFunctionConfigurations"}, "only Lambda notifications are wired"
        result[resource["Properties"]["BucketName"]["Ref"]] = config["LambdaFunctionConfigurations"]
    return result


def filters(configs: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    out = set()
    for config in configs:
        rules = {rule["Name"]: rule["Value"] for rule in config.get("Filter", {}).get("Key", {}).get("FilterRules", [])}
        target = config["LambdaFunctionArn"]["Fn::GetAtt"][0]
        (event,) = config["Events"]
        out.add((event, target, rules.get("prefix", ""), rules.get("suffix", "")))
    return out


def test_every_upload_triggers_transcribe_trigger(synth: Synth) -> None:
    # No suffix filter: a .txt or .Mp3 upload must reach the trigger, which answers it with an error record.
    trigger_id, _ = function(synth, Handler.TRANSCRIBE_TRIGGER)
    [config] = notifications(synth)[bucket_id(synth, BucketRole.INPUT)]
    assert "Filter" not in config
    assert filters([config]) == {("s3:ObjectCreated:*", trigger_id, "", "")}


def test_media_formats_from_context_reach_the_trigger_not_the_filters(synth_variant: Synth) -> None:
    [config] = notifications(synth_variant)[bucket_id(synth_variant, BucketRole.INPUT)]
    assert "Filter" not in config
    _, trigger = function(synth_variant, Handler.TRANSCRIBE_TRIGGER)
    assert trigger["Properties"]["Environment"]["Variables"]["MEDIA_FORMATS"] == "mp3,wav"


def test_transcripts_trigger_invoke_sd_and_output_triggers_nothing(synth: Synth) -> None:
    invoke_id, _ = function(synth, Handler.INVOKE_SD)
    wired = notifications(synth)
    assert filters(wired[bucket_id(synth, BucketRole.TRANSCRIPTS)]) == {
        ("s3:ObjectCreated:*", invoke_id, "transcripts/", ".json")
    }
    # No recursion: results never start another run; the model bucket triggers nothing either.
    assert set(wired) == {bucket_id(synth, BucketRole.INPUT), bucket_id(synth, BucketRole.TRANSCRIPTS)}


def test_s3_may_invoke_each_function_only_from_its_bucket(synth: Synth) -> None:
    for handler, role in ((Handler.TRANSCRIBE_TRIGGER, BucketRole.INPUT), (Handler.INVOKE_SD, BucketRole.TRANSCRIPTS)):
        fn_id, _ = function(synth, handler)
        synth.infra_template.has_resource_properties(
            "AWS::Lambda::Permission",
            {
                "Principal": "s3.amazonaws.com",
                "FunctionName": {"Fn::GetAtt": [fn_id, "Arn"]},
                "SourceArn": {"Fn::GetAtt": [bucket_id(synth, role), "Arn"]},
                "SourceAccount": ACCOUNT,
            },
        )


# --- EventBridge ---------------------------------------------------------------------------


def test_failed_pipeline_jobs_reach_transcribe_failed_through_the_shared_event_pattern(synth: Synth) -> None:
    rules = synth.infra_template.find_resources("AWS::Events::Rule")
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


def test_only_eventbridge_and_s3_invoke_the_functions(synth: Synth) -> None:
    principals = {
        (perm["Properties"]["FunctionName"]["Fn::GetAtt"][0], perm["Properties"]["Principal"])
        for perm in synth.infra_template.find_resources("AWS::Lambda::Permission").values()
        if perm["Properties"]["FunctionName"].get("Fn::GetAtt", [""])[0] in {function(synth, h)[0] for h in Handler}
    }
    assert principals == {
        (function(synth, Handler.TRANSCRIBE_TRIGGER)[0], "s3.amazonaws.com"),
        (function(synth, Handler.INVOKE_SD)[0], "s3.amazonaws.com"),
        (function(synth, Handler.TRANSCRIBE_FAILED)[0], "events.amazonaws.com"),
    }


# --- functions -----------------------------------------------------------------------------


def test_functions_run_current_python_with_json_logs_in_their_own_log_group(synth: Synth) -> None:
    groups = synth.infra_template.find_resources("AWS::Logs::LogGroup")
    for handler in Handler:
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
    # Four endpoint attempts of up to 70 s read + 10 s connect (the real-time limit is 60 s) plus backoff.
    assert function(synth, Handler.INVOKE_SD)[1]["Properties"]["Timeout"] >= 4 * 80 + 10


def test_invoke_sd_concurrency_is_reserved_and_can_be_switched_off(synth: Synth, synth_variant: Synth) -> None:
    assert function(synth, Handler.INVOKE_SD)[1]["Properties"]["ReservedConcurrentExecutions"] == 2
    assert "ReservedConcurrentExecutions" not in function(synth, Handler.TRANSCRIBE_TRIGGER)[1]["Properties"]
    assert "ReservedConcurrentExecutions" not in function(synth, Handler.TRANSCRIBE_FAILED)[1]["Properties"]
    assert "ReservedConcurrentExecutions" not in function(synth_variant, Handler.INVOKE_SD)[1]["Properties"]


def test_failed_events_go_to_an_encrypted_ssl_only_dead_letter_queue(synth: Synth) -> None:
    queues = synth.infra_template.find_resources("AWS::SQS::Queue")
    assert len(queues) == len(Handler) == 3
    for queue in queues.values():
        assert queue["Properties"]["SqsManagedSseEnabled"] is True
        assert queue["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600
    secured = set()
    for policy in synth.infra_template.find_resources("AWS::SQS::QueuePolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if (
                statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
                and statement["Effect"] == "Deny"
            ):
                secured |= {ref["Ref"] for ref in policy["Properties"]["Queues"]}
    assert secured == set(queues)
    invoke_configs = synth.infra_template.find_resources("AWS::Lambda::EventInvokeConfig")
    targets = {}
    for config in invoke_configs.values():
        props = config["Properties"]
        assert props["MaximumRetryAttempts"] == 2
        assert props["MaximumEventAgeInSeconds"] == 6 * 3600
        targets[props["FunctionName"]["Ref"]] = props["DestinationConfig"]["OnFailure"]["Destination"]["Fn::GetAtt"][0]
    fn_ids = {function(synth, handler)[0] for handler in Handler}
    assert set(targets) == fn_ids
    assert set(targets.values()) == set(queues), "each function has its own dead-letter queue"


def test_lambda_assets_hold_only_their_own_handler_and_the_shared_package(synth: Synth) -> None:
    for handler in Handler:
        _, fn = function(synth, handler)
        asset_hash = fn["Properties"]["Code"]["S3Key"].removesuffix(".zip")
        folder = synth.assembly_dir / f"asset.{asset_hash}"
        assert (folder / handler.value / "handler.py").is_file()
        assert (folder / "pipeline_common").is_dir()
        assert [other for other in Handler if other is not handler and (folder / other.value).exists()] == []
        assert not list(folder.rglob("__pycache__"))


def test_handler_environment_is_the_shared_definition(synth: Synth) -> None:
    names = {role: {"Ref": bucket_id(synth, role)} for role in BucketRole}
    for handler in Handler:
        _, fn = function(synth, handler)
        env = fn["Properties"]["Environment"]["Variables"]
        config = PipelineConfig.from_context(synth.app.node.try_get_context)
        assert env == handler_environment(handler, config, names)


def test_transcription_language_is_fixed_or_identified(synth: Synth, synth_variant: Synth) -> None:
    env = function(synth, Handler.TRANSCRIBE_TRIGGER)[1]["Properties"]["Environment"]["Variables"]
    assert env["LANGUAGE_CODE"] == "en-US"
    env = function(synth_variant, Handler.TRANSCRIBE_TRIGGER)[1]["Properties"]["Environment"]["Variables"]
    assert (env["LANGUAGE_CODE"], env["LANGUAGE_OPTIONS"]) == ("auto", "en-US,de-DE")


def test_image_parameters_come_from_context(synth: Synth, synth_variant: Synth) -> None:
    env = function(synth, Handler.INVOKE_SD)[1]["Properties"]["Environment"]["Variables"]
    assert json.loads(env["IMAGE_PARAMETERS"]) == {
        "num_inference_steps": 25,
        "guidance_scale": 7.5,
        "height": 512,
        "width": 512,
    }
    env = function(synth_variant, Handler.INVOKE_SD)[1]["Properties"]["Environment"]["Variables"]
    assert json.loads(env["IMAGE_PARAMETERS"])["seed"] == 42
    assert json.loads(env["IMAGE_PARAMETERS"])["height"] == 768


# --- IAM -----------------------------------------------------------------------------------


PIPELINE_JOBS = f"arn:<AWS::Partition>:transcribe:{REGION}:{ACCOUNT}:transcription-job/s2i-*"


def own_infra(synth: Synth, handler: Handler) -> set[tuple[str, str]]:
    """What every stage may do besides its task: write its own log group, send to its own queue."""
    log_group = f"<{logical_id(synth, stage(synth, handler).log_group)}.Arn>"
    queue = f"<{logical_id(synth, stage(synth, handler).dead_letter_queue)}.Arn>"
    return {
        ("logs:CreateLogStream", log_group),
        ("logs:PutLogEvents", log_group),
        ("sqs:SendMessage", queue),
        ("sqs:GetQueueAttributes", queue),
        ("sqs:GetQueueUrl", queue),
    }


def test_transcribe_trigger_has_exactly_the_permissions_it_needs(synth: Synth) -> None:
    assert statements(synth, Handler.TRANSCRIBE_TRIGGER) == own_infra(synth, Handler.TRANSCRIBE_TRIGGER) | {
        # Only this pipeline's jobs (JOB_NAME_PREFIX), not every job in the account.
        ("transcribe:StartTranscriptionJob", PIPELINE_JOBS),
        ("s3:GetObject", arn(synth, BucketRole.INPUT, "/*")),
        ("s3:ListBucket", arn(synth, BucketRole.INPUT, "")),
        ("s3:PutObject", arn(synth, BucketRole.TRANSCRIPTS, "/transcripts/*")),
        ("s3:PutObject", arn(synth, BucketRole.OUTPUT, "/errors/*")),
        # An error record first removes the key's stale image set; a started job, a stale error record.
        ("s3:DeleteObject", arn(synth, BucketRole.OUTPUT, "/images/*")),
        ("s3:DeleteObject", arn(synth, BucketRole.OUTPUT, "/errors/*")),
    }


def test_invoke_sd_has_exactly_the_permissions_it_needs(synth: Synth) -> None:
    assert statements(synth, Handler.INVOKE_SD) == own_infra(synth, Handler.INVOKE_SD) | {
        # The exact transcript version its event names.
        ("s3:GetObject", arn(synth, BucketRole.TRANSCRIPTS, "/transcripts/*")),
        ("s3:GetObjectVersion", arn(synth, BucketRole.TRANSCRIPTS, "/transcripts/*")),
        # The current upload's ETag: superseded or gone?
        ("s3:ListBucket", arn(synth, BucketRole.INPUT, "")),
        # The repeat check reads images/<key>.json (a missing one must read as 404, not 403).
        ("s3:GetObject", arn(synth, BucketRole.OUTPUT, "/images/*")),
        ("s3:ListBucket", arn(synth, BucketRole.OUTPUT, "")),
        ("s3:PutObject", arn(synth, BucketRole.OUTPUT, "/images/*")),
        ("s3:PutObject", arn(synth, BucketRole.OUTPUT, "/errors/*")),
        # One result per upload: each kind of result removes the other.
        ("s3:DeleteObject", arn(synth, BucketRole.OUTPUT, "/images/*")),
        ("s3:DeleteObject", arn(synth, BucketRole.OUTPUT, "/errors/*")),
        ("sagemaker:InvokeEndpoint", f"arn:<AWS::Partition>:sagemaker:{REGION}:{ACCOUNT}:endpoint/speech-to-image-sd"),
    }


def test_transcribe_failed_has_exactly_the_permissions_it_needs(synth: Synth) -> None:
    assert statements(synth, Handler.TRANSCRIBE_FAILED) == own_infra(synth, Handler.TRANSCRIBE_FAILED) | {
        ("transcribe:GetTranscriptionJob", PIPELINE_JOBS),
        ("s3:ListBucket", arn(synth, BucketRole.INPUT, "")),
        ("s3:PutObject", arn(synth, BucketRole.OUTPUT, "/errors/*")),
        ("s3:DeleteObject", arn(synth, BucketRole.OUTPUT, "/images/*")),
    }


def test_no_function_may_change_uploads_transcripts_or_the_model(synth: Synth) -> None:
    writes = {"s3:PutObject", "s3:DeleteObject"}
    for handler in Handler:
        for action, resource in statements(synth, handler):
            if action in writes and resource.startswith("<Buckets"):
                assert resource.startswith(arn(synth, BucketRole.OUTPUT, "/")) or (
                    handler is Handler.TRANSCRIBE_TRIGGER and action == "s3:PutObject"
                ), f"{handler} may {action} {resource}"


def test_no_wildcard_actions_and_no_managed_policies_on_pipeline_roles(synth: Synth) -> None:
    for handler in Handler:
        for action, _ in statements(synth, handler):
            assert "*" not in action
        _, fn = function(synth, handler)
        role = synth.infra_template.find_resources("AWS::IAM::Role")[fn["Properties"]["Role"]["Fn::GetAtt"][0]]
        assert "ManagedPolicyArns" not in role["Properties"]


def test_endpoint_arn_is_lower_cased_like_sagemaker_does(synth_variant: Synth) -> None:
    assert (
        "sagemaker:InvokeEndpoint",
        f"arn:<AWS::Partition>:sagemaker:{REGION}:{ACCOUNT}:endpoint/my-sd-endpoint",
    ) in statements(synth_variant, Handler.INVOKE_SD)
    env = function(synth_variant, Handler.INVOKE_SD)[1]["Properties"]["Environment"]["Variables"]
    assert env["ENDPOINT_NAME"] == "My-SD-Endpoint"


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
    queues = {name: output["Value"] for name, output in outputs.items() if name.endswith("DeadLetterQueueUrl")}
    assert queues == {
        "TranscribeTriggerDeadLetterQueueUrl": {
            "Ref": logical_id(synth, stage(synth, Handler.TRANSCRIBE_TRIGGER).dead_letter_queue)
        },
        "InvokeSdDeadLetterQueueUrl": {"Ref": logical_id(synth, stage(synth, Handler.INVOKE_SD).dead_letter_queue)},
        "TranscribeFailedDeadLetterQueueUrl": {
            "Ref": logical_id(synth, stage(synth, Handler.TRANSCRIBE_FAILED).dead_letter_queue)
        },
    }
    assert outputs["AlarmTopicArn"]["Value"] == {"Ref": logical_id(synth, synth.infra.alarm_topic.topic)}


def test_infra_stack_holds_no_sagemaker_resources(synth: Synth) -> None:
    template = synth.infra_template.to_json()["Resources"]
    assert not [r for r in template.values() if r["Type"].startswith("AWS::SageMaker::")]
