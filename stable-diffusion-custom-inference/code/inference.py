r"""Stable Diffusion v1.x handler for the SageMaker Hugging Face inference toolkit (model/input/predict/output_fn).

Request (`Content-Type: application/json`), every parameter optional:
    {"inputs": "<prompt>", "parameters": {"num_inference_steps": 25, "guidance_scale": 7.5,
     "height": 512, "width": 512, "seed": 42, "negative_prompt": "", "num_images_per_prompt": 1,
     "scheduler": "dpmsolver++"}}
A parameter sent as null takes its default. Unknown keys are refused.

Response (`Accept: application/json`, the default):
    {"images": ["<base64 PNG>", ...], "parameters": {...as used, seed included...},
     "nsfw_content_detected": [false, ...], "prompt_truncated": false,
     "timings": {"inference_s": 1.23}, "model": {"name": "stable-diffusion-v1-4"}}
`Accept: image/png` returns the first image as raw PNG bytes. `prompt_truncated` is true when the
prompt is longer than the CLIP text encoder's 77 tokens: only its beginning shaped the image.
Defaults: DPM-Solver++ (multistep, order 2), 25 steps, guidance 7.5, the model's native size
(512 for v1.x), one image; fp16 on CUDA, fp32 on CPU; PyTorch SDPA attention (AttnProcessor2_0).
Limits: steps 1-150, guidance 0-30, sides 64-1024 in multiples of 8, 1-4 images and at most
1024x1024 pixels per request, prompts up to 2000 characters, seed 0-4294967295. Schedulers:
dpmsolver++, euler, euler_a, ddim, pndm, lms.

Reproducibility: when no seed is sent one is drawn and returned; image i of a request uses
seed + i on a CPU generator, so any image can be regenerated alone (num_images_per_prompt=1,
seed=seed + i) and the same seed gives the same starting noise on CPU and GPU.

Errors: a bad request raises `RequestError`, whose str() is the JSON `{"error": "what to fix"}`.
The toolkit turns every exception into `PredictionException(str(error), 400)`, and the model
server (MMS 1.1.11, checked over HTTP) answers HTTP 400 with
    {"code": 400, "type": "InternalServerException", "message": "{\"error\": \"what to fix\"}"}
never a stack trace. SageMaker passes that body on as ModelError's OriginalMessage.

Environment:
    SD_DISABLE_SAFETY_CHECKER=true  skip the safety checker even when the model folder has one.
    SD_MODEL_NAME=<name>            the name reported in responses (default: code/model_info.json
                                    written by sd_tools.package_model, else the folder name).
A model folder without a safety checker is served with a logged WARNING; its images report
`nsfw_content_detected: null` (not checked), as do images served with the checker disabled.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import secrets
import threading
import time
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
)
from diffusers.models.attention_processor import AttnProcessor2_0

logger = logging.getLogger("sd_inference")

JSON = "application/json"
PNG = "image/png"
ANY = "*/*"
DEFAULT_SCHEDULER = "dpmsolver++"
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MIN_SIDE, MAX_SIDE = 64, 1024
MAX_IMAGES = 4
# One 1024x1024 image or four 512x512 ones: beyond that a T4 runs out of memory or past
# InvokeEndpoint's 60 s limit.
MAX_PIXELS_PER_REQUEST = 1024 * 1024
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
TOP_LEVEL_KEYS = ("inputs", "parameters")
PARAMETER_KEYS = (
    "num_inference_steps",
    "guidance_scale",
    "height",
    "width",
    "seed",
    "negative_prompt",
    "num_images_per_prompt",
    "scheduler",
)
TRUE_WORDS = ("1", "true", "yes", "on")


def _scheduler_factories() -> dict[str, Any]:
    # Built from the folder's scheduler config so the betas match the checkpoint's training.
    return {
        "dpmsolver++": lambda config: DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2
        ),
        "euler": EulerDiscreteScheduler.from_config,
        "euler_a": EulerAncestralDiscreteScheduler.from_config,
        "ddim": DDIMScheduler.from_config,
        "pndm": lambda config: PNDMScheduler.from_config(config, skip_prk_steps=True),
        "lms": LMSDiscreteScheduler.from_config,
    }


SCHEDULERS = tuple(_scheduler_factories())


def make_scheduler(name: str, config: Any) -> Any:
    """A fresh scheduler `name` (one of SCHEDULERS) built from a pipeline's scheduler config."""
    return _scheduler_factories()[name](config)


