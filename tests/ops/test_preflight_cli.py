"""`python -m ops.preflight`: the configuration comes from cdk.json and `-c`, as `cdk deploy` builds it."""

from __future__ import annotations

import io
import json
from pathlib import Path

from infra.config import PipelineConfig
from ops.preflight import REPO, load_context, main


def test_context_is_cdk_json_then_the_cache_then_command_line_overrides(tmp_path: Path) -> None:
    (tmp_path / "cdk.json").write_text(json.dumps({"context": {"instanceType": "ml.g5.xlarge", "maxInstances": 2}}))
    (tmp_path / "cdk.context.json").write_text(json.dumps({"maxInstances": 3}))
    context = load_context(tmp_path, ["endpointName=other-sd"])
    config = PipelineConfig.from_context(context.get)
    assert (config.instance_type, config.max_instances, config.endpoint_name) == ("ml.g5.xlarge", 3, "other-sd")


def test_the_repository_context_builds_the_same_config_as_the_cdk_app() -> None:
    assert PipelineConfig.from_context(load_context(REPO, []).get) == PipelineConfig.from_context(
        json.loads((REPO / "cdk.json").read_text())["context"].get
    )


def test_a_bad_context_value_exits_2_with_the_configs_own_message() -> None:
    out = io.StringIO()
    assert main(["-c", "instanceType=g4dn"], out) == 2
    assert "context 'instanceType'='g4dn' is invalid" in out.getvalue()
