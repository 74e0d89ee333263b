"""The work budget (refuse what the instance cannot finish within the time limit) and the per-request deadline.

Cost model, per image (docs/MODELS.md has the derivation and sources):
    seconds = steps x STEP_S[family] x (pixels / REF_PIXELS[family]) ** 1.2 x (1 with guidance, 0.55 without)
              + VAE_S[family] x pixels / REF_PIXELS[family]
plus OVERHEAD_S per request, divided by the instance's speed relative to a T4 (ml.g4dn). STEP_S is one
classifier-free-guided UNet step (batch 2) at the family's native size on a T4 in fp16 with SDPA; the 1.2
exponent is attention's super-linear growth with the number of latent tokens. A request is admitted when its
estimate fits in BUDGET_SHARE of the time limit; generation stops at DEADLINE_SHARE of it regardless.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("sd_inference")

# T4 fp16 + SDPA, one guided step at the reference size (FACTS: SD 1.x 512x512 6.9-7.6 it/s on a T4).
STEP_S = {"sd1": 1 / 6.9, "sd2": 0.16, "sdxl": 1.6, "sd-turbo": 0.16, "sdxl-turbo": 1.6}
REF_PIXELS = {"sd1": 512 * 512, "sd2": 512 * 512, "sdxl": 1024 * 1024, "sd-turbo": 512 * 512, "sdxl-turbo": 1024 * 1024}
VAE_S = {"sd1": 0.5, "sd2": 0.5, "sdxl": 3.0, "sd-turbo": 0.5, "sdxl-turbo": 3.0}
OVERHEAD_S = 1.5  # text encoders, safety checker, PNG encoding, transfer
ATTENTION_EXPONENT = 1.2
UNGUIDED_SHARE = 0.55  # batch 1 instead of 2: a little over half (fixed per-step costs)
# Speed relative to a T4 (see docs/MODELS.md): A10G ~2x a T4's fp16 throughput, L4 ~1.5x, de-rated 10-15%.
INSTANCE_SPEED = {
    "ml.g4dn": ("NVIDIA T4 16 GB", 1.0),
    "ml.g5": ("NVIDIA A10G 24 GB", 1.8),
    "ml.g6": ("NVIDIA L4 24 GB", 1.3),
}
UNKNOWN_SPEED = 0.5  # an instance type we have no figures for: assume half a T4 and say so
BUDGET_SHARE = 0.8  # admit a request whose estimate fits in 80% of the limit
DEADLINE_SHARE = 0.9  # stop the UNet loop at 90% of it: the VAE decode and the reply need the rest


@dataclass(frozen=True)
class Budget:
    """The time limit and instance speed requests are checked against."""

    instance_type: str
    gpu: str
    speed: float
    time_limit_s: float

    @property
    def deadline_s(self) -> float:
        """Seconds after the start of a request at which generation is stopped."""
        return self.time_limit_s * DEADLINE_SHARE


def budget_from_env(instance_type: str | None, time_limit: str | None) -> Budget | None:
    """The budget for SD_INSTANCE_TYPE / SD_TIME_LIMIT_SECONDS; None (no budget, no deadline) without a limit."""
    if not time_limit:
        logger.warning("SD_TIME_LIMIT_SECONDS is not set: requests get no work budget and no deadline")
        return None
    try:
        limit = float(time_limit)
    except ValueError:
        raise ValueError(f"SD_TIME_LIMIT_SECONDS={time_limit!r} is not a number of seconds") from None
    if not math.isfinite(limit) or limit <= 0:
        raise ValueError(f"SD_TIME_LIMIT_SECONDS={time_limit!r} must be a positive number of seconds")
    name = (instance_type or "").strip()
    prefix = ".".join(name.split(".")[:2])
    if prefix in INSTANCE_SPEED:
        gpu, speed = INSTANCE_SPEED[prefix]
    else:
        gpu, speed = "unknown GPU", UNKNOWN_SPEED
        logger.warning(
            "SD_INSTANCE_TYPE=%r has no published speed here (known: %s): budgeting as half a T4",
            name,
            ", ".join(f"{key}.*" for key in INSTANCE_SPEED),
        )
    return Budget(instance_type=name or "unknown", gpu=gpu, speed=speed, time_limit_s=limit)


def estimate_seconds(family: str, steps: int, height: int, width: int, count: int, guided: bool, speed: float) -> float:
    """Estimated seconds for one request on an instance `speed` times a T4."""
    scale = height * width / REF_PIXELS[family]
    step = STEP_S[family] * scale**ATTENTION_EXPONENT * (1.0 if guided else UNGUIDED_SHARE)
    return (OVERHEAD_S + count * (steps * step + VAE_S[family] * scale)) / speed


def max_steps(family: str, height: int, width: int, count: int, guided: bool, budget: Budget) -> int:
    """The most steps that fit the budget at this size (0: not even one)."""
    allowed = budget.time_limit_s * BUDGET_SHARE
    one = estimate_seconds(family, 1, height, width, count, guided, budget.speed)
    zero = estimate_seconds(family, 0, height, width, count, guided, budget.speed)
    return max(0, math.floor((allowed - zero) / (one - zero)))


def check_budget(
    family: str, label: str, steps: int, height: int, width: int, count: int, guided: bool, budget: Budget
) -> str | None:
    """None when the request fits, else the message that says the largest allowed."""
    allowed = max_steps(family, height, width, count, guided, budget)
    if steps <= allowed:
        return None
    where = f"on {budget.instance_type} ({budget.gpu}) within the {budget.time_limit_s:g} s limit"
    images = f" x {count} images" if count > 1 else ""
    mode = "with guidance" if guided else "without guidance"
    if allowed == 0:
        return f"{height}x{width}{images} is more than {label} can draw {where}: send a smaller size or fewer images"
    return (
        f"at {height}x{width}{images} {mode} this model ({label}) allows at most {allowed} steps {where}, "
        f"got num_inference_steps={steps}: send at most {allowed} steps, a smaller size or fewer images"
    )


class DeadlineExceeded(RuntimeError):
    """Generation was stopped at the deadline."""


def deadline_callback(clock: Callable[[], float], deadline: float, total_steps: int) -> Callable[..., dict]:
    """A diffusers `callback_on_step_end` that stops generation once `clock()` passes `deadline`."""

    def stop_at_deadline(pipe: object, step: int, timestep: object, callback_kwargs: dict) -> dict:
        if clock() >= deadline:
            # Raising leaves the denoising loop at once (no VAE decode of a half-made image): the GPU is free.
            raise DeadlineExceeded(f"stopped after step {step + 1} of {total_steps}")
        return callback_kwargs

    return stop_at_deadline