class RequestError(ValueError):
    """A request the endpoint refuses; str() is the JSON body `{"error": "what to fix"}`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return json.dumps({"error": self.message}, ensure_ascii=False)


@dataclass
class LoadedModel:
    """The pipeline plus what every request needs to know about it."""

    pipe: StableDiffusionPipeline
    name: str
    device: str
    dtype: torch.dtype
    scheduler_config: Any
    safety_checker: str  # "on", "disabled" (by SD_DISABLE_SAFETY_CHECKER) or "missing"
    native_size: int
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request; None means "use the model's default"."""

    prompt: str
    accept: str
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    num_images_per_prompt: int | None = None
    scheduler: str | None = None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUE_WORDS


def _model_name(model_dir: Path) -> str:
    if os.environ.get("SD_MODEL_NAME"):
        return os.environ["SD_MODEL_NAME"]
    info_file = Path(__file__).with_name("model_info.json")
    if info_file.is_file():
        try:
            name = json.loads(info_file.read_text(encoding="utf-8")).get("name")
        except (ValueError, AttributeError):
            name = None
        if isinstance(name, str) and name:
            return name
    return model_dir.name


def use_sdpa(pipe: StableDiffusionPipeline) -> None:
    """Switch the UNet and VAE to PyTorch's scaled-dot-product attention (AttnProcessor2_0)."""
    # SDPA (fused, memory-efficient attention kernels in PyTorch 2) is diffusers' default on
    # torch 2; set it explicitly so the endpoint never silently runs the classic processor.
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.vae.set_attn_processor(AttnProcessor2_0())


def model_fn(model_dir: str) -> LoadedModel:
    """Load the diffusers pipeline from the extracted model.tar.gz (no hub access)."""
    folder = Path(model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # fp16 halves memory and doubles T4 throughput; CPUs have no fast fp16 kernels.
    dtype = torch.float16 if device == "cuda" else torch.float32
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    has_checker = (index.get("safety_checker") or [None])[0] is not None and (folder / "safety_checker").is_dir()
    kwargs: dict[str, Any] = {}
    if _env_flag("SD_DISABLE_SAFETY_CHECKER"):
        safety = "disabled"
        logger.warning("SD_DISABLE_SAFETY_CHECKER is set: images are NOT checked for NSFW content")
    elif has_checker:
        safety = "on"
    else:
        safety = "missing"
        logger.warning(
            "model folder %s has no safety_checker/: images are NOT checked for NSFW content "
            "(package a folder that includes one, e.g. CompVis/stable-diffusion-v1-4, to enable it)",
            folder,
        )
    if safety != "on":
        # requires_safety_checker=False: we logged our own warning; skip diffusers' long one.
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True, **kwargs)
    use_sdpa(pipe)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    native_size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    model = LoadedModel(
        pipe=pipe,
        name=_model_name(folder),
        device=device,
        dtype=dtype,
        scheduler_config=pipe.scheduler.config,
        safety_checker=safety,
        native_size=native_size,
    )
    logger.info(
        "loaded %s on %s (%s), attention=SDPA, default scheduler=%s, safety checker=%s, native size=%d",
        model.name,
        device,
        dtype,
        DEFAULT_SCHEDULER,
        safety,
        native_size,
    )
    return model


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


def _requested_accept(context: Any) -> str:
    """The Accept header, normalised as the toolkit does (missing or */* means JSON)."""
    if context is None or not getattr(context, "request_processor", None):
        return JSON
    headers = context.request_processor[0].get_request_properties() or {}
    raw = headers.get("Accept") or headers.get("accept")
    if not raw or raw == ANY:
        return JSON
    accept = _media_type(raw)
    if "," in raw or accept not in (JSON, PNG):
        raise RequestError(f"Accept {raw!r} is not supported: send exactly one of {JSON} or {PNG}")
    return accept


