"""`make preflight` against a stubbed account: a healthy one passes, and each condition that breaks a first deploy
fails with the fix in plain words (docs/DEPLOY-CHECKLIST.md names these tests)."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import boto3
import pytest

from infra.config import PipelineConfig
from ops.preflight import report, run_checks
from ops.preflight_checks import Status
from tests.ops.preflight_support import ACCOUNT, MODEL_BUCKET, SAGEMAKER_QUOTA_CODE, TRANSCRIBE_QUOTA_CODE, Account
from tests.ops.preflight_support import stubbed as preflight

CONFIG = PipelineConfig()


def test_a_healthy_account_passes_every_check() -> None:
    with preflight(Account(), CONFIG) as run:
        assert set(run.statuses().values()) == {Status.OK}, run.text
        assert run.status == 0
        assert "No check failed" in run.text
        assert f"account {ACCOUNT}" in run.by_name("Credentials").detail
        image = run.by_name("Deep Learning Container").detail
        assert "763104351884.dkr.ecr.eu-west-1.amazonaws.com/huggingface-pytorch-inference:" in image
        assert f"s3://{MODEL_BUCKET}/{CONFIG.model_data_key}" in run.by_name("Model archive").detail


def test_endpoint_quota_of_zero_fails_with_the_console_path_and_the_exact_request_command() -> None:
    with preflight(Account(endpoint_quota=0), CONFIG) as run:
        result = run.by_name("SageMaker endpoint quota")
        assert result.status is Status.FAIL
        assert "'ml.g4dn.xlarge for endpoint usage' is 0" in result.detail
        assert "ResourceLimitExceeded" in result.detail
        assert result.fix is not None
        assert "Service Quotas console > AWS services > Amazon SageMaker > 'ml.g4dn.xlarge for endpoint usage'" in (
            result.fix
        )
        assert (
            "aws service-quotas request-service-quota-increase --service-code sagemaker "
            f"--quota-code {SAGEMAKER_QUOTA_CODE} --desired-value 1 --region eu-west-1"
        ) in result.fix
        assert run.status == 1
        assert "fix: Service Quotas console" in run.text


def test_endpoint_quota_follows_the_configured_instance_type_and_max_instances() -> None:
    config = replace(CONFIG, instance_type="ml.g5.xlarge", max_instances=3)
    with preflight(Account(endpoint_quota=2), config) as run:
        result = run.by_name("SageMaker endpoint quota")
        assert result.status is Status.WARN, "2 of 3 instances still deploys; scaling stops early"
        assert "'ml.g5.xlarge for endpoint usage' is 2, below maxInstances=3" in result.detail
        assert "--desired-value 3" in (result.fix or "")
        assert run.status == 0


def test_an_instance_type_with_no_quota_in_the_region_warns() -> None:
    with preflight(Account(endpoint_quota=None), CONFIG) as run:
        assert run.by_name("SageMaker endpoint quota").status is Status.WARN


def test_no_bootstrap_stack_fails_with_the_bootstrap_command() -> None:
    with preflight(Account(bootstrapped=False), CONFIG) as run:
        result = run.by_name("CDK bootstrap")
        assert result.status is Status.FAIL
        assert "no CDKToolkit stack in eu-west-1" in result.detail
        assert f"npx cdk bootstrap aws://{ACCOUNT}/eu-west-1" in (result.fix or "")
        assert run.status == 1


def test_an_old_bootstrap_version_fails() -> None:
    with preflight(Account(bootstrap_version="5"), CONFIG) as run:
        result = run.by_name("CDK bootstrap")
        assert (result.status, result.detail) == (
            Status.FAIL,
            "bootstrap version 5; these templates need 6 or later",
        )


def test_a_missing_model_archive_fails_before_the_endpoint_deploys() -> None:
    with preflight(Account(model_uploaded=False), CONFIG) as run:
        result = run.by_name("Model archive")
        assert result.status is Status.FAIL
        assert f"s3://{MODEL_BUCKET}/{CONFIG.model_data_key} does not exist" in result.detail
        assert "make upload-model MODEL_DIR=" in (result.fix or "")
        assert run.status == 1


def test_the_model_check_waits_for_the_infra_stack() -> None:
    with preflight(Account(infra_deployed=False), CONFIG) as run:
        result = run.by_name("Model archive")
        assert result.status is Status.SKIPPED
        assert "make deploy-infra" in (result.fix or "")
        assert run.status == 0


def test_an_unsupported_region_fails() -> None:
    # A region the CDK's Deep Learning Containers table does not know: the endpoint stack cannot name its image.
    config = replace(CONFIG, region="eu-nowhere-1")
    with preflight(Account(), config, region="eu-nowhere-1") as run:
        result = run.by_name("Deep Learning Container")
        assert result.status is Status.FAIL
        assert "knows no Deep Learning Containers account in eu-nowhere-1" in result.detail
        assert run.status == 1


def test_a_region_without_the_powertools_layer_fails() -> None:
    with preflight(Account(powertools_published=False), CONFIG) as run:
        assert run.by_name("Powertools layer").status is Status.FAIL


def test_no_credentials_fails_and_skips_the_account_checks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A session that can find no credentials anywhere: not in the environment, files, or instance metadata.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    session = boto3.session.Session(region_name="eu-west-1")
    results = run_checks(CONFIG, "eu-west-1", session.client)
    statuses = {result.name: result.status for result in results}
    assert statuses["Credentials"] is Status.FAIL
    assert statuses["Deep Learning Container"] is Status.OK, "needs no account"
    assert statuses["CDK bootstrap"] is Status.SKIPPED
    assert statuses["SageMaker endpoint quota"] is Status.SKIPPED
    out = io.StringIO()
    assert report(results, out) == 1
    assert "no AWS credentials found" in out.getvalue()
    assert "aws configure" in out.getvalue()


def test_no_region_fails_with_how_to_set_one() -> None:
    (result,) = run_checks(CONFIG, None, lambda service: None)
    assert (result.name, result.status) == ("Region", Status.FAIL)
    assert "AWS_REGION" in (result.fix or "")


def test_credentials_for_another_account_than_configured_fail() -> None:
    config = replace(CONFIG, account="210987654321")
    # Nothing but the region is checked in the wrong account: the other stubbed answers stay unused.
    with preflight(Account(), config, every_call=False) as run:
        assert run.by_name("Credentials").status is Status.FAIL
        assert "the configuration deploys to 210987654321" in run.by_name("Credentials").detail
        assert run.by_name("CDK bootstrap").status is Status.SKIPPED


def test_access_denied_on_a_check_is_reported_as_could_not_check_not_a_crash() -> None:
    with preflight(Account(denied={"servicequotas:ListServiceQuotas"}), CONFIG) as run:
        result = run.by_name("SageMaker endpoint quota")
        assert result.status is Status.WARN
        assert result.detail == (
            "could not check: AccessDeniedException (needs permission servicequotas:ListServiceQuotas)"
        )
        # The other checks still ran, and a warning alone does not stop a deploy.
        assert run.by_name("Transcribe concurrent jobs").status is Status.OK
        assert run.status == 0


def test_a_transcribe_quota_below_the_trigger_burst_warns_with_both_fixes() -> None:
    config = replace(CONFIG, transcribe_trigger_concurrency=30)
    with preflight(Account(transcribe_quota=100), config) as run:
        result = run.by_name("Transcribe concurrent jobs")
        assert result.status is Status.WARN
        assert "transcribeTriggerConcurrency=30 x 10 uploads per batch can start 300 jobs at once" in result.detail
        assert f"--quota-code {TRANSCRIBE_QUOTA_CODE} --desired-value 300" in (result.fix or "")


def test_an_autoscaled_endpoint_whose_instance_type_would_change_fails() -> None:
    with preflight(Account(existing_endpoint=("ml.g5.xlarge", True)), CONFIG) as run:
        result = run.by_name("Endpoint instance type")
        assert result.status is Status.FAIL
        assert "speech-to-image-sd runs ml.g5.xlarge; the configuration says ml.g4dn.xlarge" in result.detail
        assert "registered with Application Auto Scaling" in result.detail
        assert (result.fix or "").startswith("deregister/destroy-endpoint first: `make destroy-endpoint`")


@pytest.mark.parametrize(
    ("existing", "expected"),
    [(("ml.g5.xlarge", False), "not autoscaled"), (("ml.g4dn.xlarge", True), "as configured")],
)
def test_an_endpoint_the_update_may_change_passes(existing: tuple[str, bool], expected: str) -> None:
    with preflight(Account(existing_endpoint=existing), CONFIG) as run:
        result = run.by_name("Endpoint instance type")
        assert result.status is Status.OK
        assert expected in result.detail
