"""Synthesized apps for the CDK assertion tests (offline, no credentials)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

REPO = Path(__file__).resolve().parents[2]
CDK_CONTEXT: dict[str, Any] = json.loads((REPO / "cdk.json").read_text())["context"]
ACCOUNT = "123456789012"
REGION = "eu-west-1"

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


@dataclass
class Synth:
    """One synthesized app: both stacks, their templates, and the cloud assembly folder."""

    app: cdk.App
    infra: cdk.Stack
    endpoint: cdk.Stack
    infra_template: Template
    endpoint_template: Template
    assembly_dir: Path

    def resources(self, template: Template, resource_type: str) -> dict[str, dict[str, Any]]:
        """All resources of a type, by logical id."""
        return template.find_resources(resource_type)


def synth_app(outdir: Path, **context: Any) -> Synth:
    """Build the real app (infra/app.py's build_app) with cdk.json context plus overrides."""
    from infra.app import build_app
    from infra.config import PipelineConfig

    merged = {**CDK_CONTEXT, "account": ACCOUNT, "region": REGION, **context}
    # The built-in CloudFormation validator costs ~5 s per app; the CLI synth in `make test` keeps it on.
    app = cdk.App(context=merged, outdir=str(outdir), builtin_cloud_formation_validation=False)
    config = PipelineConfig.from_context(app.node.try_get_context)
    infra, endpoint = build_app(app, config)
    assembly = app.synth()  # runs cdk-nag: an unacknowledged finding raises here
    return Synth(
        app=app,
        infra=infra,
        endpoint=endpoint,
        infra_template=Template.from_stack(infra),
        endpoint_template=Template.from_stack(endpoint),
        assembly_dir=Path(assembly.directory),
    )


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The app with cdk.json's defaults."""
    return synth_app(tmp_path_factory.mktemp("cdk-default"))


@pytest.fixture(scope="session")
def synth_variant(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The app with every switch flipped away from its default (a real-time endpoint among them)."""
    return synth_app(
        tmp_path_factory.mktemp("cdk-variant"),
        endpointMode="realtime",
        maxInstances="3",
        removal="retain",
        languageCode="auto",
        languageOptions="en-US,de-DE",
        invokeSdConcurrency="4",
        transcribeTriggerConcurrency="7",
        stuckAfterMinutes="60",
        endpointName="My-SD-Endpoint",
        instanceType="ml.g5.xlarge",
        modelDataKey="models/custom/model.tar.gz",
        logRetentionDays="30",
        mediaFormats="mp3,wav",
        imageParameters='{"num_inference_steps": 30, "height": 768, "width": 768, "seed": 42}',
    )


@pytest.fixture(scope="session")
def synth_realtime(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """cdk.json's defaults, but a real-time endpoint (the design before asynchronous inference)."""
    return synth_app(tmp_path_factory.mktemp("cdk-realtime"), endpointMode="realtime")


@pytest.fixture(scope="session")
def synth_async_variant(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """An asynchronous endpoint with every scaling and naming switch away from its default."""
    return synth_app(
        tmp_path_factory.mktemp("cdk-async-variant"),
        endpointName="My-SD-Endpoint",
        minInstances="1",
        maxInstances="4",
        requestTtlMinutes="60",
        scaleInIdleMinutes="30",
        removal="retain",
    )


@pytest.fixture(scope="session")
def make_synth(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Synth]:
    """Synthesize an app with custom context (for one-off cases)."""

    def make(**context: Any) -> Synth:
        return synth_app(tmp_path_factory.mktemp("cdk-custom"), **context)

    return make
