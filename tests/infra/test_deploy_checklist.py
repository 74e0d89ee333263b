"""docs/DEPLOY-CHECKLIST.md, asserted: each documented AWS requirement that is a template property, in the exact form
AWS documents (principal, actions, resources, conditions), in both endpoint modes. moto and synth accept every one
of these when it is wrong; a real first deploy does not. Removing or narrowing a statement fails a test here."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest

from infra.config import PipelineConfig
from infra.pipeline import TRANSCRIPT_PREFIX, BucketRole, Handler, routes
from lambdas.pipeline_common.keys import transcript_key
from tests.infra.conftest import ACCOUNT, REGION, Synth
from tests.infra.support import bucket_id, dead_letter_queue_id, function, logical_id, source_queue_id, statements

# The object Amazon Transcribe writes under the output key's prefix to test its write access (FACTS.md).
TRANSCRIBE_PROBE_KEY = f"{TRANSCRIPT_PREFIX}.write_access_check_file.temp"
AUTOSCALING_ROLE = (
    "role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
    "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
)


@pytest.fixture(params=["async", "realtime"])
def app(request: pytest.FixtureRequest, synth: Synth, synth_realtime: Synth) -> Synth:
    """Both endpoint modes with cdk.json's defaults."""
    return synth if request.param == "async" else synth_realtime


def resources(template: Any, resource_type: str) -> dict[str, dict[str, Any]]:
    return template.find_resources(resource_type)


def queue_policy_statements(synth: Synth, queue_id: str) -> list[dict[str, Any]]:
    """Every statement of the queue policies that name `queue_id`."""
    found = []
    for policy in resources(synth.infra_template, "AWS::SQS::QueuePolicy").values():
        if {"Ref": queue_id} in policy["Properties"]["Queues"]:
            found += policy["Properties"]["PolicyDocument"]["Statement"]
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- S3 -> SQS, queue encryption, topic encryption ---------------------------------------------------------------


def test_s3_may_send_to_each_route_queue_from_its_bucket(app: Synth) -> None:
    for route in routes(_config_of(app)):
        queue = source_queue_id(app, route.handler)
        allows = [s for s in queue_policy_statements(app, queue) if s["Effect"] == "Allow"]
        (statement,) = [s for s in allows if s["Principal"] == {"Service": "s3.amazonaws.com"}]
        assert "sqs:SendMessage" in as_list(statement["Action"])
        assert statement["Resource"] == {"Fn::GetAtt": [queue, "Arn"]}
        assert statement["Condition"] == {
            "ArnLike": {"aws:SourceArn": {"Fn::GetAtt": [bucket_id(app, route.bucket), "Arn"]}}
        }


def _config_of(synth: Synth) -> PipelineConfig:
    """The configuration the synthesized app was built from (its context, as infra/app.py reads it)."""
    return PipelineConfig.from_context(synth.app.node.try_get_context)


def test_every_queue_a_service_writes_to_uses_sse_sqs_never_an_aws_managed_key(app: Synth) -> None:
    # S3, SNS, EventBridge and Lambda destinations cannot use alias/aws/sqs; SSE-SQS needs no key policy at all.
    queues = resources(app.infra_template, "AWS::SQS::Queue")
    assert queues
    for queue in queues.values():
        assert queue["Properties"].get("SqsManagedSseEnabled") is True
        assert "KmsMasterKeyId" not in queue["Properties"]


def test_every_topic_uses_a_customer_key_of_its_own_stack(app: Synth) -> None:
    keys = set(resources(app.infra_template, "AWS::KMS::Key"))
    for topic in resources(app.infra_template, "AWS::SNS::Topic").values():
        key = topic["Properties"]["KmsMasterKeyId"]
        assert "alias/aws/sns" not in json.dumps(key)
        assert key["Fn::GetAtt"][0] in keys and key["Fn::GetAtt"][1] == "Arn"


# --- The alarm topic: key statement and topic policy --------------------------------------------------------------


