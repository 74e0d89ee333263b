"""The CDK app: builds the typed configuration from context and composes the three stacks."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

# `cdk` runs this file as a script; make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aws_cdk as cdk

from infra.components.sd_endpoint import AsyncInference
from infra.components.web_api import PipelineResources
from infra.config import PipelineConfig
from infra.nag import apply_nag
from infra.pipeline import BucketRole
from infra.stacks.infra_stack import InfraStack
from infra.stacks.model_endpoint_stack import HuggingFaceModelEndpoint
from infra.stacks.web_stack import WebStack
from infra.web_config import WebConfig

# The web page's static files (plain HTML, CSS, JavaScript modules; no build step).
SITE_DIR = Path(__file__).resolve().parents[1] / "web"


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


def build_web(
    app: cdk.App, infra: InfraStack, config: PipelineConfig, web: WebConfig, site_dir: Path = SITE_DIR
) -> WebStack:
    """Add WebStack over `infra` (after `build_app`); it reads InfraStack's buckets and ledger through exports."""
    buckets = infra.buckets
    ledger = infra.ledger.table
    # Exported explicitly, as for the endpoint stack: the API role's statements name the exports while the app
    # is built, which its cdk-nag acknowledgments must match.
    pipeline = PipelineResources(
        input_bucket_name=infra.export_value(buckets[BucketRole.INPUT].bucket_name),
        input_bucket_arn=infra.export_value(buckets[BucketRole.INPUT].bucket_arn),
        output_bucket_name=infra.export_value(buckets[BucketRole.OUTPUT].bucket_name),
        output_bucket_arn=infra.export_value(buckets[BucketRole.OUTPUT].bucket_arn),
        ledger_table_name=infra.export_value(ledger.table_name),
        ledger_table_arn=infra.export_value(ledger.table_arn),
    )
    env = cdk.Environment(account=config.account, region=config.region)
    # The exports make WebStack depend on InfraStack (deployed after it); nothing depends on WebStack.
    return WebStack(app, "WebStack", config=config, web=web, pipeline=pipeline, site_dir=site_dir, env=env)


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
    get = context_getter(app)
    config = PipelineConfig.from_context(get)
    infra, _ = build_app(app, config)
    build_web(app, infra, config, WebConfig.from_context(get, config))
    app.synth()


if __name__ == "__main__":
    main()
