"""The CDK app: builds the typed configuration from context and composes the two stacks."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

# `cdk` runs this file as a script; make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aws_cdk as cdk

from infra.components.sd_endpoint import AsyncInference
from infra.config import PipelineConfig
from infra.nag import apply_nag
from infra.stacks.infra_stack import InfraStack
from infra.stacks.model_endpoint_stack import HuggingFaceModelEndpoint


def build_app(app: cdk.App, config: PipelineConfig) -> tuple[InfraStack, HuggingFaceModelEndpoint]:
    """Compose both stacks into `app` and attach the cdk-nag checks."""
    env = cdk.Environment(account=config.account, region=config.region)
    infra = InfraStack(app, "InfraStack", config=config, env=env)
    topics = infra.async_topics
    transcripts = infra.transcript_bucket
    async_inference = (
        AsyncInference(
            # Exported explicitly (the same export an implicit reference makes): the endpoint role's statements
            # then name the export already while the app is built, which cdk-nag acknowledgments must match.
            bucket_arn=infra.export_value(transcripts.bucket_arn),
            bucket_name=infra.export_value(transcripts.bucket_name),
            success_topic=topics.success,
            error_topic=topics.error,
        )
        if topics is not None
        else None
    )
    endpoint = HuggingFaceModelEndpoint(
        app,
        "HuggingFaceModelEndpoint",
        config=config,
        model_bucket=infra.model_bucket,
        alarm_topic=infra.alarm_topic.topic,
        async_inference=async_inference,
        env=env,
    )
    apply_nag(app)
    return infra, endpoint


def context_getter(app: cdk.App) -> Callable[[str], object]:
    """Context first; account/region fall back to the CLI's resolved environment."""
    fallback = {
        "account": os.environ.get("CDK_DEFAULT_ACCOUNT"),
        "region": os.environ.get("CDK_DEFAULT_REGION"),
    }

    def get(key: str) -> object:
        value = app.node.try_get_context(key)
        if value is None and key in fallback:
            return fallback[key]
        return value

    return get


def main() -> None:
    """Entry point for `cdk synth` / `cdk deploy`."""
    app = cdk.App()
    build_app(app, PipelineConfig.from_context(context_getter(app)))
    app.synth()


if __name__ == "__main__":
    main()
