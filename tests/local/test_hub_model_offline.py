"""`--model org/name@<commit>` with no network: a Hub model fetched once is served again from .cache/hub.

The tiny model is "published" on a local-folder stand-in for the Hub. Local mode resolves the id, and its endpoint
(code-only model_dir, the container's SD_* variables, the toolkit, model_fn) downloads it into a temporary
.cache/hub in the endpoint's layout. Then the Hub is unreachable (HF_HUB_OFFLINE=1, every non-loopback connection
refused) and the same id at its commit is served through the same endpoint path, answering with an image.
"""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import huggingface_hub.constants
import pytest
from botocore.config import Config

from infra.config import PipelineConfig
from local.model_source import ModelSourceError
from local.runtime import LocalRuntime, ModelChoice, choose_model
from tests.inference.helpers import png_image
from tests.inference.hub_stand_in import LocalHub, unreachable_hub
from tests.local.runtime_support import REPO  # noqa: F401 - sets the offline environment first

REPO_ID = "example-org/tiny-sd"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def published(commit: str) -> Any:
    """HfApi().model_info of a Hub that has the model: `main` is `commit`."""
    return lambda model_id, *, revision, timeout: SimpleNamespace(sha=commit)


def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline as a person without internet is: HF_HUB_OFFLINE=1 and no connection leaves the machine."""
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            raise OSError(errno.ENETUNREACH, f"network is unreachable: {address} (a test with no network)")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    unreachable_hub(monkeypatch)


def serve_one_image(model: ModelChoice) -> dict[str, Any]:
    """Load `model` as `python -m local run` does and ask its endpoint for one image over HTTP, as invoke_sd does."""
    runtime = LocalRuntime(PipelineConfig(endpoint_mode="realtime"), model)
    runtime.endpoint.start()
    try:
        runtime._load_model()  # what start() runs in its loader thread
        client = boto3.client(
            "sagemaker-runtime",
            endpoint_url=runtime.endpoint.url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
            config=Config(retries={"mode": "standard", "max_attempts": 1}),
        )
        body = {"inputs": "a red apple", "parameters": {"height": 64, "width": 64, "num_inference_steps": 2, "seed": 1}}
        response = client.invoke_endpoint(
            EndpointName=runtime.config.endpoint_name,
            Body=json.dumps(body).encode(),
            ContentType="application/json",
            Accept="application/json",
        )
        return json.loads(response["Body"].read())
    finally:
        runtime.stop()


def test_a_hub_model_fetched_once_is_served_offline_at_its_commit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from sd_tools.tiny_model import ensure_tiny_model

    cache = tmp_path / ".cache" / "hub"
    hub = LocalHub(ensure_tiny_model(), REPO_ID, COMMIT).install(monkeypatch)

    # Online, once: `--model example-org/tiny-sd` is pinned to the commit and model_fn downloads it.
    online = choose_model(REPO_ID, cache_dir=cache, model_info=published(COMMIT))
    assert online.hub_revision == COMMIT
    first = serve_one_image(online)
    folder = cache / "example-org--tiny-sd" / COMMIT
    marker = json.loads((folder / ".complete.json").read_text())
    assert (folder / "model_index.json").is_file() and set(marker["files"]) == set(hub.downloaded)
    assert hub.progress_bars and all(hub.progress_bars), "huggingface_hub's progress bars are on while it downloads"
    assert not list(cache.glob("models--*")), "one layout: the endpoint's, not huggingface_hub's own cache"

    # Offline: the real huggingface_hub (no model_info stand-in) cannot reach the Hub, nor can anything else.
    no_network(monkeypatch)
    calls = hub.calls
    offline = choose_model(f"{REPO_ID}@{COMMIT}", cache_dir=cache)
    assert (offline.hub_id, offline.hub_revision) == (REPO_ID, COMMIT)
    second = serve_one_image(offline)
    assert hub.calls == calls, "nothing was asked of the Hub"
    assert png_image(second).size == (64, 64)
    assert second["model"]["name"] == REPO_ID
    assert second["images"] == first["images"], "the same weights: same seed, same image"

    # A branch cannot be resolved offline (it may have moved): the error names the cached commit to pass.
    with pytest.raises(ModelSourceError, match=rf"pass one to use it offline: --model {REPO_ID}@{COMMIT}"):
        choose_model(REPO_ID, cache_dir=cache)
