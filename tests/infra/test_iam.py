"""Least privilege: every pipeline role holds exactly the statements its handler needs, each on a scoped ARN."""

from __future__ import annotations

from infra.pipeline import BucketRole, Handler

from .conftest import ACCOUNT, REGION, Synth
from .support import arn, function, handlers, logical_id, source_queue_id, stage, statements

PIPELINE_JOBS = f"arn:<AWS::Partition>:transcribe:{REGION}:{ACCOUNT}:transcription-job/s2i-*"


def own_infra(synth: Synth, handler: Handler) -> set[tuple[str, str]]:
    """What every stage may do besides its task: write its own log group, send to its own dead-letter queue."""
    log_group = f"<{logical_id(synth, stage(synth, handler).log_group)}.Arn>"
    queue = f"<{logical_id(synth, stage(synth, handler).dead_letter_queue)}.Arn>"
    return {
        ("logs:CreateLogStream", log_group),
        ("logs:PutLogEvents", log_group),
        ("sqs:SendMessage", queue),
        ("sqs:GetQueueAttributes", queue),
        ("sqs:GetQueueUrl", queue),
    }


def consumes(synth: Synth, handler: Handler) -> set[tuple[str, str]]:
    """What the event source mapping needs on the stage's own source queue (the CDK's consume grant)."""
    queue = f"<{source_queue_id(synth, handler)}.Arn>"
    actions = ("ReceiveMessage", "ChangeMessageVisibility", "DeleteMessage", "GetQueueAttributes", "GetQueueUrl")
    return {(f"sqs:{action}", queue) for action in actions}


def ledger(synth: Synth) -> set[tuple[str, str]]:
    """Read an upload's ledger item and advance it with a conditional write: one table, no index, no scan."""
    table = f"<{logical_id(synth, synth.infra.ledger.table)}.Arn>"
    return {("dynamodb:GetItem", table), ("dynamodb:UpdateItem", table)}


def error_records(synth: Synth) -> set[tuple[str, str]]:
    """Write errors/<key>.json and remove the key's other result: one result per upload."""
    return {
        ("s3:PutObject", arn(synth, BucketRole.OUTPUT, "/errors/*")),
        ("s3:DeleteObject", arn(synth, BucketRole.OUTPUT, "/images/*")),
        ("s3:DeleteObject", arn(synth, BucketRole.OUTPUT, "/errors/*")),
    }


def test_transcribe_trigger_has_exactly_the_permissions_it_needs(synth: Synth) -> None:
    expected = own_infra(synth, Handler.TRANSCRIBE_TRIGGER) | consumes(synth, Handler.TRANSCRIBE_TRIGGER)
    assert statements(synth, Handler.TRANSCRIBE_TRIGGER) == expected | ledger(synth) | error_records(synth) | {
        # Only this pipeline's jobs (JOB_NAME_PREFIX), not every job in the account.
        ("transcribe:StartTranscriptionJob", PIPELINE_JOBS),
        # The exact upload (version) its event names; Transcribe reads the media with these rights too.
        ("s3:GetObject", arn(synth, BucketRole.INPUT, "/*")),
        ("s3:GetObjectVersion", arn(synth, BucketRole.INPUT, "/*")),
        # A deleted upload must read as 404, not 403.
        ("s3:ListBucket", arn(synth, BucketRole.INPUT, "")),
        ("s3:PutObject", arn(synth, BucketRole.TRANSCRIPTS, "/transcripts/*")),
    }


def invoke_sd_common(synth: Synth) -> set[tuple[str, str]]:
    """What invoke_sd needs in both modes: its transcript in, a result (or an error record) out."""
    expected = own_infra(synth, Handler.INVOKE_SD) | consumes(synth, Handler.INVOKE_SD) | ledger(synth)
    # No ListBucket and no reads of images/: the ledger, not the buckets, says what is current and finished.
    return expected | {
        # The exact transcript version its event names.
        ("s3:GetObject", arn(synth, BucketRole.TRANSCRIPTS, "/transcripts/*")),
        ("s3:GetObjectVersion", arn(synth, BucketRole.TRANSCRIPTS, "/transcripts/*")),
        ("s3:PutObject", arn(synth, BucketRole.OUTPUT, "/images/*")),
        ("s3:PutObject", arn(synth, BucketRole.OUTPUT, "/errors/*")),
        # One result per upload: each kind of result removes the other.
        ("s3:DeleteObject", arn(synth, BucketRole.OUTPUT, "/images/*")),
        ("s3:DeleteObject", arn(synth, BucketRole.OUTPUT, "/errors/*")),
    }


def test_invoke_sd_has_exactly_the_permissions_it_needs_in_realtime_mode(synth_realtime: Synth) -> None:
    synth = synth_realtime
    assert statements(synth, Handler.INVOKE_SD) == invoke_sd_common(synth) | {
        ("sagemaker:InvokeEndpoint", f"arn:<AWS::Partition>:sagemaker:{REGION}:{ACCOUNT}:endpoint/speech-to-image-sd"),
    }


def test_invoke_sd_stages_the_request_and_queues_it_in_async_mode(synth: Synth) -> None:
    # InvokeEndpointAsync instead of InvokeEndpoint (never both); writes under async/requests/ only (the
    # request, and its removal when the endpoint refuses it for good).
    assert statements(synth, Handler.INVOKE_SD) == invoke_sd_common(synth) | {
        ("s3:PutObject", arn(synth, BucketRole.TRANSCRIPTS, "/async/requests/*")),
        ("s3:DeleteObject", arn(synth, BucketRole.TRANSCRIPTS, "/async/requests/*")),
        (
            "sagemaker:InvokeEndpointAsync",
            f"arn:<AWS::Partition>:sagemaker:{REGION}:{ACCOUNT}:endpoint/speech-to-image-sd",
        ),
    }


