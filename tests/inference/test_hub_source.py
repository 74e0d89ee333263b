"""SD_MODEL_SOURCE=hub, offline: a local folder stands in for the Hub behind huggingface_hub's two calls."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from sd_tools.package_model import build_archive
from sd_tools.toolkit_harness import ToolkitEndpoint
from tests.inference.helpers import CODE_DIR, code_module, png_image, request
from tests.inference.hub_stand_in import LocalHub, hub_http_api

REPO_ID = "stabilityai/sdxl-turbo"
REVISION = "71153311d3dbb46851df1931d3ca6e939de83304"
# What a Hub repo holds beside the diffusers folders: the single-file checkpoints and other formats.
JUNK = (
    "sd_xl_turbo_1.0_fp16.safetensors",
    "sd_xl_turbo_1.0.safetensors",
    "unet/diffusion_pytorch_model.bin",
    "vae/diffusion_flax_model.msgpack",
    "text_encoder/model.onnx",
    "README.md",
)


@pytest.fixture
def sd_source():
    with code_module("sd_source") as module:
        yield module


@pytest.fixture
def hub(family_dirs, tmp_path, monkeypatch) -> LocalHub:
    repo = tmp_path / "hub" / REPO_ID
    shutil.copytree(family_dirs["sdxl"], repo)  # the SDXL architecture, with fp16 variant files
    for name in JUNK:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(b"not loaded")
    return LocalHub(repo, REPO_ID, REVISION).install(monkeypatch)


@pytest.fixture
def code_only_dir(tmp_path) -> Path:
    """The hub-mode archive (package_model --code-only), extracted as SageMaker does into /opt/ml/model."""
    archive = build_archive(None, tmp_path / "code-only.tar.gz", use_pigz=False)
    with tarfile.open(archive, "r:gz") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "opt-ml-model", filter="data")
    assert names and all(name.startswith("code/") for name in names)
    return tmp_path / "opt-ml-model"


def test_hub_model_downloads_only_what_it_loads_and_serves_with_the_repo_family(
    hub, code_only_dir, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("SD_MODEL_SOURCE", "hub")
    monkeypatch.setenv("SD_HUB_MODEL_ID", REPO_ID)
    monkeypatch.setenv("SD_HUB_REVISION", REVISION)
    monkeypatch.setenv("SD_HUB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SD_HUB_TOKEN_SECRET_ARN", "arn:aws:secretsmanager:us-east-1:123456789012:secret:hf-AbCdEf")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with mock_aws(), caplog.at_level("DEBUG"):
        secret = boto3.client("secretsmanager").create_secret(Name="hf", SecretString='{"token": "hf_SECRET123"}')
        monkeypatch.setenv("SD_HUB_TOKEN_SECRET_ARN", secret["ARN"])
        with ToolkitEndpoint(code_only_dir) as served:
            response = request(served, {"inputs": "a fox", "parameters": {"seed": 4}}).json()
            family = served.model.family.name
    # Only model_index.json, the component configs/tokenizer files and ONE weight set (fp16) came down.
    weights = sorted(name for name in hub.downloaded if name.endswith((".safetensors", ".bin")))
    assert weights == [
        "text_encoder/model.fp16.safetensors",
        "text_encoder_2/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    assert not any(name in hub.downloaded for name in JUNK)
    assert hub.downloaded[0] == "model_index.json"
    assert set(hub.tokens) == {"hf_SECRET123"}
    # Our log lines and the toolkit's never show it (botocore's own DEBUG wire log is not ours to judge).
    ours = [r.getMessage() for r in caplog.records if r.name == "sd_inference" or r.name.startswith("sagemaker")]
    assert ours and not any("hf_SECRET123" in line for line in ours)
    # The repo id says what model_index.json cannot: sdxl-turbo defaults (1 step, no guidance).
    assert family == "sdxl-turbo"
    assert response["model"] == {"name": REPO_ID, "family": "sdxl-turbo"}
    assert response["parameters"]["num_inference_steps"] == 1 and response["parameters"]["guidance_scale"] == 0.0
    assert png_image(response).size == (64, 64)


def test_a_hub_download_failure_names_the_model_and_what_to_check(hub, code_only_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SD_MODEL_SOURCE", "hub")
    monkeypatch.setenv("SD_HUB_MODEL_ID", REPO_ID)
    monkeypatch.setenv("SD_HUB_REVISION", "main")  # not what the stand-in holds
    monkeypatch.setenv("SD_HUB_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(Exception, match=rf"could not download {REPO_ID}@main .*check the id, the revision"):
        ToolkitEndpoint(code_only_dir)


@pytest.mark.parametrize(
    ("env", "fix"),
    [
        ({"SD_MODEL_SOURCE": "ftp"}, "SD_MODEL_SOURCE='ftp': use s3"),
        ({"SD_MODEL_SOURCE": "hub"}, "needs SD_HUB_MODEL_ID"),
        ({"SD_MODEL_SOURCE": "hub", "SD_HUB_MODEL_ID": REPO_ID}, "pin stabilityai/sdxl-turbo to a commit hash"),
    ],
)
def test_hub_settings_are_checked(sd_source, env, fix):
    with pytest.raises(sd_source.ModelSourceError, match=fix):
        sd_source.resolve_model_dir(Path("/opt/ml/model"), env)


def test_s3_is_the_default_source_and_uses_model_dir(sd_source):
    assert sd_source.resolve_model_dir(Path("/opt/ml/model"), {}) == (Path("/opt/ml/model"), None)


class Secrets:
    def __init__(self, value: str) -> None:
        self.value = value

    def get_secret_value(self, SecretId: str) -> dict[str, str]:
        return {"SecretString": self.value}


@pytest.mark.parametrize(("stored", "token"), [("hf_raw", "hf_raw"), (json.dumps({"token": "hf_json"}), "hf_json")])
def test_the_token_secret_holds_the_raw_token_or_json(sd_source, stored, token):
    assert sd_source.token_from_secret(Secrets(stored), "arn:secret") == token


def test_an_empty_token_secret_is_refused(sd_source):
    with pytest.raises(sd_source.ModelSourceError, match="is empty"):
        sd_source.token_from_secret(Secrets(json.dumps({"token": ""})), "arn:secret")


def test_files_to_fetch_prefers_safetensors_default_weights_without_a_full_fp16_set(sd_source):
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": [None, None],
    }
    repo = [
        "model_index.json",
        "v1-5-pruned.ckpt",
        "unet/config.json",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",  # no fp16 for vae: the default set is used
        "vae/config.json",
        "vae/diffusion_pytorch_model.bin",
        "text_encoder/config.json",
        "text_encoder/model-00001-of-00002.safetensors",
        "text_encoder/model-00002-of-00002.safetensors",
        "text_encoder/model.safetensors.index.json",
        "text_encoder/pytorch_model.bin",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json",
        "safety_checker/model.safetensors",
    ]
    assert sd_source.files_to_fetch(index, repo) == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model-00001-of-00002.safetensors",
        "text_encoder/model-00002-of-00002.safetensors",
        "text_encoder/model.safetensors.index.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.bin",
    ]


class NoHub:
    """A Hub client that must not be used: any call fails the test."""

    def list_files(self, *args: object) -> list[str]:
        raise AssertionError("the Hub was asked for a file list")

    def download(self, *args: object) -> Path:
        raise AssertionError("the Hub was asked for a download")


class NoSecrets:
    def get_secret_value(self, SecretId: str) -> dict[str, str]:
        raise AssertionError("Secrets Manager was asked for the token")


def hub_env(cache: Path) -> dict[str, str]:
    return {
        "SD_MODEL_SOURCE": "hub",
        "SD_HUB_MODEL_ID": REPO_ID,
        "SD_HUB_REVISION": REVISION,
        "SD_HUB_CACHE_DIR": str(cache),
        "SD_HUB_TOKEN_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:hf-AbCdEf",
    }


def test_a_complete_download_is_used_again_without_the_hub_or_the_token(sd_source, hub, tmp_path):
    cache = tmp_path / "cache"
    settings = sd_source.hub_settings(hub_env(cache))
    folder = sd_source.fetch_from_hub(settings, sd_source.HuggingFaceHub(), None)
    assert folder == sd_source.hub_folder(cache, REPO_ID, REVISION) == cache / "stabilityai--sdxl-turbo" / REVISION
    marker = json.loads((folder / ".complete.json").read_text())
    assert (
        marker["files"][0] == "model_index.json" and "unet/diffusion_pytorch_model.fp16.safetensors" in marker["files"]
    )
    assert hub.progress_bars and all(hub.progress_bars), "huggingface_hub's progress bars stay on"
    calls = hub.calls

    assert sd_source.fetch_from_hub(settings, NoHub(), None) == folder
    # The endpoint's own entry point: no Secrets Manager call either (the token is only needed to download).
    assert sd_source.resolve_model_dir(Path("/opt/ml/model"), hub_env(cache), NoHub(), NoSecrets()) == (folder, REPO_ID)
    assert hub.calls == calls


def test_a_partial_download_is_fetched_again(sd_source, hub, tmp_path):
    cache = tmp_path / "cache"
    settings = sd_source.hub_settings(hub_env(cache))
    folder = sd_source.fetch_from_hub(settings, sd_source.HuggingFaceHub(), None)
    lost = folder / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    lost.unlink()  # a file listed in the marker is gone: not complete any more
    hub.downloaded.clear()
    assert sd_source.fetch_from_hub(settings, sd_source.HuggingFaceHub(), None) == folder
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in hub.downloaded and lost.is_file()


def test_an_interrupted_download_leaves_no_marker_and_the_next_start_completes_it(sd_source, hub, tmp_path):
    class Interrupted(sd_source.HuggingFaceHub):
        def download(self, repo_id, revision, files, local_dir, token):
            if len(files) > 1:  # model_index.json arrives, then the connection drops
                sd_source.HuggingFaceHub().download(repo_id, revision, files[:3], local_dir, token)
                raise ConnectionError("connection reset")
            return super().download(repo_id, revision, files, local_dir, token)

    settings = sd_source.hub_settings(hub_env(tmp_path / "cache"))
    with pytest.raises(sd_source.ModelSourceError, match="ConnectionError: connection reset"):
        sd_source.fetch_from_hub(settings, Interrupted(), None)
    folder = sd_source.hub_folder(settings.cache_dir, REPO_ID, REVISION)
    assert (folder / "model_index.json").is_file() and not (folder / ".complete.json").exists()
    with pytest.raises(sd_source.ModelSourceError, match="the Hub was asked for a file list"):
        sd_source.fetch_from_hub(settings, NoHub(), None)  # half a download is not taken for the model
    assert sd_source.fetch_from_hub(settings, sd_source.HuggingFaceHub(), None) == folder
    assert (folder / ".complete.json").is_file() and (
        folder / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    ).is_file()


FETCH = """
import sys
from pathlib import Path

