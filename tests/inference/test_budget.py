"""sd_budget: the work budget's arithmetic and settings (the served refusals are in test_families.py)."""

from __future__ import annotations

import pytest

from tests.inference.helpers import code_module


@pytest.fixture
def sd_budget():
    with code_module("sd_budget") as module:
        yield module


@pytest.mark.parametrize(("family", "side", "steps"), [("sd1", 512, 25), ("sd2", 768, 25), ("sdxl", 1024, 25)])
def test_every_family_default_fits_a_t4_within_the_real_time_limit(sd_budget, family, side, steps):
    t4 = sd_budget.budget_from_env("ml.g4dn.xlarge", "60")
    assert sd_budget.check_budget(family, family, steps, side, side, 1, True, t4) is None


def test_faster_instances_and_longer_limits_allow_more_and_guidance_costs_more(sd_budget):
    t4 = sd_budget.budget_from_env("ml.g4dn.xlarge", "60")
    a10g = sd_budget.budget_from_env("ml.g5.2xlarge", "60")
    l4 = sd_budget.budget_from_env("ml.g6.xlarge", "60")
    async_t4 = sd_budget.budget_from_env("ml.g4dn.xlarge", "900")
    steps = {name: sd_budget.max_steps("sdxl", 1024, 1024, 1, True, b) for name, b in
             {"t4": t4, "a10g": a10g, "l4": l4, "async": async_t4}.items()}  # fmt: skip
    assert steps["t4"] < steps["l4"] < steps["a10g"] < steps["async"]
    assert sd_budget.max_steps("sdxl", 1024, 1024, 1, False, t4) > steps["t4"]
    assert sd_budget.max_steps("sdxl", 1024, 1024, 2, True, t4) < steps["t4"]


def test_an_unknown_instance_type_gets_half_a_t4_and_a_warning(sd_budget, caplog):
    with caplog.at_level("WARNING", logger="sd_inference"):
        unknown = sd_budget.budget_from_env("ml.p3.2xlarge", "60")
    assert (unknown.speed, unknown.gpu) == (0.5, "unknown GPU")
    assert "ml.p3.2xlarge" in caplog.text and "half a T4" in caplog.text
    t4 = sd_budget.budget_from_env("ml.g4dn.xlarge", "60")
    assert sd_budget.max_steps("sd1", 512, 512, 1, True, unknown) < sd_budget.max_steps("sd1", 512, 512, 1, True, t4)


def test_a_size_too_big_for_even_one_step_says_so(sd_budget):
    tight = sd_budget.budget_from_env("ml.g4dn.xlarge", "5")
    message = sd_budget.check_budget("sdxl", "Stable Diffusion XL", 1, 1024, 1024, 1, True, tight)
    assert message == (
        "1024x1024 is more than Stable Diffusion XL can draw on ml.g4dn.xlarge (NVIDIA T4 16 GB) within the "
        "5 s limit: send a smaller size or fewer images"
    )


@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan"])
def test_a_bad_time_limit_stops_the_endpoint_from_starting(sd_budget, value):
    with pytest.raises(ValueError, match="SD_TIME_LIMIT_SECONDS"):
        sd_budget.budget_from_env("ml.g4dn.xlarge", value)


def test_without_a_time_limit_there_is_no_budget(sd_budget):
    assert sd_budget.budget_from_env("ml.g4dn.xlarge", None) is None