def test_alarm_key_lets_cloudwatch_encrypt_in_awss_documented_form(app: Synth) -> None:
    key = resources(app.infra_template, "AWS::KMS::Key")[logical_id(app, app.infra.alarm_topic.key)]
    statements_ = key["Properties"]["KeyPolicy"]["Statement"]
    (cloudwatch,) = [s for s in statements_ if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}]
    # Exactly this: no condition (kms:CallerAccount / kms:ViaService / aws:SourceAccount here are not documented
    # and a wrong one silently drops every alarm notification).
    assert cloudwatch == {
        "Sid": "AllowCloudWatchAlarmsToPublishToTheEncryptedTopic",
        "Effect": "Allow",
        "Principal": {"Service": "cloudwatch.amazonaws.com"},
        "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
        "Resource": "*",
    }


def test_alarm_topic_lets_cloudwatch_publish_for_this_accounts_alarms(app: Synth) -> None:
    topic = logical_id(app, app.infra.alarm_topic.topic)
    (policy,) = [
        p
        for p in resources(app.infra_template, "AWS::SNS::TopicPolicy").values()
        if p["Properties"]["Topics"] == [{"Ref": topic}]
    ]
    (publish,) = [
        s
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
        if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}
    ]
    assert (publish["Effect"], publish["Action"], publish["Resource"]) == ("Allow", "sns:Publish", {"Ref": topic})
    assert publish["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    arn = publish["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Join"][1]
    assert arn[-1] == f":cloudwatch:{REGION}:{ACCOUNT}:alarm:*"


# --- EventBridge dead-letter queues -------------------------------------------------------------------------------


@pytest.mark.parametrize("handler", [Handler.TRANSCRIBE_FAILED, Handler.SWEEPER])
def test_eventbridge_may_dead_letter_only_from_its_rule(synth: Synth, handler: Handler) -> None:
    queue = dead_letter_queue_id(synth, handler)
    (statement,) = [
        s for s in queue_policy_statements(synth, queue) if s.get("Principal") == {"Service": "events.amazonaws.com"}
    ]
    assert (statement["Effect"], statement["Action"]) == ("Allow", "sqs:SendMessage")
    assert statement["Resource"] == {"Fn::GetAtt": [queue, "Arn"]}
    rule = statement["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::GetAtt"]
    assert rule[1] == "Arn" and resources(synth.infra_template, "AWS::Events::Rule")[rule[0]]


# --- SQS event source mappings ------------------------------------------------------------------------------------


def _mappings(synth: Synth) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(mapping, queue, function) properties of every SQS event source mapping."""
    template = synth.infra_template
    queues = resources(template, "AWS::SQS::Queue")
    functions = resources(template, "AWS::Lambda::Function")
    found = []
    for mapping in resources(template, "AWS::Lambda::EventSourceMapping").values():
        props = mapping["Properties"]
        queue = queues[props["EventSourceArn"]["Fn::GetAtt"][0]]["Properties"]
        found.append((props, queue, functions[props["FunctionName"]["Ref"]]["Properties"]))
    return found


def test_each_queue_hides_a_message_for_at_least_six_function_timeouts(app: Synth) -> None:
    # Lambda refuses the mapping if the visibility timeout is below the function timeout; AWS recommends 6x.
    mappings = _mappings(app)
    assert len(mappings) == len([s for s in app.infra.stages.values() if s.source_queue is not None])
    for mapping, queue, fn in mappings:
        assert queue["VisibilityTimeout"] >= 6 * fn["Timeout"]
        assert 2 <= mapping["ScalingConfig"]["MaximumConcurrency"] <= 1000
        assert "MaximumBatchingWindowInSeconds" not in mapping, "a batching window would add to the 6x"


def test_each_source_queue_dead_letters_after_at_least_five_receives(app: Synth) -> None:
    for _, queue, _ in _mappings(app):
        assert queue["RedrivePolicy"]["maxReceiveCount"] >= 5


# --- Amazon Transcribe writes with the caller's credentials -------------------------------------------------------


def test_transcribe_trigger_may_read_the_media_and_write_the_transcript_and_the_probe(synth: Synth) -> None:
    granted = statements(synth, Handler.TRANSCRIBE_TRIGGER)
    media = f"<{bucket_id(synth, BucketRole.INPUT)}.Arn>/*"
    assert ("s3:GetObject", media) in granted
    puts = {resource for action, resource in granted if action == "s3:PutObject"}
    transcripts = f"<{bucket_id(synth, BucketRole.TRANSCRIPTS)}.Arn>/"
    (pattern,) = [resource for resource in puts if resource.startswith(transcripts)]
    for key in (transcript_key(TRANSCRIPT_PREFIX, "some/upload name.mp3"), TRANSCRIBE_PROBE_KEY):
        assert fnmatch.fnmatchcase(transcripts + key, pattern), f"{key} is outside {pattern}"


def _route_matches(key: str, prefix: str, suffixes: tuple[str, ...]) -> bool:
    """Whether S3 would send an ObjectCreated event for `key` under a route's filter (case-sensitive, like S3)."""
    return key.startswith(prefix) and (not suffixes or any(key.endswith(suffix) for suffix in suffixes))


def test_transcribes_write_probe_never_reaches_a_handler(app: Synth) -> None:
    config = _config_of(app)
    transcripts = [route for route in routes(config) if route.bucket is BucketRole.TRANSCRIPTS]
    assert transcripts and all(route.suffixes == (".json",) for route in transcripts)
    assert not any(_route_matches(TRANSCRIBE_PROBE_KEY, r.prefix, r.suffixes) for r in transcripts)
    assert all(_route_matches(transcript_key(TRANSCRIPT_PREFIX, "a.mp3"), r.prefix, r.suffixes) for r in transcripts)
    # ...and the deployed notification is exactly that filter.
    (notification,) = [
        n
        for n in resources(app.infra_template, "Custom::S3BucketNotifications").values()
        if n["Properties"]["BucketName"] == {"Ref": bucket_id(app, BucketRole.TRANSCRIPTS)}
    ]
    (queue_config,) = notification["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert sorted((rule["Name"], rule["Value"]) for rule in queue_config["Filter"]["Key"]["FilterRules"]) == [
        ("prefix", TRANSCRIPT_PREFIX),
        ("suffix", ".json"),
    ]


# --- The SageMaker execution role ---------------------------------------------------------------------------------


def _role_statements(synth: Synth) -> list[dict[str, Any]]:
    (policy,) = resources(synth.endpoint_template, "AWS::IAM::Policy").values()
    return policy["Properties"]["PolicyDocument"]["Statement"]


def _granted(synth: Synth) -> dict[str, list[str]]:
    """Action -> rendered resources of the execution role's policy."""
    granted: dict[str, list[str]] = {}
    for statement in _role_statements(synth):
        assert statement["Effect"] == "Allow" and "Condition" not in statement
        for action in as_list(statement["Action"]):
            granted.setdefault(action, []).extend(json.dumps(r) for r in as_list(statement["Resource"]))
    return granted


def test_execution_role_has_awss_documented_hosting_set(app: Synth) -> None:
    (role,) = resources(app.endpoint_template, "AWS::IAM::Role").values()
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "sagemaker.amazonaws.com"
    }
    granted = _granted(app)
    assert granted["cloudwatch:PutMetricData"] == ['"*"']
    assert granted["ecr:GetAuthorizationToken"] == ['"*"']
    for action in ("ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"):
        (repo,) = granted[action]
        assert f":ecr:{REGION}:763104351884:repository/huggingface-pytorch-inference" in repo
    log_group = logical_id_in(app.endpoint, app.endpoint.sd_endpoint.log_group)
    for action in ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"):
        assert granted[action] == [json.dumps({"Fn::GetAtt": [log_group, "Arn"]})]
    (model,) = [r for r in granted["s3:GetObject"] if "BucketsModel" in r]
    assert model.endswith('"/models/stable-diffusion-v1-4/model.tar.gz"]]}')


