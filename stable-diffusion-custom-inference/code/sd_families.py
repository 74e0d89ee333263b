"""Which diffusers text-to-image family a model folder holds, its defaults and its limits (one home for both
the endpoint and sd_tools.package_model; standard library only, so packaging needs no torch).

Recognised from `model_index.json` and the component configs:
    StableDiffusionPipeline, UNet without linear projection     -> sd1   (v1.x and fine-tunes, 512)
    StableDiffusionPipeline, UNet with linear projection        -> sd2   (2.x, epsilon 512 or v-prediction 768)
    StableDiffusionXLPipeline with both text encoders           -> sdxl  (base 1.0 and fine-tunes, 1024)
SD-Turbo and SDXL-Turbo have exactly the architectures and pipeline classes of SD 2.1 and SDXL, and their
model_index.json says nothing else, so they are named explicitly: `{"family": "sd-turbo"}` in the folder's
`speech_to_image.json` (written by `package_model --family`), the env var SD_MODEL_FAMILY, or a Hub id listed
in KNOWN_HUB_FAMILIES. An explicit family must fit the architecture found (sdxl-turbo needs an SDXL folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAMILY_FILE = "speech_to_image.json"
SD_PIPELINE = "StableDiffusionPipeline"
SDXL_PIPELINE = "StableDiffusionXLPipeline"
# The components each pipeline class cannot run without (safety_checker / feature_extractor are optional).
REQUIRED_COMPONENTS = {
    SD_PIPELINE: ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    SDXL_PIPELINE: ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
}
OPTIONAL = ("safety_checker", "feature_extractor", "image_encoder")
WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2", "safety_checker")
# diffusers models name their weights diffusion_pytorch_model.*, transformers models model.* / pytorch_model.*.
WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
FP16 = "fp16"
# Repos whose model_index.json cannot say what they are (see the module docstring).
KNOWN_HUB_FAMILIES = {"stabilityai/sd-turbo": "sd-turbo", "stabilityai/sdxl-turbo": "sdxl-turbo"}


class ModelFolderError(ValueError):
    """A model folder the endpoint cannot serve; the message names what is missing and what to do."""


@dataclass(frozen=True)
class Family:
    """Per-family defaults and request limits."""

    name: str
    label: str
    pipeline_class: str
    architecture: str  # the family whose architecture it shares (sd-turbo -> sd2)
    default_steps: int
    default_guidance: float
    max_steps: int
    max_guidance: float
    default_scheduler: str
    schedulers: tuple[str, ...]
    max_side: int
    max_pixels: int  # height x width x images per request
    native_cap: int  # the size the family was trained at, when the UNet config claims more
    scheduler_overrides: tuple[tuple[str, Any], ...] = ()


ALL_SCHEDULERS = ("dpmsolver++", "euler", "euler_a", "ddim", "pndm", "lms")
# Turbo models were distilled (ADD) for 1-4 steps on trailing timesteps without classifier-free guidance.
TURBO_SCHEDULING = (("timestep_spacing", "trailing"),)
FAMILIES = {
    family.name: family
    for family in (
        Family("sd1", "Stable Diffusion 1.x", SD_PIPELINE, "sd1", 25, 7.5, 150, 30.0, "dpmsolver++",
               ALL_SCHEDULERS, 1024, 1024 * 1024, 1024),
        Family("sd2", "Stable Diffusion 2.x", SD_PIPELINE, "sd2", 25, 7.5, 150, 30.0, "dpmsolver++",
               ALL_SCHEDULERS, 1024, 1024 * 1024, 1024),
        Family("sdxl", "Stable Diffusion XL", SDXL_PIPELINE, "sdxl", 25, 5.0, 100, 30.0, "dpmsolver++",
               ("dpmsolver++", "euler", "euler_a", "ddim"), 1536, 1536 * 1536, 1024),
        Family("sd-turbo", "SD-Turbo", SD_PIPELINE, "sd2", 1, 0.0, 4, 1.0, "euler_a",
               ("euler", "euler_a"), 1024, 1024 * 1024, 512, TURBO_SCHEDULING),
        Family("sdxl-turbo", "SDXL-Turbo", SDXL_PIPELINE, "sdxl", 1, 0.0, 4, 1.0, "euler_a",
               ("euler", "euler_a"), 1024, 1024 * 1024, 512, TURBO_SCHEDULING),
    )
}  # fmt: skip


@dataclass(frozen=True)
class ModelFolder:
    """What detect_family found in a folder."""

    family: Family
    index: dict[str, Any]
    native_size: int
    prediction_type: str
    variant: str | None  # "fp16" when every weighted component has fp16 files
    has_safety_checker: bool


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`; ModelFolderError naming `what` when absent or broken."""
    if not path.is_file():
        raise ModelFolderError(f"{what} is missing ({path})")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelFolderError(f"{what} is not valid JSON ({path}: {error})") from None
    if not isinstance(value, dict):
        raise ModelFolderError(f"{what} is not a JSON object ({path})")
    return value


def components(index: dict[str, Any]) -> list[str]:
    """The component names model_index.json lists with a class (null entries are absent components)."""
    return sorted(
        name
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[1] is not None
    )