import sd_source

settings = sd_source.hub_settings({"SD_MODEL_SOURCE": "hub", "SD_HUB_MODEL_ID": sys.argv[1],
                                   "SD_HUB_REVISION": sys.argv[2], "SD_HUB_CACHE_DIR": sys.argv[3]})
print(sd_source.fetch_from_hub(settings, sd_source.HuggingFaceHub(), None))
"""


def test_the_real_huggingface_hub_fetches_into_the_endpoint_layout_with_progress_bars(hub, tmp_path):
    """huggingface_hub itself (it reads HF_ENDPOINT at import: a fresh process) against a Hub API on loopback."""
    cache, hf_home = tmp_path / "cache", tmp_path / "hf-home"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))},
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(hf_home),  # huggingface_hub's own cache: must stay unused
        "PYTHONPATH": str(CODE_DIR),
    }

    def fetch(endpoint: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", FETCH, REPO_ID, REVISION, str(cache)]
        return subprocess.run(argv, env=env | {"HF_ENDPOINT": endpoint}, capture_output=True, text=True, timeout=120)

    with hub_http_api(hub.root, REPO_ID, REVISION) as (endpoint, requested):
        first = fetch(endpoint)
    assert first.returncode == 0, first.stderr
    folder = cache / "stabilityai--sdxl-turbo" / REVISION
    assert first.stdout.strip() == str(folder)
    assert re.search(r"Fetching \d+ files: 100%", first.stderr), "huggingface_hub's progress bars show on stderr"
    fetched = [path.split(f"/resolve/{REVISION}/", 1)[1] for path in requested if "/resolve/" in path]
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in fetched and not any(name in fetched for name in JUNK)
    assert (folder / ".complete.json").is_file() and not list(hf_home.rglob("models--*"))

    # Again, with the Hub gone (nothing listens there any more): the complete download is used as it is.
    second = fetch(endpoint)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == str(folder) and "Fetching" not in second.stderr
