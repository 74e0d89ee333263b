"""SD 2.x (v-prediction), SDXL and turbo models behind the real toolkit handler: defaults, limits, budget, deadline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from diffusers import EulerAncestralDiscreteScheduler

from sd_tools.toolkit_harness import ToolkitEndpoint, error_message
from tests.inference.helpers import code_module, generate, pixels, png_image, request

FAMILIES = ("sd2", "sdxl", "sd-turbo", "sdxl-turbo")
# The family's own step count where it has a cap (turbo: at most 4).
FAST_STEPS = {"sd2": 2, "sdxl": 2, "sd-turbo": 2, "sdxl-turbo": 2}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_serves_pngs_of_the_requested_size_and_same_seed_same_image(family_endpoints, family):
    endpoint = family_endpoints[family]
    assert endpoint.model.family.name == family
    first = generate(endpoint, num_inference_steps=FAST_STEPS[family], height=64, width=96, seed=21)
    assert png_image(first).size == (96, 64)
    assert first["model"]["family"] == family
    again = generate(endpoint, num_inference_steps=FAST_STEPS[family], height=64, width=96, seed=21)
    other = generate(endpoint, num_inference_steps=FAST_STEPS[family], height=64, width=96, seed=22)
    assert np.abs(pixels(first) - pixels(again)).max() <= 1
    assert np.abs(pixels(first) - pixels(other)).mean() > 3
    # None of these folders has a safety checker (as in the stabilityai repos): reported, not faked.
    assert first["nsfw_content_detected"] == [None]


@pytest.mark.parametrize(
    ("family", "steps", "guidance", "scheduler"),
    [
        ("sd2", 25, 7.5, "dpmsolver++"),
        ("sdxl", 25, 5.0, "dpmsolver++"),
        ("sd-turbo", 1, 0.0, "euler_a"),
        ("sdxl-turbo", 1, 0.0, "euler_a"),
    ],
)
def test_a_request_with_only_a_prompt_gets_the_family_defaults(family_endpoints, family, steps, guidance, scheduler):
    endpoint = family_endpoints[family]
    result = request(endpoint, {"inputs": "a lighthouse at dusk", "parameters": {"seed": 1}})
    assert result.status == 200, result.body[:300]
    used = result.json()["parameters"]
    assert (used["num_inference_steps"], used["guidance_scale"], used["scheduler"]) == (steps, guidance, scheduler)
    assert (used["height"], used["width"]) == (64, 64)  # the tiny models' native size
    assert png_image(result.json()).size == (64, 64)


def test_turbo_samples_on_trailing_timesteps_and_sd2_keeps_v_prediction(family_endpoints):
    turbo = family_endpoints["sdxl-turbo"]
    generate(turbo, num_inference_steps=2, seed=1)
    assert isinstance(turbo.model.pipe.scheduler, EulerAncestralDiscreteScheduler)
    assert turbo.model.pipe.scheduler.config.timestep_spacing == "trailing"
    sd2 = family_endpoints["sd2"]
    assert sd2.model.prediction_type == "v_prediction"
    generate(sd2, seed=1)
    assert sd2.model.pipe.scheduler.config.prediction_type == "v_prediction"  # the default DPM-Solver++ too


def test_sdxl_loads_the_fp16_variant_when_the_folder_has_one(family_endpoints):
    assert family_endpoints["sdxl"].model.variant == "fp16"
    assert family_endpoints["sd2"].model.variant is None


@pytest.mark.parametrize(
    ("family", "parameters", "fix"),
    [
        ("sd-turbo", {"num_inference_steps": 5}, "num_inference_steps must be from 1 to 4 for SD-Turbo"),
        ("sdxl-turbo", {"guidance_scale": 7.5}, "guidance_scale must be from 0.0 to 1.0 for SDXL-Turbo"),
        ("sdxl-turbo", {"scheduler": "dpmsolver++"}, "scheduler must be one of ['euler', 'euler_a'] for SDXL-Turbo"),
        ("sdxl", {"num_inference_steps": 101}, "num_inference_steps must be from 1 to 100 for Stable Diffusion XL"),
        ("sdxl", {"scheduler": "pndm"}, "scheduler must be one of"),
        ("sd2", {"width": 1536}, "width must be from 64 to 1024 for Stable Diffusion 2.x"),
        ("sdxl", {"height": 1024, "width": 1024, "num_images_per_prompt": 3}, "over the limit of 2359296 pixels"),
    ],
)
def test_per_family_validation_names_the_limit(family_endpoints, family, parameters, fix):
    result = request(family_endpoints[family], {"inputs": "a fox", "parameters": parameters})
    assert result.status == 400
    assert fix in error_message(result)


def _endpoint_with(folder: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> ToolkitEndpoint:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return ToolkitEndpoint(folder)


def test_over_budget_requests_are_refused_with_the_largest_allowed(family_dirs, monkeypatch):
    env = {"SD_INSTANCE_TYPE": "ml.g4dn.xlarge", "SD_TIME_LIMIT_SECONDS": "60"}
    with _endpoint_with(family_dirs["sdxl"], monkeypatch, **env) as sdxl:
        many = request(
            sdxl, {"inputs": "a fox", "parameters": {"height": 1024, "width": 1024, "num_inference_steps": 60}}
        )
        fits = request(sdxl, {"inputs": "a fox", "parameters": {"num_inference_steps": 2, "seed": 1}})
    assert many.status == 400
    message = error_message(many)
    assert message.startswith("at 1024x1024 with guidance this model (Stable Diffusion XL) allows at most ")
    assert "steps on ml.g4dn.xlarge (NVIDIA T4 16 GB) within the 60 s limit, got num_inference_steps=60" in message
    assert fits.status == 200


def test_the_default_sdxl_request_fits_a_t4_in_real_time_and_more_steps_are_refused(family_dirs, monkeypatch):
    # Budget arithmetic only (no 1024x1024 generation on a CPU): the refusal happens before the pipeline runs.
    with code_module("sd_budget") as budget:
        t4 = budget.budget_from_env("ml.g4dn.xlarge", "60")
        allowed = budget.max_steps("sdxl", 1024, 1024, 1, True, t4)
    assert 25 <= allowed < 40
    env = {"SD_INSTANCE_TYPE": "ml.g4dn.xlarge", "SD_TIME_LIMIT_SECONDS": "60"}
    with _endpoint_with(family_dirs["sdxl"], monkeypatch, **env) as sdxl:
        over = request(
            sdxl, {"inputs": "a", "parameters": {"height": 1024, "width": 1024, "num_inference_steps": allowed + 1}}
        )
    assert f"allows at most {allowed} steps" in error_message(over)


def test_generation_stops_at_the_deadline_and_the_endpoint_keeps_serving(family_dirs, monkeypatch):
    env = {"SD_INSTANCE_TYPE": "ml.g5.xlarge", "SD_TIME_LIMIT_SECONDS": "60"}
    with _endpoint_with(family_dirs["sd2"], monkeypatch, **env) as sd2:
        ticks = iter(range(0, 10_000, 20))  # every look at the clock: 20 s later
        sd2.model.clock = lambda: float(next(ticks))
        stopped = request(sd2, {"inputs": "a fox", "parameters": {"num_inference_steps": 10, "seed": 1}})
        # 0 s at the start, then 20, 40, 60 after steps 1-3: past the 54 s deadline (90% of 60 s) after step 3.
        assert stopped.status == 400
        assert error_message(stopped) == (
            "generation stopped after step 3 of 10 at the 54 s deadline (60 s limit on ml.g5.xlarge): "
            "send fewer steps, a smaller size or fewer images"
        )
        sd2.model.clock = lambda: 0.0  # time stands still: nothing is stopped
        assert request(sd2, {"inputs": "a fox", "parameters": {"num_inference_steps": 2, "seed": 1}}).status == 200


def _copy(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    return target


@pytest.mark.parametrize(
    ("break_it", "named"),
    [
        (lambda d: shutil.rmtree(d / "text_encoder_2"), "lacks the component folder(s) text_encoder_2"),
        (lambda d: (d / "unet" / "diffusion_pytorch_model.safetensors").unlink(), "no weights in unet"),
        (
            lambda d: (d / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"})),
            "names pipeline 'FluxPipeline', which this endpoint does not serve",
        ),
        (
            lambda d: (d / "model_index.json").write_text(
                json.dumps({**json.loads((d / "model_index.json").read_text()), "tokenizer_2": [None, None]})
            ),
            "lists no tokenizer_2",
        ),
        (
            lambda d: (d / "speech_to_image.json").write_text('{"family": "sd-turbo"}'),
            "holds a Stable Diffusion XL (StableDiffusionXLPipeline) but is named sd-turbo",
        ),
    ],
    ids=["missing-folder", "missing-weights", "unsupported-pipeline", "null-component", "wrong-family"],
)
def test_a_folder_the_endpoint_cannot_serve_fails_to_load_naming_what_is_missing(
    family_dirs, tmp_path, break_it, named
):
    folder = tmp_path / "broken"
    shutil.copytree(family_dirs["sdxl"], folder)
    for fp16 in folder.rglob("*.fp16.safetensors"):
        fp16.unlink()  # so a missing default weight file is not covered by the fp16 set
    break_it(folder)
    with pytest.raises(Exception, match="cannot serve") as raised:
        ToolkitEndpoint(folder)
    assert named in str(raised.value)


def test_the_pipeline_reads_an_unchecked_sdxl_response_with_its_family(family_endpoints):
    from pipeline_common.endpoint_output import parse_response

    body = request(family_endpoints["sdxl"], {"inputs": "a fox", "parameters": {"num_inference_steps": 2, "seed": 3}})
    parsed = parse_response(body.body, {})
    assert parsed.model == {"name": "tiny-sdxl", "family": "sdxl"}
    assert parsed.nsfw_content_detected is False  # null (nothing checked) is not a flag: the image is kept
    assert parsed.png.startswith(b"\x89PNG")
