r"""Text-to-image handler for the SageMaker Hugging Face inference toolkit (model/input/predict/output_fn).

Serves any diffusers folder sd_families recognises: SD 1.x, SD 2.x (v-prediction 768 included), SDXL base,
SD-Turbo, SDXL-Turbo and fine-tunes of those (docs/MODELS.md). Sibling modules (the toolkit puts code/ first on
sys.path, in the DLC and in sd_tools.toolkit_harness alike): sd_families (recognition, defaults, limits),
sd_request (parsing), sd_budget (work budget, deadline), sd_source (s3 folder or Hub download), sd_hub_cache
(the Hub download's folder layout and completion marker).

Request (`Content-Type: application/json`), every parameter optional (absent or null: the family's default):
    {"inputs": "<prompt>", "parameters": {"num_inference_steps": 25, "guidance_scale": 7.5,
     "height": 512, "width": 512, "seed": 42, "negative_prompt": "", "num_images_per_prompt": 1,
     "scheduler": "dpmsolver++"}}
Unknown keys are refused. Defaults: the native size; SD 1.x/2.x 25 steps, guidance 7.5; SDXL 25 steps,
guidance 5; turbo 1 step (at most 4), guidance 0, Euler ancestral on trailing timesteps. DPM-Solver++ otherwise.

Response (`Accept: application/json`, the default):
    {"images": ["<base64 PNG>", ...], "parameters": {...as used, seed included...},
     "nsfw_content_detected": [false, ...], "prompt_truncated": false,
     "timings": {"inference_s": 1.23}, "model": {"name": "stable-diffusion-v1-4", "family": "sd1"}}
`Accept: image/png` returns the first image as raw PNG bytes. `nsfw_content_detected` holds null per image when
nothing checked it (the folder has no safety checker, logged as a WARNING at start, or it was disabled).

Work budget: with SD_TIME_LIMIT_SECONDS set, a request whose estimated time on SD_INSTANCE_TYPE exceeds the
limit is refused with the largest step count allowed, and generation stops at the deadline (sd_budget).

Reproducibility: image i of a request uses seed + i on a CPU generator; same seed, same image.

Errors: a bad request raises `RequestError`, whose str() is the JSON `{"error": "what to fix"}`; the toolkit
turns every exception into a 400 whose MMS envelope carries that JSON as its message.

Environment: SD_MODEL_SOURCE (s3|hub), SD_HUB_MODEL_ID, SD_HUB_REVISION, SD_HUB_TOKEN_SECRET_ARN,
SD_HUB_CACHE_DIR (sd_source); SD_INSTANCE_TYPE, SD_TIME_LIMIT_SECONDS (sd_budget); SD_MODEL_FAMILY (sd_families);
SD_DISABLE_SAFETY_CHECKER=true; SD_MODEL_NAME (default: code/model_info.json, else the folder or Hub id).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.models.attention_processor import AttnProcessor2_0
from sd_budget import Budget, DeadlineExceeded, budget_from_env, check_budget, deadline_callback
from sd_families import SDXL_PIPELINE, Family, ModelFolder, ModelFolderError, detect_family
from sd_request import (
    ANY,
    JSON,
    MAX_SEED,
    PNG,
    SCHEDULERS,
    GenerationRequest,
    RequestError,
    media_type,
    parse_request,
    resolve_parameters,
)
from sd_source import HubClient, resolve_model_dir

logger = logging.getLogger("sd_inference")

__all__ = ["SCHEDULERS", "RequestError", "input_fn", "model_fn", "output_fn", "predict_fn"]
TRUE_WORDS = ("1", "true", "yes", "on")
# Below this much GPU memory SDXL's VAE decode at 1024x1024 in fp16 runs out: decode in tiles.
TILE_VAE_BELOW_GIB = 20


def _scheduler_factories() -> dict[str, Any]:
    # Built from the folder's scheduler config so the betas and prediction type match the checkpoint's training.
    return {
        "dpmsolver++": lambda config, **kw: DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, **kw
        ),
        "euler": EulerDiscreteScheduler.from_config,
        "euler_a": EulerAncestralDiscreteScheduler.from_config,
        "ddim": DDIMScheduler.from_config,
        "pndm": lambda config, **kw: PNDMScheduler.from_config(config, skip_prk_steps=True, **kw),
        "lms": LMSDiscreteScheduler.from_config,
    }


def make_scheduler(name: str, config: Any, overrides: tuple[tuple[str, Any], ...] = ()) -> Any:
    """A fresh scheduler `name` (one of SCHEDULERS) built from a pipeline's scheduler config."""
    return _scheduler_factories()[name](config, **dict(overrides))


