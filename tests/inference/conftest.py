"""Fixtures for the inference package tests: one tiny model and one toolkit endpoint per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports huggingface_hub: no test may try the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from sd_tools.tiny_model import build_tiny_model
from sd_tools.toolkit_harness import ToolkitEndpoint


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run the tiny model on one thread: on a busy 2-core machine OpenMP's spinning threads made
    a 0.1 s request take seconds; one thread keeps these tests fast and their timing steady."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD v1 pipeline with a safety checker that never fires."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def endpoint(tiny_model_dir: Path) -> Iterator[ToolkitEndpoint]:
    """The real toolkit handler serving code/inference.py with the tiny model."""
    with ToolkitEndpoint(tiny_model_dir) as served:
        yield served


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny SD 2.x (v-prediction), SDXL (with fp16 variant files), SD-Turbo and SDXL-Turbo folders, built once."""
    root = tmp_path_factory.mktemp("families")
    return {
        "sd2": build_tiny_model(root / "tiny-sd2", family="sd2"),
        "sdxl": build_tiny_model(root / "tiny-sdxl", family="sdxl", fp16_variant=True),
        "sd-turbo": build_tiny_model(root / "tiny-sd-turbo", family="sd-turbo"),
        "sdxl-turbo": build_tiny_model(root / "tiny-sdxl-turbo", family="sdxl-turbo"),
    }


@pytest.fixture(scope="session")
def family_endpoints(family_dirs: dict[str, Path]) -> Iterator[dict[str, ToolkitEndpoint]]:
    """The real toolkit handler serving each tiny family folder (no budget: SD_TIME_LIMIT_SECONDS unset)."""
    served = {name: ToolkitEndpoint(folder) for name, folder in family_dirs.items()}
    yield served
    for endpoint in served.values():
        endpoint.close()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region, so nothing can reach a real account."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
