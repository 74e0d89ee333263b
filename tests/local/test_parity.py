"""Parity between the deployed and the local pipeline: the synthesized InfraStack and the running local
runtime must wire the same notifications (bucket, handler, event types, prefix/suffix filters) and give
each handler the same environment variable names.

Both sides are read back from what they actually built: the CloudFormation template on one side, the
running moto S3 and the handler processes' environments on the other. Functions are identified by their
Handler string and buckets by the handler environment that references them, never by logical IDs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

# Before jsii starts node: no end-of-life banner in the test output (as tests/infra/conftest.py does).
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from infra.config import PipelineConfig
from infra.pipeline import BucketRole, Handler, handler_environment
from infra.stacks.infra_stack import InfraStack
from local.runtime import CDK_JSON, LocalRuntime, load_config

# (bucket role, handler, events, filter rules): one S3 notification as both sides describe it.
Notification = tuple[BucketRole, Handler, tuple[str, ...], tuple[tuple[str, str], ...]]


@pytest.fixture(scope="module")
def config() -> PipelineConfig:
    """The configuration both sides are built from: cdk.json's context."""
    return load_config()


@pytest.fixture(scope="module")
def template(config: PipelineConfig) -> dict[str, Any]:
    """InfraStack synthesized by the CDK with cdk.json's context (feature flags included), as a dict."""
    context = json.loads(CDK_JSON.read_text(encoding="utf-8"))["context"]
    # The built-in CloudFormation validator costs ~5 s per app (FACTS.md); `make synth` keeps it on.
    app = cdk.App(context=context, builtin_cloud_formation_validation=False)
    # The same configuration the CDK app builds from the same context.
    assert PipelineConfig.from_context(app.node.try_get_context) == config
    environment = cdk.Environment(account=config.account, region=config.region)
    stack = InfraStack(app, "InfraStack", config=config, env=environment)
    return Template.from_stack(stack).to_json()


@pytest.fixture(scope="module")
def runtime(config: PipelineConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    """The local runtime with the real handlers (no model: parity does not need one)."""
    runtime = LocalRuntime(config, None, log_dir=tmp_path_factory.mktemp("logs"))
    runtime.start()
    yield runtime
    runtime.stop()


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: body for name, body in template["Resources"].items() if body["Type"] == kind}


def template_functions(template: dict[str, Any]) -> dict[Handler, tuple[str, dict[str, Any]]]:
    """Each handler's Lambda function (logical id, properties), found by its Handler string."""
    found: dict[Handler, tuple[str, dict[str, Any]]] = {}
    for name, body in _resources(template, "AWS::Lambda::Function").items():
        for handler in Handler:
            if body["Properties"].get("Handler") == handler.entry_point:
                assert handler not in found, f"two functions run {handler.entry_point}"
                found[handler] = (name, body["Properties"])
    return found


def template_bucket_roles(template: dict[str, Any], config: PipelineConfig) -> dict[str, BucketRole]:
    """Bucket logical id -> role, read from the variables that carry bucket names to the handlers."""
    marker = {role: f"<{role.value}>" for role in BucketRole}
    roles: dict[str, BucketRole] = {}
    for handler, (_, properties) in template_functions(template).items():
        variables = properties.get("Environment", {}).get("Variables", {})
        for variable, value in handler_environment(handler, config, marker, "<ledger>").items():
            role = next((role for role, text in marker.items() if text == value), None)
            reference = variables.get(variable)
            if role is not None and isinstance(reference, dict) and "Ref" in reference:
                roles[reference["Ref"]] = role
    return roles