def _decode_json(input_data: Any, content_type: str | None) -> Any:
    media_type = _media_type(content_type)
    if media_type != JSON:
        shown = content_type or "(none)"
        raise RequestError(f"Content-Type {shown!r} is not supported: send the request as {JSON}")
    if isinstance(input_data, bytes | bytearray):
        try:
            input_data = bytes(input_data).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("request body is not UTF-8 text: send UTF-8 encoded JSON") from None
    if not isinstance(input_data, str) or not input_data.strip():
        raise RequestError('request body is empty: send {"inputs": "<prompt>"}')

    def refuse_constant(name: str) -> Any:
        raise RequestError(f"request body contains {name}: use finite numbers")

    try:
        return json.loads(input_data, parse_constant=refuse_constant)
    except json.JSONDecodeError as error:
        where = f"{error.msg} at line {error.lineno} column {error.colno}"
        raise RequestError(
            f'request body is not valid JSON ({where}): send {{"inputs": "<prompt>", "parameters": {{...}}}}'
        ) from None


def _int_param(params: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    # bool is an int subclass in Python: true/false must not pass as 1/0.
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"parameters.{name} must be a whole number from {low} to {high}, got {_show(value)}")
    if not low <= value <= high:
        raise RequestError(f"parameters.{name} must be from {low} to {high}, got {value}")
    return value


def _size_param(params: dict[str, Any], name: str) -> int | None:
    value = _int_param(params, name, MIN_SIDE, MAX_SIDE)
    if value is not None and value % 8:
        # The VAE works on 8x8 pixel latents.
        raise RequestError(
            f"parameters.{name} must be a multiple of 8 from {MIN_SIDE} to {MAX_SIDE}, got {value} "
            f"(try {max(MIN_SIDE, value - value % 8)})"
        )
    return value


def _float_param(params: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"parameters.{name} must be a number from {low} to {high}, got {_show(value)}")
    if not low <= value <= high:
        raise RequestError(f"parameters.{name} must be from {low} to {high}, got {value}")
    return float(value)