def logical_id_in(stack: Any, construct: Any) -> str:
    return stack.get_logical_id(construct.node.default_child)


def test_model_and_endpoint_are_created_after_the_roles_policy(app: Synth) -> None:
    (policy,) = resources(app.endpoint_template, "AWS::IAM::Policy")
    for resource_type in ("AWS::SageMaker::Model", "AWS::SageMaker::Endpoint"):
        (resource,) = resources(app.endpoint_template, resource_type).values()
        assert policy in resource["DependsOn"]


def test_async_role_reads_requests_writes_results_and_publishes_through_the_topics_key(synth: Synth) -> None:
    granted = _granted(synth)
    transcripts = "ExportsOutputFnGetAttBucketsTranscripts"
    assert any(transcripts in r and "/async/requests/*" in r for r in granted["s3:GetObject"])
    for action in ("s3:PutObject", "s3:AbortMultipartUpload"):
        paths = sorted(r.split('"')[-2] for r in granted[action] if transcripts in r)
        assert paths == ["/async/failures/*", "/async/outputs/*"]
    publish = sorted(granted["sns:Publish"])
    assert len(publish) == 2
    assert "AsyncResultRecorderTopicsError" in publish[0] and "AsyncResultRecorderTopicsSuccess" in publish[1]
    for action in ("kms:Decrypt", "kms:GenerateDataKey*"):
        (key,) = granted[action]
        assert "AsyncResultRecorderTopicsKey" in key
    # The key lets IAM policies grant its use (the account-root statement); SageMaker publishes as the role.
    key = resources(synth.infra_template, "AWS::KMS::Key")[logical_id(synth, synth.infra.async_topics.key)]
    (root,) = key["Properties"]["KeyPolicy"]["Statement"]
    assert root["Principal"] == {
        "AWS": {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, f":iam::{ACCOUNT}:root"]]}
    }