def weight_files(folder: Path, component: str, variant: str | None) -> list[Path]:
    """The weight files of `component` in `variant` (None: the default variant), safetensors first."""
    infix = f".{variant}" if variant else ""
    found = []
    for stem in WEIGHT_STEMS:
        for suffix in WEIGHT_SUFFIXES:
            found += [path for path in (folder / component).glob(f"{stem}{infix}{suffix}") if path.is_file()]
            # Sharded checkpoints: <stem>-00001-of-00002[.fp16].safetensors plus an index file.
            found += sorted((folder / component).glob(f"{stem}-*-of-*{infix}{suffix}"))
    if not variant:
        found = [path for path in found if not any(f".{v}." in path.name for v in (FP16, "ema", "non_ema"))]
    return found


def weights_variant(folder: Path, weighted: list[str]) -> str | None:
    """ "fp16" when every weighted component has fp16 files (half the bytes), else None (default weights)."""
    if weighted and all(weight_files(folder, name, FP16) for name in weighted):
        return FP16
    return None


def explicit_family(folder: Path, env_family: str | None, hub_id: str | None) -> str | None:
    """The family named by the env var, the folder's speech_to_image.json or a known Hub id, in that order."""
    if env_family and env_family.strip():
        return env_family.strip().lower()
    marker = folder / FAMILY_FILE
    if marker.is_file():
        named = read_json(marker, FAMILY_FILE).get("family")
        if not isinstance(named, str) or named not in FAMILIES:
            raise ModelFolderError(f"{marker} names family {named!r}: use one of {sorted(FAMILIES)}")
        return named
    return KNOWN_HUB_FAMILIES.get(hub_id or "")


def detect_family(folder: Path, *, env_family: str | None = None, hub_id: str | None = None) -> ModelFolder:
    """Recognise the folder's family and check every component it needs is there, or raise ModelFolderError."""
    folder = Path(folder)
    hint = "serve a diffusers text-to-image folder (SD 1.x, SD 2.x, SDXL, SD-Turbo, SDXL-Turbo)"
    if not folder.is_dir():
        raise ModelFolderError(f"{folder} is not a folder: {hint}")
    if not (folder / "model_index.json").is_file():
        raise ModelFolderError(f"{folder} has no model_index.json, so it is not a diffusers pipeline: {hint}")
    index = read_json(folder / "model_index.json", "model_index.json")
    class_name = index.get("_class_name")
    if class_name not in REQUIRED_COMPONENTS:
        raise ModelFolderError(
            f"model_index.json names pipeline {class_name!r}, which this endpoint does not serve: "
            f"supported are {sorted(REQUIRED_COMPONENTS)} ({hint})"
        )
    listed = components(index)
    missing = [name for name in REQUIRED_COMPONENTS[class_name] if name not in listed]
    if missing:
        raise ModelFolderError(f"model_index.json lists no {', '.join(missing)}: {class_name} needs them ({hint})")
    # A folder without its safety checker is served unchecked (with a warning), not refused.
    listed = [name for name in listed if name not in OPTIONAL or (folder / name).is_dir()]
    absent = [name for name in listed if not (folder / name).is_dir()]
    if absent:
        raise ModelFolderError(
            f"{folder} lacks the component folder(s) {', '.join(absent)} that model_index.json lists"
        )
    weighted = [name for name in listed if name in WEIGHTED]
    variant = weights_variant(folder, weighted)
    unloadable = [name for name in weighted if not weight_files(folder, name, variant)]
    if unloadable:
        raise ModelFolderError(
            f"{folder}: no weights in {', '.join(unloadable)} (neither a full set of fp16 variant files nor "
            "default ones): download the complete folder"
        )
    unet = read_json(folder / "unet" / "config.json", "unet/config.json")
    vae = read_json(folder / "vae" / "config.json", "vae/config.json")
    scheduler = read_json(folder / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json")
    if class_name == SDXL_PIPELINE:
        architecture = "sdxl"
    else:
        # SD 2.x UNets project attention linearly and cross-attend to OpenCLIP's 1024-wide states.
        sd2 = bool(unet.get("use_linear_projection")) or unet.get("cross_attention_dim") == 1024
        architecture = "sd2" if sd2 else "sd1"
    named = explicit_family(folder, env_family, hub_id)
    if named is not None and named not in FAMILIES:
        raise ModelFolderError(f"SD_MODEL_FAMILY={named!r} is not a family: use one of {sorted(FAMILIES)}")
    family = FAMILIES[named or architecture]
    if family.architecture != architecture:
        raise ModelFolderError(
            f"the folder holds a {FAMILIES[architecture].label} ({class_name}) but is named {family.name}: "
            f"fix {FAMILY_FILE} or SD_MODEL_FAMILY"
        )
    blocks = len(vae.get("block_out_channels") or [0, 0, 0, 0])
    native = int(unet.get("sample_size") or 64) * 2 ** (blocks - 1)
    checker = "safety_checker" in listed
    return ModelFolder(
        family=family,
        index=index,
        native_size=min(native, family.native_cap),
        prediction_type=str(scheduler.get("prediction_type") or "epsilon"),
        variant=variant,
        has_safety_checker=checker,
    )