def test_async_result_has_exactly_the_permissions_it_needs(synth: Synth) -> None:
    expected = own_infra(synth, Handler.ASYNC_RESULT) | consumes(synth, Handler.ASYNC_RESULT) | ledger(synth)
    transcripts = {
        (action, arn(synth, BucketRole.TRANSCRIPTS, f"/async/{folder}/*"))
        for action in ("s3:GetObject", "s3:DeleteObject")
        for folder in ("outputs", "failures")
    }
    assert statements(synth, Handler.ASYNC_RESULT) == expected | transcripts | {
        # The staged request's context (invoke_sd writes it beside the request) names the upload and its
        # prompt; both are removed once the result is recorded. Never written.
        ("s3:GetObject", arn(synth, BucketRole.TRANSCRIPTS, "/async/requests/*")),
        ("s3:DeleteObject", arn(synth, BucketRole.TRANSCRIPTS, "/async/requests/*")),
        # A removed or expired output must read as 404 (an error record), not 403 (retried until dead-lettered).
        ("s3:ListBucket", arn(synth, BucketRole.TRANSCRIPTS, "")),
        ("s3:PutObject", arn(synth, BucketRole.OUTPUT, "/images/*")),
        ("s3:PutObject", arn(synth, BucketRole.OUTPUT, "/errors/*")),
        ("s3:DeleteObject", arn(synth, BucketRole.OUTPUT, "/images/*")),
        ("s3:DeleteObject", arn(synth, BucketRole.OUTPUT, "/errors/*")),
    }
    # It never calls the endpoint itself.
    assert not [action for action, _ in statements(synth, Handler.ASYNC_RESULT) if action.startswith("sagemaker:")]


def test_transcribe_failed_has_exactly_the_permissions_it_needs(synth: Synth) -> None:
    expected = own_infra(synth, Handler.TRANSCRIBE_FAILED) | ledger(synth) | error_records(synth)
    assert statements(synth, Handler.TRANSCRIBE_FAILED) == expected | {
        ("transcribe:GetTranscriptionJob", PIPELINE_JOBS),
    }


def test_sweeper_has_exactly_the_permissions_it_needs(synth: Synth) -> None:
    table = f"<{logical_id(synth, synth.infra.ledger.table)}.Arn>"
    expected = own_infra(synth, Handler.SWEEPER) | ledger(synth) | error_records(synth)
    # Query on the pending index only: never a Scan, never the table's own items by query.
    assert statements(synth, Handler.SWEEPER) == expected | {("dynamodb:Query", f"{table}/index/pending-by-age")}


def test_only_the_sweeper_may_query_the_ledger_and_nobody_may_scan_or_delete_it(synth: Synth) -> None:
    for handler in handlers(synth):
        actions = {action for action, _ in statements(synth, handler) if action.startswith("dynamodb:")}
        assert actions <= {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Query"}
        assert ("dynamodb:Query" in actions) == (handler is Handler.SWEEPER)


def test_no_function_may_change_uploads_transcripts_or_the_model(synth: Synth) -> None:
    writes = {"s3:PutObject", "s3:DeleteObject"}
    for handler in handlers(synth):
        for action, resource in statements(synth, handler):
            if action in writes and resource.startswith("<Buckets"):
                # Besides results: the trigger writes transcripts (with Transcribe), invoke_sd stages (and takes
                # back) async requests, async_result cleans up async objects; nobody touches uploads or the model.
                assert (
                    resource.startswith(arn(synth, BucketRole.OUTPUT, "/"))
                    or (handler is Handler.TRANSCRIBE_TRIGGER and action == "s3:PutObject")
                    or (
                        handler is Handler.INVOKE_SD
                        and resource == arn(synth, BucketRole.TRANSCRIPTS, "/async/requests/*")
                    )
                    or (
                        handler is Handler.ASYNC_RESULT
                        and action == "s3:DeleteObject"
                        and resource.startswith(arn(synth, BucketRole.TRANSCRIPTS, "/async/"))
                    )
                ), f"{handler} may {action} {resource}"


def test_no_wildcard_actions_and_no_managed_policies_on_pipeline_roles(synth: Synth) -> None:
    for handler in handlers(synth):
        for action, _ in statements(synth, handler):
            assert "*" not in action
        _, fn = function(synth, handler)
        role = synth.infra_template.find_resources("AWS::IAM::Role")[fn["Properties"]["Role"]["Fn::GetAtt"][0]]
        assert "ManagedPolicyArns" not in role["Properties"]


def test_endpoint_arn_is_lower_cased_like_sagemaker_does(synth_variant: Synth, synth_async_variant: Synth) -> None:
    assert (
        "sagemaker:InvokeEndpoint",
        f"arn:<AWS::Partition>:sagemaker:{REGION}:{ACCOUNT}:endpoint/my-sd-endpoint",
    ) in statements(synth_variant, Handler.INVOKE_SD)
    assert (
        "sagemaker:InvokeEndpointAsync",
        f"arn:<AWS::Partition>:sagemaker:{REGION}:{ACCOUNT}:endpoint/my-sd-endpoint",
    ) in statements(synth_async_variant, Handler.INVOKE_SD)
    env = function(synth_variant, Handler.INVOKE_SD)[1]["Properties"]["Environment"]["Variables"]
    assert env["ENDPOINT_NAME"] == "My-SD-Endpoint"
