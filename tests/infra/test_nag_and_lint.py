"""cdk-nag (AwsSolutions) and cfn-lint gate every synthesized template."""

from __future__ import annotations

import json
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3
from cfnlint.api import lint

from infra.app import build_app
from infra.config import PipelineConfig

from .conftest import CDK_CONTEXT, REGION, Synth


def test_both_stacks_synthesize_with_no_unacknowledged_nag_findings(
    synth: Synth, synth_variant: Synth, synth_realtime: Synth, synth_async_variant: Synth
) -> None:
    # synth_app() calls app.synth(), which raises on any unacknowledged finding; the report is empty too.
    # Both endpoint modes, with defaults and with every switch flipped.
    for result in (synth, synth_variant, synth_realtime, synth_async_variant):
        report = json.loads((result.assembly_dir / "validation-report.json").read_text())
        assert report["pluginReports"] == []


def test_the_app_fails_synth_on_an_unacknowledged_finding(tmp_path: Path) -> None:
    app = cdk.App(context=CDK_CONTEXT, outdir=str(tmp_path), builtin_cloud_formation_validation=False)
    infra, _ = build_app(app, PipelineConfig())
    s3.Bucket(infra, "CarelessBucket")  # no access logs, no SSL-only policy
    with pytest.raises(Exception, match=r"ValidationFailed") as failure:
        app.synth()
    message = str(failure.value)
    assert "'AwsSolutions::AwsSolutions-S1'" in message
    assert "'AwsSolutions::AwsSolutions-S10'" in message
    # Exactly the careless bucket is reported: everything the app itself defines passes.
    assert {line.split()[0] for line in message.splitlines() if line.startswith("   InfraStack/")} == {
        "InfraStack/CarelessBucket/Resource"
    }


def test_every_acknowledgment_has_a_reviewable_reason(synth: Synth, synth_realtime: Synth) -> None:
    reasons = []
    for stack in (synth.infra, synth.endpoint, synth_realtime.infra, synth_realtime.endpoint):
        for construct in stack.node.find_all():
            for entry in construct.node.metadata:
                if "acknowledg" in entry.type.lower():
                    reasons.append(entry.data)
    assert reasons, "acknowledgments are recorded as construct metadata"
    for data in reasons:
        text = json.dumps(data)
        assert len(text) > 80, f"acknowledgment without a real reason: {text}"


@pytest.mark.parametrize("mode", ["async", "realtime"])
@pytest.mark.parametrize("stack_name", ["InfraStack", "HuggingFaceModelEndpoint"])
def test_cfn_lint_finds_no_errors(synth: Synth, synth_realtime: Synth, stack_name: str, mode: str) -> None:
    result = synth if mode == "async" else synth_realtime
    template = (result.assembly_dir / f"{stack_name}.template.json").read_text()
    matches = lint(template, regions=[REGION])
    errors = [f"{m.rule.id}: {m.message}" for m in matches if m.rule.severity == "error"]
    assert errors == []
    # Only the CDK's redundant DependsOn (W3005) and the cross-stack output (W6001) are tolerated.
    assert {m.rule.id for m in matches if m.rule.severity == "warning"} <= {"W3005", "W6001"}