@dataclass
class LoadedModel:
    """The pipeline plus what every request needs to know about it."""

    pipe: Any
    name: str
    family: Family
    device: str
    dtype: torch.dtype
    scheduler_config: Any
    safety_checker: str  # "on", "disabled" (by SD_DISABLE_SAFETY_CHECKER) or "missing"
    native_size: int
    prediction_type: str
    variant: str | None
    budget: Budget | None
    clock: Callable[[], float] = time.monotonic
    lock: threading.Lock = field(default_factory=threading.Lock)


def _model_name(folder: Path, hub_id: str | None, env: Mapping[str, str]) -> str:
    if env.get("SD_MODEL_NAME"):
        return env["SD_MODEL_NAME"]
    info_file = Path(__file__).with_name("model_info.json")
    if info_file.is_file():
        try:
            name = json.loads(info_file.read_text(encoding="utf-8")).get("name")
        except (ValueError, AttributeError):
            name = None
        if isinstance(name, str) and name:
            return name
    return hub_id or folder.name


def use_sdpa(pipe: Any) -> None:
    """Switch the UNet and VAE to PyTorch's scaled-dot-product attention (AttnProcessor2_0)."""
    # SDPA (fused, memory-efficient attention kernels in PyTorch 2) is diffusers' default on
    # torch 2; set it explicitly so the endpoint never silently runs the classic processor.
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.vae.set_attn_processor(AttnProcessor2_0())


def save_memory(pipe: Any, family: Family, device: str) -> list[str]:
    """Turn on VAE slicing (batches decode one image at a time) and, for SDXL on a small GPU, VAE tiling."""
    pipe.vae.enable_slicing()
    done = ["vae slicing"]
    if device == "cuda" and family.pipeline_class == SDXL_PIPELINE:
        total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
        if total_gib < TILE_VAE_BELOW_GIB:
            pipe.vae.enable_tiling()
            done.append("vae tiling")
    return done


def _safety_mode(found: ModelFolder, folder: Path, env: Mapping[str, str]) -> str:
    if env.get("SD_DISABLE_SAFETY_CHECKER", "").strip().lower() in TRUE_WORDS:
        logger.warning("SD_DISABLE_SAFETY_CHECKER is set: images are NOT checked for NSFW content")
        return "disabled"
    if found.has_safety_checker:
        return "on"
    logger.warning(
        "model folder %s (%s) has no safety_checker/: images are NOT checked for NSFW content and report "
        "nsfw_content_detected: null (package a folder that includes one, e.g. CompVis/stable-diffusion-v1-4)",
        folder,
        found.family.label,
    )
    return "missing"


def load_model(
    model_dir: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    hub: HubClient | None = None,
    secrets_client: Any = None,
    clock: Callable[[], float] = time.monotonic,
) -> LoadedModel:
    """model_fn with its collaborators injectable (environment, Hub client, Secrets Manager client, clock)."""
    env = os.environ if env is None else env
    folder, hub_id = resolve_model_dir(Path(model_dir), env, hub, secrets_client)
    try:
        found = detect_family(folder, env_family=env.get("SD_MODEL_FAMILY"), hub_id=hub_id)
    except ModelFolderError as error:
        raise ModelFolderError(f"cannot serve {hub_id or folder}: {error}") from None
    family = found.family
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # fp16 halves memory and doubles T4 throughput; CPUs have no fast fp16 kernels (fp16 files are upcast).
    dtype = torch.float16 if device == "cuda" else torch.float32
    safety = _safety_mode(found, folder, env)
    kwargs: dict[str, Any] = {}
    if family.pipeline_class != SDXL_PIPELINE and safety != "on":
        # requires_safety_checker=False: we logged our own warning; skip diffusers' long one.
        kwargs.update(safety_checker=None, requires_safety_checker=False)
        if not (folder / "feature_extractor").is_dir():
            kwargs["feature_extractor"] = None
    if found.variant:
        kwargs["variant"] = found.variant
    pipeline_class = StableDiffusionXLPipeline if family.pipeline_class == SDXL_PIPELINE else StableDiffusionPipeline
    pipe = pipeline_class.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True, **kwargs)
    use_sdpa(pipe)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    memory = save_memory(pipe, family, device)
    budget = budget_from_env(env.get("SD_INSTANCE_TYPE"), env.get("SD_TIME_LIMIT_SECONDS"))
    model = LoadedModel(
        pipe=pipe,
        name=_model_name(folder, hub_id, env),
        family=family,
        device=device,
        dtype=dtype,
        scheduler_config=pipe.scheduler.config,
        safety_checker=safety,
        native_size=found.native_size,
        prediction_type=found.prediction_type,
        variant=found.variant,
        budget=budget,
        clock=clock,
    )
    logger.info(
        "loaded %s: %s (%s prediction) on %s (%s, %s weights), attention=SDPA, %s, safety checker=%s, "
        "native size=%d, defaults %d steps guidance %g, budget=%s",
        model.name,
        family.label,
        model.prediction_type,
        device,
        dtype,
        found.variant or "default",
        " + ".join(memory),
        safety,
        model.native_size,
        family.default_steps,
        family.default_guidance,
        f"{budget.time_limit_s:g} s on {budget.instance_type}" if budget else "none",
    )
    return model


