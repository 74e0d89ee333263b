"""What local mode runs with: the CDK app's configuration (from cdk.json), and the Stable Diffusion model."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from infra.config import ConfigError, PipelineConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
LAMBDAS_DIR = REPO_ROOT / "lambdas"
CDK_JSON = REPO_ROOT / "cdk.json"
# The tiny test model draws noise at any size: keep it small and quick, and say so.
TINY_IMAGE_SIZE = 128
TINY_STEPS = 4


def load_config(
    cdk_json: Path = CDK_JSON, *, image_overrides: dict[str, Any] | None = None, endpoint_mode: str | None = None
) -> PipelineConfig:
    """The CDK app's configuration, built from cdk.json's "context" exactly as infra/app.py does.

    `image_overrides` replace keys of the "imageParameters" context and `endpoint_mode` the "endpointMode" one
    (as `cdk -c endpointMode=...` would), so they are checked by the same rules.
    """
    try:
        context = dict(json.loads(cdk_json.read_text(encoding="utf-8")).get("context", {}))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read the CDK context from {cdk_json}: {error}") from None
    if endpoint_mode is not None:
        context["endpointMode"] = endpoint_mode
    if image_overrides:
        context["imageParameters"] = {**(context.get("imageParameters") or {}), **image_overrides}
    return PipelineConfig.from_context(context.get)


@dataclass(frozen=True)
class ModelChoice:
    """The Stable Diffusion folder the local endpoint serves."""

    path: Path
    tiny: bool


def tiny_model() -> ModelChoice:
    """The tiny random-weight test model (built once into .cache/tiny-sd)."""
    from sd_tools.tiny_model import ensure_tiny_model

    return ModelChoice(path=ensure_tiny_model(), tiny=True)


def model_folder(path: Path) -> ModelChoice:
    """A real diffusers SD v1.x folder; `ValueError` says what is missing."""
    from sd_tools.package_model import PackagingError, validate_model_dir

    path = Path(path).expanduser()
    # The same check `make upload-model` applies: what passes here also deploys.
    try:
        validate_model_dir(path)
    except PackagingError as error:
        raise ValueError(
            f"--model-dir: {error} (e.g. `huggingface-cli download CompVis/stable-diffusion-v1-4 --local-dir DIR`)"
        ) from None
    return ModelChoice(path=path.resolve(), tiny=False)


def local_config(
    config: PipelineConfig, model: ModelChoice, *, size: int | None = None, steps: int | None = None
) -> PipelineConfig:
    """The configuration local mode runs with: image parameters made small for the tiny model or as asked."""
    image = config.image
    if model.tiny:
        image = replace(image, height=TINY_IMAGE_SIZE, width=TINY_IMAGE_SIZE, num_inference_steps=TINY_STEPS)
    if size is not None:
        image = replace(image, height=size, width=size)
    if steps is not None:
        image = replace(image, num_inference_steps=steps)
    return replace(config, image=image)
