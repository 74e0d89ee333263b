"""Request parsing and per-family validation for code/inference.py (shapes in its docstring)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from sd_families import ALL_SCHEDULERS, Family

JSON = "application/json"
PNG = "image/png"
ANY = "*/*"
# Absolute limits checked before the model is known; each family narrows them (sd_families.FAMILIES).
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MIN_SIDE, MAX_SIDE = 64, 2048
MAX_IMAGES = 4
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
SCHEDULERS = ALL_SCHEDULERS
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


class RequestError(ValueError):
    """A request the endpoint refuses; str() is the JSON body `{"error": "what to fix"}`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return json.dumps({"error": self.message}, ensure_ascii=False)


@dataclass(frozen=True)
class GenerationRequest:
    """A parsed request; None means "use the model's default"."""

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


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def media_type(header: str | None) -> str:
    """The media type of a Content-Type/Accept header, lower case, parameters dropped."""
    return (header or "").split(";")[0].strip().lower()


def _requested_accept(context: Any) -> str:
    """The Accept header, normalised as the toolkit does (missing or */* means JSON)."""
    if context is None or not getattr(context, "request_processor", None):
        return JSON
    headers = context.request_processor[0].get_request_properties() or {}
    raw = headers.get("Accept") or headers.get("accept")
    if not raw or raw == ANY:
        return JSON
    accept = media_type(raw)
    if "," in raw or accept not in (JSON, PNG):
        raise RequestError(f"Accept {raw!r} is not supported: send exactly one of {JSON} or {PNG}")
    return accept


def _decode_json(input_data: Any, content_type: str | None) -> Any:
    if media_type(content_type) != JSON:
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


def parse_request(input_data: Any, content_type: str, context: Any = None) -> GenerationRequest:
    """Decode and check the request's shape and types; every problem becomes a RequestError naming the field."""
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


def resolve_parameters(data: GenerationRequest, family: Family, native_size: int, seed: int) -> dict[str, Any]:
    """The parameters to generate with: the family's defaults filled in and its limits enforced."""
    used = {
        "num_inference_steps": data.num_inference_steps or family.default_steps,
        "guidance_scale": data.guidance_scale if data.guidance_scale is not None else family.default_guidance,
        "height": data.height or native_size,
        "width": data.width or native_size,
        "seed": seed,
        "negative_prompt": data.negative_prompt or "",
        "num_images_per_prompt": data.num_images_per_prompt or 1,
        "scheduler": data.scheduler or family.default_scheduler,
    }
    who = f"{family.label} ({family.name})"
    if used["num_inference_steps"] > family.max_steps:
        raise RequestError(
            f"parameters.num_inference_steps must be from 1 to {family.max_steps} for {who}, "
            f"got {used['num_inference_steps']}"
        )
    if used["guidance_scale"] > family.max_guidance:
        raise RequestError(
            f"parameters.guidance_scale must be from 0.0 to {family.max_guidance} for {who}, "
            f"got {used['guidance_scale']}"
        )
    for name in ("height", "width"):
        if used[name] > family.max_side:
            raise RequestError(
                f"parameters.{name} must be from {MIN_SIDE} to {family.max_side} for {who}, got {used[name]}"
            )
    if used["scheduler"] not in family.schedulers:
        raise RequestError(
            f"parameters.scheduler must be one of {list(family.schedulers)} for {who}, got {used['scheduler']!r}"
        )
    pixels = used["height"] * used["width"] * used["num_images_per_prompt"]
    if pixels > family.max_pixels:
        raise RequestError(
            f"height x width x num_images_per_prompt = {used['height']}x{used['width']}x"
            f"{used['num_images_per_prompt']} "
            f"is over the limit of {family.max_pixels} pixels per request for {who}: "
            "send a smaller size or fewer images"
        )
    return used