def model_fn(model_dir: str) -> LoadedModel:
    """Load the pipeline from the extracted model archive, or from the Hub when SD_MODEL_SOURCE=hub."""
    return load_model(model_dir)


def input_fn(input_data: Any, content_type: str, context: Any = None) -> GenerationRequest:
    """Decode and validate the request; every problem becomes a RequestError naming the field to fix."""
    return parse_request(input_data, content_type, context)


def _is_truncated(pipe: Any, text: str) -> bool:
    tokenizer = pipe.tokenizer
    ids = tokenizer(text, truncation=False, add_special_tokens=True, verbose=False)["input_ids"]
    return len(ids) > tokenizer.model_max_length


def predict_fn(data: GenerationRequest, model: LoadedModel) -> dict[str, Any]:
    """Generate the images with the request's parameters (family defaults filled in, limits and budget checked)."""
    family = model.family
    seed = data.seed if data.seed is not None else secrets.randbelow(MAX_SEED + 1)
    used = resolve_parameters(data, family, model.native_size, seed)
    steps, count = used["num_inference_steps"], used["num_images_per_prompt"]
    height, width = used["height"], used["width"]
    # diffusers runs classifier-free guidance (a UNet batch twice as large) only when guidance_scale > 1.
    guided = used["guidance_scale"] > 1.0
    if model.budget is not None:
        refused = check_budget(family.name, family.label, steps, height, width, count, guided, model.budget)
        if refused:
            raise RequestError(refused)
    pipe = model.pipe
    truncated = _is_truncated(pipe, data.prompt)
    if truncated:
        logger.warning("prompt is longer than %d tokens and was truncated", pipe.tokenizer.model_max_length)
    # One CPU generator per image: image i depends only on seed + i, on any device.
    generators = [torch.Generator(device="cpu").manual_seed(seed + index) for index in range(count)]
    extra: dict[str, Any] = {}
    with model.lock:
        # The deadline counts from when this request gets the GPU, not from when it arrived.
        started = model.clock()
        if model.budget is not None:
            extra["callback_on_step_end"] = deadline_callback(model.clock, started + model.budget.deadline_s, steps)
        # A fresh scheduler per request: schedulers keep per-run state (timesteps, solver history).
        pipe.scheduler = make_scheduler(used["scheduler"], model.scheduler_config, family.scheduler_overrides)
        timer = time.perf_counter()
        try:
            output = pipe(
                prompt=data.prompt,
                negative_prompt=used["negative_prompt"] or None,
                num_inference_steps=steps,
                guidance_scale=used["guidance_scale"],
                height=height,
                width=width,
                num_images_per_prompt=count,
                generator=generators,
                output_type="pil",
                **extra,
            )
        except DeadlineExceeded as stopped:
            assert model.budget is not None
            raise RequestError(
                f"generation {stopped} at the {model.budget.deadline_s:g} s deadline "
                f"({model.budget.time_limit_s:g} s limit on {model.budget.instance_type}): "
                "send fewer steps, a smaller size or fewer images"
            ) from None
        elapsed = time.perf_counter() - timer
    nsfw = getattr(output, "nsfw_content_detected", None)
    return {
        "images": list(output.images),
        "parameters": used,
        # None per image: nothing checked it (no checker in the folder, or disabled).
        "nsfw_content_detected": [bool(flag) for flag in nsfw] if nsfw is not None else [None] * count,
        "prompt_truncated": truncated,
        "timings": {"inference_s": round(elapsed, 3)},
        "model": {"name": model.name, "family": family.name},
        "accept": data.accept,
    }


def _png(image: Any) -> bytes:
    with io.BytesIO() as buffer:
        image.save(buffer, format="PNG")
        return buffer.getvalue()


def output_fn(prediction: dict[str, Any], accept: str) -> bytes:
    """Serialise to JSON (base64 PNGs) or, for Accept image/png, the first image's raw PNG."""
    wanted = media_type(accept) if accept and accept != ANY else prediction.get("accept", JSON)
    if wanted == PNG:
        return _png(prediction["images"][0])
    if wanted != JSON:
        raise RequestError(f"Accept {accept!r} is not supported: send exactly one of {JSON} or {PNG}")
    body = {
        "images": [base64.b64encode(_png(image)).decode("ascii") for image in prediction["images"]],
        "parameters": prediction["parameters"],
        "nsfw_content_detected": prediction["nsfw_content_detected"],
        "prompt_truncated": prediction["prompt_truncated"],
        "timings": prediction["timings"],
        "model": prediction["model"],
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