def _rules(configuration: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    rules = configuration.get("Filter", {}).get("Key", {}).get("FilterRules", [])
    return tuple(sorted((rule["Name"].lower(), rule["Value"]) for rule in rules))


def template_queue_functions(template: dict[str, Any]) -> dict[str, tuple[Handler, dict[str, Any]]]:
    """Queue logical id -> (the handler its event source mapping invokes, the mapping's properties)."""
    handlers = {name: handler for handler, (name, _) in template_functions(template).items()}
    found: dict[str, tuple[Handler, dict[str, Any]]] = {}
    for body in _resources(template, "AWS::Lambda::EventSourceMapping").values():
        properties = body["Properties"]
        queue = properties["EventSourceArn"]["Fn::GetAtt"][0]
        found[queue] = (handlers[properties["FunctionName"]["Ref"]], properties)
    return found


def template_notifications(template: dict[str, Any], config: PipelineConfig) -> list[Notification]:
    """Every S3 notification in the synthesized stack, to the handler behind its queue."""
    roles = template_bucket_roles(template, config)
    handlers = {name: handler for handler, (name, _) in template_functions(template).items()}
    queues = template_queue_functions(template)
    found: list[Notification] = []
    for body in _resources(template, "Custom::S3BucketNotifications").values():
        properties = body["Properties"]
        role = roles[properties["BucketName"]["Ref"]]
        configuration = properties["NotificationConfiguration"]
        assert not configuration.get("TopicConfigurations"), f"topics on the {role.value} bucket: not mirrored locally"
        for item in configuration.get("QueueConfigurations", []):
            handler = queues[item["QueueArn"]["Fn::GetAtt"][0]][0]
            found.append((role, handler, tuple(sorted(item["Events"])), _rules(item)))
        for item in configuration.get("LambdaFunctionConfigurations", []):
            handler = handlers[item["LambdaFunctionArn"]["Fn::GetAtt"][0]]
            found.append((role, handler, tuple(sorted(item["Events"])), _rules(item)))
    return sorted(found)


def template_queue_settings(template: dict[str, Any]) -> dict[Handler, tuple[int, int, int, bool]]:
    """Per handler fed by a queue: (batch size, maximum concurrency, maxReceiveCount, partial batch responses)."""
    queues = _resources(template, "AWS::SQS::Queue")
    found: dict[Handler, tuple[int, int, int, bool]] = {}
    for queue, (handler, mapping) in template_queue_functions(template).items():
        found[handler] = (
            mapping["BatchSize"],
            mapping["ScalingConfig"]["MaximumConcurrency"],
            queues[queue]["Properties"]["RedrivePolicy"]["maxReceiveCount"],
            "ReportBatchItemFailures" in mapping.get("FunctionResponseTypes", []),
        )
    return found


def local_queue_settings(runtime: LocalRuntime) -> dict[Handler, tuple[int, int, int, bool]]:
    """The same, read back from the running local queues and the dispatcher's pollers."""
    sqs = runtime.aws.client("sqs")
    found: dict[Handler, tuple[int, int, int, bool]] = {}
    assert runtime.dispatcher is not None
    for binding in runtime.aws.queues:
        attributes = sqs.get_queue_attributes(QueueUrl=binding.url, AttributeNames=["RedrivePolicy"]).get(
            "Attributes", {}
        )
        if "RedrivePolicy" not in attributes:
            continue
        pollers = [thread for thread in runtime.dispatcher._threads if f"-{binding.handler.value}-" in thread.name]
        found[binding.handler] = (
            binding.route.queue.batch_size,  # type: ignore[union-attr]
            len(pollers),
            json.loads(attributes["RedrivePolicy"])["maxReceiveCount"],
            True,
        )
    return found


def local_notifications(runtime: LocalRuntime) -> list[Notification]:
    """Every notification the running local S3 reports (to the queues that stand in for the functions)."""
    found: list[Notification] = []
    for role in BucketRole:
        configuration = runtime.read_notification_configuration(role)
        for item in configuration.get("QueueConfigurations", []):
            handler = runtime.aws.handler_for_queue_arn(item["QueueArn"])
            found.append((role, handler, tuple(sorted(item["Events"])), _rules(item)))
        assert not configuration.get("LambdaFunctionConfigurations")
        assert not configuration.get("TopicConfigurations")
    return sorted(found)


def compare_notifications(deployed: list[Notification], local: list[Notification]) -> list[str]:
    """Human-readable differences ([] when the two sides agree)."""
    differences = []
    for item in deployed:
        if deployed.count(item) != local.count(item):
            differences.append(f"deployed only: {item}")
    for item in local:
        if local.count(item) != deployed.count(item):
            differences.append(f"local only: {item}")
    return sorted(set(differences))


def test_the_stack_has_one_function_per_handler(template: dict[str, Any]) -> None:
    assert set(template_functions(template)) == set(Handler)


def test_notifications_are_the_same(template: dict[str, Any], runtime: LocalRuntime, config: PipelineConfig) -> None:
    deployed = template_notifications(template, config)
    local = local_notifications(runtime)
    assert deployed, "no notifications found in the template: the parity check would be empty"
    assert {role for role, *_ in deployed} >= {BucketRole.INPUT, BucketRole.TRANSCRIPTS}
    assert compare_notifications(deployed, local) == []


def test_queues_feed_the_handlers_the_same_way(
    template: dict[str, Any], runtime: LocalRuntime, config: PipelineConfig
) -> None:
    deployed = template_queue_settings(template)
    expected = {Handler.TRANSCRIBE_TRIGGER, Handler.INVOKE_SD} | ({Handler.ASYNC_RESULT} if config.is_async else set())
    assert set(deployed) == expected
    assert local_queue_settings(runtime) == deployed


def template_result_subscriptions(template: dict[str, Any]) -> list[tuple[str, Handler, bool]]:
    """SNS -> SQS subscriptions: (topic logical id, the handler behind the queue, raw message delivery)."""
    queues = template_queue_functions(template)
    found = []
    for body in _resources(template, "AWS::SNS::Subscription").values():
        properties = body["Properties"]
        if properties.get("Protocol") != "sqs":
            continue
        queue = properties["Endpoint"]["Fn::GetAtt"][0]
        raw = properties.get("RawMessageDelivery") in (True, "true")
        found.append((properties["TopicArn"]["Ref"], queues[queue][0], raw))
    return sorted(found)


def test_async_notifications_reach_async_result_raw(
    template: dict[str, Any], runtime: LocalRuntime, config: PipelineConfig
) -> None:
    """AWS: success and error topics, raw delivery, one queue to async_result; locally the endpoint sends there."""
    assert config.is_async, "cdk.json's default is the async endpoint"
    subscriptions = template_result_subscriptions(template)
    assert len({topic for topic, *_ in subscriptions}) == 2
    assert {(handler, raw) for _, handler, raw in subscriptions} == {(Handler.ASYNC_RESULT, True)}
    assert runtime.endpoint.async_endpoint is not None
    queue = runtime.aws.queue_for(Handler.ASYNC_RESULT)
    # The local async endpoint delivers to exactly the queue the dispatcher feeds to async_result.
    assert runtime.endpoint.async_endpoint.notification_queue_url == queue.url


def test_environment_variable_names_are_the_same(template: dict[str, Any], runtime: LocalRuntime) -> None:
    for handler, (_, properties) in template_functions(template).items():
        deployed = set(properties.get("Environment", {}).get("Variables", {}))
        configured = runtime.function_environment(handler)
        assert deployed == set(configured), handler.value
        # Literal values (everything but bucket names, which are CloudFormation references) match too.
        literals = {
            name: value
            for name, value in properties.get("Environment", {}).get("Variables", {}).items()
            if isinstance(value, str)
        }
        assert literals, "no literal variables: the value comparison would be empty"
        assert {name: configured[name] for name in literals} == literals, handler.value
        # And the handler process really runs with them.
        actual = runtime.functions[handler].read_environment()
        assert {name: actual.get(name) for name in configured} == configured


def test_a_one_sided_change_is_caught(template: dict[str, Any], runtime: LocalRuntime, config: PipelineConfig) -> None:
    """The comparison itself can fail: drop one filtered notification on the local side and it must say so."""
    bucket = runtime.bucket_names[BucketRole.TRANSCRIPTS]
    s3 = runtime.aws.client("s3")
    original = runtime.read_notification_configuration(BucketRole.TRANSCRIPTS)
    dropped = original["QueueConfigurations"][0]
    changed = {"QueueConfigurations": original["QueueConfigurations"][1:]}
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=changed)
    try:
        differences = compare_notifications(template_notifications(template, config), local_notifications(runtime))
    finally:
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=original)
    suffix = dict(_rules(dropped))["suffix"]
    assert differences == [
        f"deployed only: {(BucketRole.TRANSCRIPTS, Handler.INVOKE_SD, ('s3:ObjectCreated:*',), _rules(dropped))}"
    ]
    assert suffix in differences[0]


def test_local_results_never_notify(runtime: LocalRuntime, template: dict[str, Any], config: PipelineConfig) -> None:
    roles = {role for role, *_ in template_notifications(template, config)}
    assert BucketRole.OUTPUT not in roles
    assert not runtime.read_notification_configuration(BucketRole.OUTPUT).get("QueueConfigurations")


def test_every_handler_runs_with_handler_environment(runtime: LocalRuntime, config: PipelineConfig) -> None:
    """Every function, the sweeper and async_result included: exactly `handler_environment(...)`."""
    assert set(runtime.functions) == set(Handler)
    for handler in Handler:
        expected = handler_environment(handler, runtime.config, runtime.bucket_names, runtime.aws.ledger_table)
        assert runtime.function_environment(handler) == expected, handler.value
        actual = runtime.functions[handler].read_environment()
        assert {name: actual.get(name) for name in expected} == expected, handler.value
    assert runtime.function_environment(Handler.SWEEPER)["STUCK_AFTER_MINUTES"] == str(config.stuck_after_minutes)
