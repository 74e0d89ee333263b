"""The upload ledger table, the sweeper that watches it, and the dashboard of the handlers' metrics."""

from __future__ import annotations

import json
import re
from typing import Any

from aws_cdk.assertions import Annotations, Match

from infra.components.dashboard import ERRORS_BY_CODE
from infra.pipeline import (
    LEDGER_PARTITION_KEY,
    LEDGER_PENDING,
    LEDGER_PENDING_INDEX,
    LEDGER_UPDATED_AT,
    METRICS_NAMESPACE,
    SWEEP_INTERVAL_MINUTES,
    Handler,
)

from .conftest import Synth
from .support import dead_letter_queue_id, function, handlers, logical_id, queued, source_queue_id

# --- ledger table --------------------------------------------------------------------------


def table(synth: Synth) -> dict[str, Any]:
    """The one DynamoDB table's properties."""
    (resource,) = synth.infra_template.find_resources("AWS::DynamoDB::Table").values()
    return resource["Properties"]


def test_one_on_demand_table_keyed_by_upload_key(synth: Synth) -> None:
    props = table(synth)
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert "ProvisionedThroughput" not in props
    assert props["KeySchema"] == [{"AttributeName": LEDGER_PARTITION_KEY, "KeyType": "HASH"}], "no sort key"
    assert {"AttributeName": LEDGER_PARTITION_KEY, "AttributeType": "S"} in props["AttributeDefinitions"]
    assert "TableName" not in props, "a generated name, passed to the handlers"


def test_table_is_recoverable_and_encrypted(synth: Synth) -> None:
    props = table(synth)
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    # SSEEnabled without a key id: the AWS-managed key aws/dynamodb (auditable in CloudTrail, nothing to manage).
    assert props["SSESpecification"] == {"SSEEnabled": True}


def test_sparse_pending_index_lists_uploads_oldest_first(synth: Synth) -> None:
    props = table(synth)
    (index,) = props["GlobalSecondaryIndexes"]
    assert index == {
        "IndexName": LEDGER_PENDING_INDEX,
        "KeySchema": [
            {"AttributeName": LEDGER_PENDING, "KeyType": "HASH"},
            {"AttributeName": LEDGER_UPDATED_AT, "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "ALL"},
    }
    definitions = {d["AttributeName"]: d["AttributeType"] for d in props["AttributeDefinitions"]}
    assert definitions == {LEDGER_PARTITION_KEY: "S", LEDGER_PENDING: "S", LEDGER_UPDATED_AT: "S"}


def test_table_follows_the_removal_setting(synth: Synth, synth_variant: Synth) -> None:
    for result, policy in ((synth, "Delete"), (synth_variant, "Retain")):
        (resource,) = result.infra_template.find_resources("AWS::DynamoDB::Table").values()
        assert (resource["DeletionPolicy"], resource["UpdateReplacePolicy"]) == (policy, policy)


# --- sweeper -------------------------------------------------------------------------------


def test_the_sweeper_runs_on_a_schedule_and_dead_letters_what_it_cannot_deliver(synth: Synth) -> None:
    rules = {
        rule_id: rule
        for rule_id, rule in synth.infra_template.find_resources("AWS::Events::Rule").items()
        if "ScheduleExpression" in rule["Properties"]
    }
    ((rule_id, rule),) = rules.items()
    props = rule["Properties"]
    assert props["ScheduleExpression"] == f"rate({SWEEP_INTERVAL_MINUTES} minutes)"
    assert props["State"] == "ENABLED"
    (target,) = props["Targets"]
    fn_id, _ = function(synth, Handler.SWEEPER)
    assert target["Arn"] == {"Fn::GetAtt": [fn_id, "Arn"]}
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [dead_letter_queue_id(synth, Handler.SWEEPER), "Arn"]}}
    assert 1 <= target["RetryPolicy"]["MaximumRetryAttempts"] < 185, "bounded, not EventBridge's default"
    synth.infra_template.has_resource_properties(
        "AWS::Lambda::Permission",
        {
            "Action": "lambda:InvokeFunction",
            "Principal": "events.amazonaws.com",
            "FunctionName": {"Fn::GetAtt": [fn_id, "Arn"]},
            "SourceArn": {"Fn::GetAtt": [rule_id, "Arn"]},
        },
    )


def test_the_sweeper_is_not_fed_by_s3(synth: Synth) -> None:
    assert synth.infra.stages[Handler.SWEEPER].source_queue is None
    assert synth.infra.stages[Handler.TRANSCRIBE_FAILED].source_queue is None


# --- dashboard -----------------------------------------------------------------------------


