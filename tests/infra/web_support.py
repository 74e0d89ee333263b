"""The app with WebStack, synthesized for the web assertion tests (offline, no credentials)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk.assertions import Template

from infra.stacks.infra_stack import InfraStack
from infra.stacks.web_stack import WebStack

from .conftest import ACCOUNT, CDK_CONTEXT, REGION


@dataclass
class WebSynth:
    """InfraStack and WebStack of one synthesized app, with WebStack's template."""

    infra: InfraStack
    web: WebStack
    template: Template
    assembly_dir: Path

    def resources(self, resource_type: str) -> dict[str, dict[str, Any]]:
        """WebStack's resources of a type, by logical id."""
        return self.template.find_resources(resource_type)

    def one(self, resource_type: str) -> tuple[str, dict[str, Any]]:
        """The one resource of a type in WebStack."""
        found = self.resources(resource_type)
        assert len(found) == 1, f"expected one {resource_type}, found {list(found)}"
        return next(iter(found.items()))

    def logical_id(self, construct: Any) -> str:
        """Logical id of an L2 construct's CloudFormation resource in WebStack."""
        return self.web.get_logical_id(construct.node.default_child)

    def resolve(self, value: Any) -> Any:
        """A token as WebStack's template writes it."""
        return self.web.resolve(value)

    @property
    def validation_report(self) -> dict[str, Any]:
        """cdk-nag's report for the whole app."""
        return json.loads((self.assembly_dir / "validation-report.json").read_text())


def site_folder(root: Path) -> Path:
    """A folder with a page in it: the stack tests need any page, not web/'s own (the browser tests cover that)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text("<!doctype html><title>speech-to-image</title>\n")
    return root


def synth_web(outdir: Path, **context: Any) -> WebSynth:
    """Build the real app (build_app + build_web from infra/app.py) with cdk.json context plus overrides."""
    from infra.app import build_app, build_web
    from infra.config import PipelineConfig
    from infra.web_config import WebConfig

    merged = {**CDK_CONTEXT, "account": ACCOUNT, "region": REGION, **context}
    app = cdk.App(context=merged, outdir=str(outdir / "cdk.out"), builtin_cloud_formation_validation=False)
    config = PipelineConfig.from_context(app.node.try_get_context)
    web_config = WebConfig.from_context(app.node.try_get_context, config)
    infra, _ = build_app(app, config)
    web = build_web(app, infra, config, web_config, site_dir=site_folder(outdir / "site"))
    assembly = app.synth()  # cdk-nag runs here: an unacknowledged finding raises
    return WebSynth(infra=infra, web=web, template=Template.from_stack(web), assembly_dir=Path(assembly.directory))
