"""What local mode runs with: the CDK app's configuration (from cdk.json), and the Stable Diffusion model."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from infra.config import ConfigError, PipelineConfig
from infra.model_config import HUB, ModelSource, container_environment
from infra.web_config import WebConfig
from local.model_source import HUB_CACHE_DIR, parse_model, resolve_revision

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
    context = load_context(cdk_json)
    if endpoint_mode is not None:
        context["endpointMode"] = endpoint_mode
    if image_overrides:
        context["imageParameters"] = {**(context.get("imageParameters") or {}), **image_overrides}
    return PipelineConfig.from_context(context.get)


def load_web_config(
    config: PipelineConfig, cdk_json: Path = CDK_JSON, *, max_recording_seconds: int | None = None
) -> WebConfig:
    """The web page's configuration from cdk.json's context, as infra/app.py builds WebStack's.

    `max_recording_seconds` replaces "webMaxRecordingSeconds" (`serve --max-seconds`), checked by the same rules.
    """
    context = load_context(cdk_json)
    if max_recording_seconds is not None:
        context["webMaxRecordingSeconds"] = max_recording_seconds
    return WebConfig.from_context(context.get, config)


def load_context(cdk_json: Path = CDK_JSON) -> dict[str, Any]:
    """cdk.json's "context" (what `cdk synth` reads before any -c option)."""
    try:
        return dict(json.loads(cdk_json.read_text(encoding="utf-8")).get("context", {}))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read the CDK context from {cdk_json}: {error}") from None


@dataclass(frozen=True)
class ModelChoice:
    """What the local endpoint serves: a diffusers folder, or a Hub model that model_fn downloads."""

    # The folder served as model_dir; None for a Hub model (the endpoint then holds only code/).
    path: Path | None
    tiny: bool
    hub_id: str | None = None
    # The commit the Hub id resolved to (pinned, as hfModelRevision is on AWS).
    hub_revision: str | None = None
    hub_cache_dir: Path | None = None

    @property
    def label(self) -> str:
        """How progress output and reports name the model."""
        if self.hub_id is not None:
            return f"{self.hub_id}@{self.hub_revision} (Hugging Face Hub, cached in {self.hub_cache_dir})"
        return "the tiny random-weight test model" if self.tiny else str(self.path)

    def environment(self, config: PipelineConfig) -> dict[str, str]:
        """The endpoint container's SD_* variables, as the deployed endpoint gets them for this source."""
        source = ModelSource() if self.hub_id is None else ModelSource(HUB, self.hub_id, self.hub_revision)
        environment = container_environment(
            source, instance_type=config.instance_type, time_limit_seconds=config.time_limit_seconds
        )
        if self.hub_cache_dir is not None:
            # Where model_fn's downloads go and are found again next run (the container's default is /tmp/sd-hub).
            environment["SD_HUB_CACHE_DIR"] = str(self.hub_cache_dir)
        return environment


def tiny_model() -> ModelChoice:
    """The tiny random-weight test model (built once into .cache/tiny-sd)."""
    from sd_tools.tiny_model import ensure_tiny_model

    return ModelChoice(path=ensure_tiny_model(), tiny=True)


def model_folder(path: Path) -> ModelChoice:
    """A real diffusers pipeline folder; `ValueError` says what is missing."""
    from sd_tools.package_model import PackagingError, validate_model_dir

    path = Path(path).expanduser()
    # The same check `make upload-model` applies: what passes here also deploys.
    try:
        validate_model_dir(path)
    except PackagingError as error:
        raise ValueError(
            f"{path}: {error} (e.g. `huggingface-cli download CompVis/stable-diffusion-v1-4 --local-dir DIR`, "
            "or give a Hub id: --model stabilityai/sd-turbo)"
        ) from None
    return ModelChoice(path=path.resolve(), tiny=False)


def hub_model(
    model_id: str, revision: str, *, cache_dir: Path = HUB_CACHE_DIR, model_info: Callable[..., Any] | None = None
) -> ModelChoice:
    """A Hub model at the commit `revision` names now; `ModelSourceError` when it cannot be had."""
    commit = resolve_revision(model_id, revision, cache_dir=cache_dir, model_info=model_info)
    return ModelChoice(path=None, tiny=False, hub_id=model_id, hub_revision=commit, hub_cache_dir=Path(cache_dir))


def choose_model(
    value: str, *, cache_dir: Path = HUB_CACHE_DIR, model_info: Callable[..., Any] | None = None
) -> ModelChoice:
    """`--model`: a folder (checked like `make upload-model` does) or a Hub id (`org/name[@revision]`)."""
    parsed = parse_model(value)
    if isinstance(parsed, Path):
        return model_folder(parsed)
    model_id, revision = parsed
    return hub_model(model_id, revision, cache_dir=cache_dir, model_info=model_info)


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