def dashboard_body(synth: Synth) -> dict[str, Any]:
    """The dashboard JSON, with each CloudFormation token shown as `<Ref>` / `<Logical.Attr>`."""
    (resource,) = synth.infra_template.find_resources("AWS::CloudWatch::Dashboard").values()
    props = resource["Properties"]
    assert "DashboardName" not in props, "a generated name"
    parts = props["DashboardBody"]["Fn::Join"][1]
    text = "".join(part if isinstance(part, str) else _token(part) for part in parts)
    return json.loads(text)


def _token(part: dict[str, Any]) -> str:
    if "Ref" in part:
        return f"<{part['Ref']}>"
    logical, attribute = part["Fn::GetAtt"]
    return f"<{logical}.{attribute}>"


def widgets(synth: Synth) -> dict[str, list[list[Any]]]:
    """Each graph's metrics, by title."""
    return {w["properties"]["title"]: w["properties"]["metrics"] for w in dashboard_body(synth)["widgets"]}


def metric_lines(metrics: list[list[Any]]) -> set[tuple[Any, ...]]:
    """Each metric line without its render options: (namespace, name, dimension, value, ...), stat."""
    return {(*line[:-1], line[-1].get("stat")) for line in metrics if isinstance(line[0], str)}


def test_dashboard_counts_uploads_and_images_from_the_handlers_metrics(synth: Synth) -> None:
    graphs = widgets(synth)
    ns = METRICS_NAMESPACE
    assert metric_lines(graphs["Uploads"]) == {
        (ns, "Outcomes", "Function", "transcribe_trigger", "Outcome", "started", "Sum"),
        (ns, "Outcomes", "Function", "transcribe_trigger", "Outcome", "rejected", "Sum"),
    }
    # Async mode: invoke_sd only queues the request, async_result stores the image.
    assert metric_lines(graphs["Images generated"]) == {
        (ns, "Outcomes", "Function", handler, "Outcome", "generated", "Sum")
        for handler in ("invoke_sd", "async_result")
    }
    repeats = metric_lines(graphs["Repeats, superseded uploads and internal errors"])
    for outcome in ("duplicate", "superseded", "internal-error"):
        assert (ns, "Outcomes", "Function", "invoke_sd", "Outcome", outcome, "Sum") in repeats
    assert (ns, "Outcomes", "Function", "sweeper", "Outcome", "stuck", "Sum") in repeats


def test_realtime_dashboard_counts_images_from_invoke_sd_alone(synth_realtime: Synth) -> None:
    assert metric_lines(widgets(synth_realtime)["Images generated"]) == {
        (METRICS_NAMESPACE, "Outcomes", "Function", "invoke_sd", "Outcome", "generated", "Sum")
    }
    assert not [title for title in widgets(synth_realtime) if title.startswith("Async endpoint")]


def test_dashboard_finds_every_error_code_with_a_search(synth: Synth) -> None:
    # The CDK warns about a math expression it cannot check (e.g. unknown variables): the SEARCH passes clean.
    assert Annotations.from_stack(synth.infra).find_warning("*", Match.any_value()) == []
    ((expression,),) = widgets(synth)["Error records by code"]
    assert expression["expression"] == ERRORS_BY_CODE
    # CloudWatch's SEARCH syntax: a schema of namespace and dimension, a metric name, a statistic, a period.
    assert re.fullmatch(r"SEARCH\('\{SpeechToImage,Code\} MetricName=\"ErrorRecords\"', 'Sum', 300\)", ERRORS_BY_CODE)


def test_dashboard_shows_stage_times_as_percentiles(synth: Synth) -> None:
    lines = metric_lines(widgets(synth)["Seconds per stage (p50, p90)"])
    assert lines == {
        (METRICS_NAMESPACE, "StageSeconds", "Stage", stage, percentile)
        for stage in ("transcribe", "generate", "total")
        for percentile in ("p50", "p90")
    }


def test_dashboard_shows_every_queue_and_every_functions_errors_and_throttles(synth: Synth) -> None:
    graphs = widgets(synth)
    queues = {f"<{source_queue_id(synth, h)}.QueueName>" for h in queued(synth)}
    queues |= {f"<{dead_letter_queue_id(synth, h)}.QueueName>" for h in handlers(synth)}
    for title, metric in (
        ("Messages waiting", "ApproximateNumberOfMessagesVisible"),
        ("Age of the oldest message (seconds)", "ApproximateAgeOfOldestMessage"),
    ):
        assert metric_lines(graphs[title]) == {("AWS/SQS", metric, "QueueName", queue, "Maximum") for queue in queues}
    functions = {f"<{logical_id(synth, synth.infra.stages[h].function)}>" for h in handlers(synth)}
    assert metric_lines(graphs["Lambda errors and throttles"]) == {
        ("AWS/Lambda", metric, "FunctionName", fn, "Sum") for metric in ("Errors", "Throttles") for fn in functions
    }