# --- Application Auto Scaling -------------------------------------------------------------------------------------


def test_scaling_uses_the_service_linked_role_and_waits_for_the_endpoint(synth: Synth) -> None:
    (target,) = resources(synth.endpoint_template, "AWS::ApplicationAutoScaling::ScalableTarget").values()
    role = target["Properties"]["RoleARN"]["Fn::Join"][1]
    assert role[-1] == f":iam::{ACCOUNT}:{AUTOSCALING_ROLE}"
    (endpoint,) = resources(synth.endpoint_template, "AWS::SageMaker::Endpoint")
    assert target["DependsOn"] == [endpoint]
    (props,) = [r["Properties"] for r in resources(synth.endpoint_template, "AWS::SageMaker::Endpoint").values()]
    assert props["RetainAllVariantProperties"] is True


# --- The Lambda runtime's SDK -------------------------------------------------------------------------------------


def test_no_handler_relies_on_s3_conditional_writes_the_runtime_sdk_may_lack() -> None:
    # The Python runtime's bundled boto3 is unpublished and varies by region. S3 conditional writes need botocore
    # >= 1.35.2 (IfNoneMatch) / 1.35.69 (IfMatch): code that uses them must bundle boto3 AND botocore, pinned
    # together (docs/DEPLOY-CHECKLIST.md). None does today; this fails the day one starts to.
    from pathlib import Path

    lambdas = Path(__file__).resolve().parents[2] / "lambdas"
    users = [
        str(path.relative_to(lambdas))
        for path in lambdas.rglob("*.py")
        if any(word in path.read_text() for word in ("IfNoneMatch", "IfMatch"))
    ]
    assert users == [], "bundle boto3+botocore pinned together for these handlers, then update the checklist"
    assert not (lambdas / "boto3").exists() and not (lambdas / "botocore").exists(), "half a bundle breaks"


def test_the_functions_run_the_runtime_the_checklist_assumes(synth: Synth) -> None:
    for handler in synth.infra.stages:
        _, fn = function(synth, handler)
        assert fn["Properties"]["Runtime"] == "python3.14"
