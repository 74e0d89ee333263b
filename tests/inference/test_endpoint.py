"""code/inference.py behind the real SageMaker Hugging Face toolkit handler, with the tiny model."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler
from diffusers.models.attention_processor import AttnProcessor2_0

from sd_tools.tiny_model import build_tiny_model
from sd_tools.toolkit_harness import ToolkitEndpoint, error_message
from tests.inference.helpers import FAST, decode_png, generate, pixels, png_image, request

PARAMETER_KEYS = {
    "num_inference_steps",
    "guidance_scale",
    "height",
    "width",
    "seed",
    "negative_prompt",
    "num_images_per_prompt",
    "scheduler",
}


def test_response_has_the_contract_shape_and_a_png_of_the_requested_size(endpoint):
    response = generate(endpoint, height=64, width=128, seed=11)
    assert set(response) == {"images", "parameters", "nsfw_content_detected", "prompt_truncated", "timings", "model"}
    assert len(response["images"]) == 1
    image = png_image(response)
    assert image.size == (128, 64)  # PIL reports (width, height)
    assert image.mode == "RGB"
    assert response["nsfw_content_detected"] == [False]
    assert response["prompt_truncated"] is False
    assert response["timings"]["inference_s"] > 0
    assert response["model"] == {"name": "tiny-sd", "family": "sd1"}
    # The safety checker passed it and the model is random: a noisy image, not a black one.
    assert pixels(response).std() > 5


def test_parameters_are_echoed_as_used(endpoint):
    sent = {
        "num_inference_steps": 3,
        "guidance_scale": 5,
        "height": 72,
        "width": 64,
        "seed": 1234,
        "negative_prompt": "blurry",
        "num_images_per_prompt": 1,
        "scheduler": "EULER_A",
    }
    response = generate(endpoint, **sent)
    assert response["parameters"] == {**sent, "guidance_scale": 5.0, "scheduler": "euler_a"}
    assert isinstance(endpoint.model.pipe.scheduler, EulerAncestralDiscreteScheduler)


def test_defaults_are_dpm_solver_pp_25_steps_with_sdpa_attention(endpoint):
    result = request(endpoint, {"inputs": "a lighthouse at dusk"})
    assert result.status == 200, result.body[:300]
    used = result.json()["parameters"]
    assert set(used) == PARAMETER_KEYS
    assert used["scheduler"] == "dpmsolver++"
    assert used["num_inference_steps"] == 25
    assert used["guidance_scale"] == 7.5
    assert used["num_images_per_prompt"] == 1
    assert used["negative_prompt"] == ""
    # The tiny model's native size (sample_size 32 x VAE factor 2), as 512 is for v1-4.
    assert (used["height"], used["width"]) == (64, 64)
    assert isinstance(used["seed"], int) and 0 <= used["seed"] < 2**32
    pipe = endpoint.model.pipe
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++"
    assert len(pipe.scheduler.timesteps) == 25
    processors = list(pipe.unet.attn_processors.values()) + list(pipe.vae.attn_processors.values())
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)


def test_same_seed_same_image_other_seed_other_image(endpoint):
    first = pixels(generate(endpoint, seed=42))
    again = pixels(generate(endpoint, seed=42))
    other = pixels(generate(endpoint, seed=43))
    assert np.abs(first - again).max() <= 1
    assert np.abs(first - other).mean() > 10


def test_an_unseeded_image_is_reproduced_from_the_returned_seed(endpoint):
    response = generate(endpoint)
    seed = response["parameters"]["seed"]
    again = generate(endpoint, seed=seed)
    assert np.abs(pixels(response) - pixels(again)).max() <= 1


def test_image_i_of_a_batch_is_reproducible_alone_with_seed_plus_i(endpoint):
    batch = generate(endpoint, seed=500, num_images_per_prompt=2)
    assert len(batch["images"]) == 2
    assert batch["nsfw_content_detected"] == [False, False]
    second_alone = generate(endpoint, seed=501)
    assert np.abs(pixels(batch, 1) - pixels(second_alone)).max() <= 2
    assert np.abs(pixels(batch, 0) - pixels(batch, 1)).mean() > 10


@pytest.mark.parametrize(
    ("prompt", "truncated"),
    [
        ("a" * 75, False),  # 75 byte tokens + start + end = 77, the CLIP limit
        ("a" * 76, True),
        ("an astronaut riding a horse on the moon, " * 8, True),
        ("an astronaut riding a horse", False),
    ],
)
def test_prompt_truncation_is_reported(endpoint, prompt, truncated):
    assert generate(endpoint, prompt)["prompt_truncated"] is truncated


def test_accept_image_png_returns_the_raw_first_image(endpoint):
    body = {"inputs": "a red fox in the snow", "parameters": {**FAST, "seed": 9, "width": 96}}
    result = request(endpoint, body, accept="image/png")
    assert result.status == 200
    assert result.content_type == "image/png"
    image = decode_png(result.body)
    assert image.size == (96, 64)
    as_json = generate(endpoint, seed=9, width=96)
    assert np.abs(np.asarray(image.convert("RGB"), dtype=np.int16) - pixels(as_json)).max() <= 1


def test_accept_any_and_a_charset_parameter_get_json(endpoint):
    body = json.dumps({"inputs": "a fox", "parameters": FAST}).encode()
    result = endpoint.invoke(body, content_type="application/json; charset=utf-8", accept="*/*")
    assert result.status == 200
    assert result.content_type == "application/json"
    assert len(result.json()["images"]) == 1


BAD_REQUESTS = [
    pytest.param(b'{"inputs": "a fox", ', {}, "not valid JSON", id="malformed-json"),
    pytest.param(b"", {}, "body is empty", id="empty-body"),
    pytest.param(
        b'{"inputs": "a fox"}', {"content_type": "text/plain"}, "Content-Type 'text/plain'", id="content-type"
    ),
    pytest.param(b'{"inputs": "a fox"}', {"accept": "text/html"}, "Accept 'text/html'", id="accept"),
    pytest.param(b'["a fox"]', {}, "must be a JSON object", id="body-not-object"),
    pytest.param({"parameters": {}}, {}, '"inputs" is missing', id="missing-inputs"),
    pytest.param({"inputs": ["a", "b"]}, {}, "num_images_per_prompt", id="inputs-list"),
    pytest.param({"inputs": "   "}, {}, "inputs is empty", id="blank-prompt"),
    pytest.param({"inputs": "x" * 2001}, {}, "at most 2000", id="prompt-too-long"),
    pytest.param({"inputs": "a", "prompt": "a"}, {}, "unknown key(s) ['prompt']", id="unknown-top-level"),
    pytest.param({"inputs": "a", "parameters": [1]}, {}, "parameters must be a JSON object", id="parameters-list"),
    pytest.param(
        {"inputs": "a", "parameters": {"strength": 0.5}}, {}, "unknown parameter(s) ['strength']", id="unknown-param"
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"num_inference_steps": True}},
        {},
        "parameters.num_inference_steps must be a whole number",
        id="steps-bool",
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"num_inference_steps": 2.5}},
        {},
        "parameters.num_inference_steps must be a whole number",
        id="steps-float",
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"num_inference_steps": 151}},
        {},
        "parameters.num_inference_steps must be from 1 to 150",
        id="steps-too-many",
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"num_inference_steps": 0}},
        {},
        "parameters.num_inference_steps must be from 1 to 150",
        id="steps-zero",
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"guidance_scale": "high"}},
        {},
        "parameters.guidance_scale must be a number",
        id="guidance-string",
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"guidance_scale": False}},
        {},
        "parameters.guidance_scale must be a number",
        id="guidance-bool",
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"guidance_scale": 31}},
        {},
        "parameters.guidance_scale must be from 0.0 to 30.0",
        id="guidance-range",
    ),
    pytest.param(
        b'{"inputs": "a", "parameters": {"guidance_scale": NaN}}', {}, "use finite numbers", id="guidance-nan"
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"height": 100}},
        {},
        "parameters.height must be a multiple of 8",
        id="height-not-8",
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"width": 2048}},
        {},
        "parameters.width must be from 64 to 1024",
        id="width-too-big",
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"height": 32}},
        {},
        "parameters.height must be from 64 to 2048",
        id="height-too-small",
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"width": "512"}},
        {},
        "parameters.width must be a whole number",
        id="width-string",
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"seed": -1}},
        {},
        "parameters.seed must be from 0 to 4294967295",
        id="seed-negative",
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"seed": "42"}}, {}, "parameters.seed must be a whole number", id="seed-string"
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"num_images_per_prompt": 5}},
        {},
        "parameters.num_images_per_prompt must be from 1 to 4",
        id="too-many-images",
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"negative_prompt": 5}},
        {},
        "parameters.negative_prompt must be a string",
        id="negative-not-string",
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"scheduler": "karras"}},
        {},
        "parameters.scheduler must be one of",
        id="scheduler-unknown",
    ),
    pytest.param(
        {"inputs": "a", "parameters": {"height": 1024, "width": 1024, "num_images_per_prompt": 2}},
        {},
        "over the limit",
        id="pixel-budget",
    ),
]


@pytest.mark.parametrize(("body", "headers", "fix"), BAD_REQUESTS)
def test_bad_requests_get_a_400_that_says_what_to_fix(endpoint, body, headers, fix):
    result = request(endpoint, body, **headers)
    assert result.status == 400
    assert result.content_type == "application/json"
    text = result.body.decode("utf-8")
    assert "Traceback" not in text and 'File "' not in text
    # The model server's envelope carries our {"error": ...} JSON as its message.
    envelope = result.json()
    assert envelope["code"] == 400
    assert set(json.loads(envelope["message"])) == {"error"}
    assert fix in error_message(result)


def test_parameters_sent_as_null_take_their_defaults(endpoint):
    body = {"inputs": "a fox", "parameters": {**FAST, "seed": None, "scheduler": None, "guidance_scale": None}}
    result = request(endpoint, body)
    assert result.status == 200
    used = result.json()["parameters"]
    assert used["scheduler"] == "dpmsolver++" and used["guidance_scale"] == 7.5 and isinstance(used["seed"], int)


def test_invalid_utf8_is_refused_by_the_toolkit_without_a_stack_trace(endpoint):
    # The toolkit decodes application/json bodies itself before input_fn runs: its message passes through.
    result = endpoint.invoke(b'{"inputs": "\xff"}')
    assert result.status == 400
    assert "utf-8" in error_message(result) and "Traceback" not in result.body.decode()


def test_concurrent_invocations_are_served_one_at_a_time_correctly(endpoint):
    expected = {seed: pixels(generate(endpoint, seed=seed)) for seed in (1, 2, 3)}
    results: dict[int, np.ndarray] = {}

    def run(seed: int) -> None:
        results[seed] = pixels(generate(endpoint, seed=seed))

    threads = [threading.Thread(target=run, args=(seed,)) for seed in expected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seed, image in expected.items():
        assert np.abs(results[seed] - image).max() <= 1


def test_a_flagged_image_is_blacked_out_and_reported(tmp_path):
    model = build_tiny_model(tmp_path / "tiny-flag", safety_checker="flag")
    with ToolkitEndpoint(model) as flagging:
        assert flagging.model.safety_checker == "on"
        response = generate(flagging, seed=3, num_images_per_prompt=2)
    assert response["nsfw_content_detected"] == [True, True]
    assert pixels(response, 0).max() == 0 and pixels(response, 1).max() == 0


def test_safety_checker_can_be_disabled_by_env_var(tmp_path, monkeypatch):
    model = build_tiny_model(tmp_path / "tiny-flag", safety_checker="flag")
    monkeypatch.setenv("SD_DISABLE_SAFETY_CHECKER", "true")
    with ToolkitEndpoint(model) as unchecked:
        assert unchecked.model.safety_checker == "disabled"
        assert unchecked.model.pipe.safety_checker is None
        response = generate(unchecked, seed=3)
    # Not checked (null), and the checker that would have flagged it did not black it out.
    assert response["nsfw_content_detected"] == [None]
    assert pixels(response).std() > 5


def test_a_model_without_safety_checker_is_served_with_a_warning(tmp_path, caplog):
    model = build_tiny_model(tmp_path / "tiny-no-checker", safety_checker="none")
    with caplog.at_level("WARNING", logger="sd_inference"), ToolkitEndpoint(model) as unchecked:
        assert unchecked.model.safety_checker == "missing"
        response = generate(unchecked, seed=3)
    assert response["nsfw_content_detected"] == [None]
    assert any("NOT checked for NSFW" in record.getMessage() for record in caplog.records)


def test_each_endpoint_imports_its_own_inference_modules_and_cleans_sys_path(endpoint, tiny_model_dir, tmp_path):
    source = Path(__file__).resolve().parents[2] / "stable-diffusion-custom-inference" / "code"
    code_dir = tmp_path / "code"
    shutil.copytree(source, code_dir, ignore=shutil.ignore_patterns("__pycache__"))
    # A sibling module changed: the endpoint must import this copy of it, not the one already loaded.
    families = code_dir / "sd_families.py"
    families.write_text(families.read_text().replace('"sd1", 25, 7.5', '"sd1", 3, 7.5'))
    with ToolkitEndpoint(tiny_model_dir, code_dir=code_dir) as patched:
        three = request(patched, {"inputs": "a", "parameters": {"height": 64, "width": 64}}).json()
    assert three["parameters"]["num_inference_steps"] == 3
    default = request(endpoint, {"inputs": "a", "parameters": {"height": 64, "width": 64, "num_inference_steps": None}})
    assert default.json()["parameters"]["num_inference_steps"] == 25
    assert not {"inference", "sd_families", "sd_request", "sd_budget", "sd_source"} & set(sys.modules)
    assert not any(entry.endswith("/code") and "sd-serving-" in entry for entry in sys.path)


def test_use_sdpa_replaces_the_classic_attention_processor(tiny_model_dir, monkeypatch):
    # diffusers already defaults to SDPA on torch 2; model_fn must not depend on that default.
    from diffusers import StableDiffusionPipeline
    from diffusers.models.attention_processor import AttnProcessor

    path = Path(__file__).resolve().parents[2] / "stable-diffusion-custom-inference" / "code" / "inference.py"
    monkeypatch.syspath_prepend(str(path.parent))  # its sibling modules, as the toolkit's sys.path gives them
    spec = importlib.util.spec_from_file_location("inference_under_test", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, local_files_only=True, safety_checker=None)
    pipe.unet.set_attn_processor(AttnProcessor())
    pipe.vae.set_attn_processor(AttnProcessor())
    module.use_sdpa(pipe)
    processors = list(pipe.unet.attn_processors.values()) + list(pipe.vae.attn_processors.values())
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)