def _text(value: Any, name: str, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        hint = " (one prompt per request; use parameters.num_images_per_prompt for several images)"
        raise RequestError(f"{name} must be a string, got {_show(value)}" + (hint if isinstance(value, list) else ""))
    if required and not value.strip():
        raise RequestError(f"{name} is empty: send the text to draw")
    if len(value) > MAX_PROMPT_CHARS:
        raise RequestError(f"{name} is {len(value)} characters long: send at most {MAX_PROMPT_CHARS}")
    return value.strip()


def input_fn(input_data: Any, content_type: str, context: Any = None) -> GenerationRequest:
    """Decode and validate the request; every problem becomes a RequestError naming the field to fix."""
    accept = _requested_accept(context)
    body = _decode_json(input_data, content_type)
    if not isinstance(body, dict):
        raise RequestError(f'request body must be a JSON object {{"inputs": "<prompt>", ...}}, got {_show(body)}')
    unknown = sorted(set(body) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise RequestError(f'unknown key(s) {unknown}: a request is {{"inputs": "<prompt>", "parameters": {{...}}}}')
    if "inputs" not in body:
        raise RequestError('"inputs" is missing: send {"inputs": "<prompt>"}')
    prompt = _text(body["inputs"], "inputs", required=True)
    params = body.get("parameters")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestError(f"parameters must be a JSON object, got {_show(params)}")
    unknown = sorted(set(params) - set(PARAMETER_KEYS))
    if unknown:
        raise RequestError(f"unknown parameter(s) {unknown}: allowed are {list(PARAMETER_KEYS)}")
    scheduler = params.get("scheduler")
    if scheduler is not None:
        if not isinstance(scheduler, str) or scheduler.strip().lower() not in SCHEDULERS:
            raise RequestError(f"parameters.scheduler must be one of {list(SCHEDULERS)}, got {_show(scheduler)}")
        scheduler = scheduler.strip().lower()
    return GenerationRequest(
        prompt=prompt or "",
        accept=accept,
        num_inference_steps=_int_param(params, "num_inference_steps", 1, MAX_STEPS),
        guidance_scale=_float_param(params, "guidance_scale", 0.0, MAX_GUIDANCE),
        height=_size_param(params, "height"),
        width=_size_param(params, "width"),
        seed=_int_param(params, "seed", 0, MAX_SEED),
        negative_prompt=_text(params.get("negative_prompt"), "parameters.negative_prompt", required=False),
        num_images_per_prompt=_int_param(params, "num_images_per_prompt", 1, MAX_IMAGES),
        scheduler=scheduler,
    )


def _is_truncated(pipe: StableDiffusionPipeline, text: str) -> bool:
    tokenizer = pipe.tokenizer
    ids = tokenizer(text, truncation=False, add_special_tokens=True, verbose=False)["input_ids"]
    return len(ids) > tokenizer.model_max_length


def predict_fn(data: GenerationRequest, model: LoadedModel) -> dict[str, Any]:
    """Generate the images with the request's parameters (model defaults filled in)."""
    height = data.height or model.native_size
    width = data.width or model.native_size
    count = data.num_images_per_prompt or 1
    if height * width * count > MAX_PIXELS_PER_REQUEST:
        raise RequestError(
            f"height x width x num_images_per_prompt = {height}x{width}x{count} is over the limit of "
            f"{MAX_PIXELS_PER_REQUEST} pixels per request: send a smaller size or fewer images"
        )
    seed = data.seed if data.seed is not None else secrets.randbelow(MAX_SEED + 1)
    used = {
        "num_inference_steps": data.num_inference_steps or DEFAULT_STEPS,
        "guidance_scale": data.guidance_scale if data.guidance_scale is not None else DEFAULT_GUIDANCE,
        "height": height,
        "width": width,
        "seed": seed,
        "negative_prompt": data.negative_prompt or "",
        "num_images_per_prompt": count,
        "scheduler": data.scheduler or DEFAULT_SCHEDULER,
    }
    pipe = model.pipe
    truncated = _is_truncated(pipe, data.prompt)
    if truncated:
        logger.warning("prompt is longer than %d tokens and was truncated", pipe.tokenizer.model_max_length)
    # One CPU generator per image: image i depends only on seed + i, on any device.
    generators = [torch.Generator(device="cpu").manual_seed(seed + index) for index in range(count)]
    with model.lock:
        # A fresh scheduler per request: schedulers keep per-run state (timesteps, solver history).
        pipe.scheduler = make_scheduler(used["scheduler"], model.scheduler_config)
        started = time.perf_counter()
        output = pipe(
            prompt=data.prompt,
            negative_prompt=used["negative_prompt"] or None,
            num_inference_steps=used["num_inference_steps"],
            guidance_scale=used["guidance_scale"],
            height=height,
            width=width,
            num_images_per_prompt=count,
            generator=generators,
            output_type="pil",
        )
        elapsed = time.perf_counter() - started
    nsfw = output.nsfw_content_detected
    return {
        "images": list(output.images),
        "parameters": used,
        # None per image: nothing checked it (no checker in the folder, or disabled).
        "nsfw_content_detected": [bool(flag) for flag in nsfw] if nsfw is not None else [None] * count,
        "prompt_truncated": truncated,
        "timings": {"inference_s": round(elapsed, 3)},
        "model": {"name": model.name},
        "accept": data.accept,
    }


def _png(image: Any) -> bytes:
    with io.BytesIO() as buffer:
        image.save(buffer, format="PNG")
        return buffer.getvalue()


def output_fn(prediction: dict[str, Any], accept: str) -> bytes:
    """Serialise to JSON (base64 PNGs) or, for Accept image/png, the first image's raw PNG."""
    wanted = _media_type(accept) if accept and accept != ANY else prediction.get("accept", JSON)
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
