"""The real Multi Model Server (as the DLC runs it) answers like the in-process ToolkitEndpoint.

Starts MMS 1.1.11 with the toolkit's handler service on loopback ports, serving the tiny model
in the tarball layout, and compares status, content type and body with the harness.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sd_tools.toolkit_harness import DEFAULT_CODE_DIR, assemble_serving_dir, error_message
from tests.inference.helpers import FAST, pixels, png_image

MMS = Path(sys.executable).with_name("multi-model-server")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None or not MMS.exists(), reason="needs java and multi-model-server"),
]


def _free_port() -> int:
    # MMS refuses ports >= 32767 (it parses them as a Java short), so the kernel's ephemeral
    # range (32768+) is out: probe below it.
    for port in random.Random().sample(range(20000, 32000), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


def _post(url: str, body: bytes, content_type: str, accept: str) -> tuple[int, str, bytes]:
    headers = {"Content-Type": content_type, "Accept": accept}
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310 - loopback http URL
    try:
        with urllib.request.urlopen(req, timeout=120) as response:  # noqa: S310
            return response.status, response.headers["content-type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], error.read()


@contextlib.contextmanager
def _serve(model_dir: Path, root: Path) -> Iterator[str]:
    """MMS serving `model_dir` in the tarball layout, as the DLC runs it; yields the invocations URL."""
    serving = assemble_serving_dir(model_dir, DEFAULT_CODE_DIR, root / "model")
    port, management = _free_port(), _free_port()
    defaults = Path(__import__("sagemaker_inference").__file__).with_name("etc") / "default-mms.properties"
    config = root / "config.properties"
    # The DLC's configuration (decode_input_request=false) plus the toolkit's handler service.
    config.write_text(
        defaults.read_text()
        + f"\ninference_address=http://127.0.0.1:{port}\nmanagement_address=http://127.0.0.1:{management}\n"
        + "default_workers_per_model=1\n"
        + "default_service_handler=sagemaker_huggingface_inference_toolkit.handler_service\n"
    )
    # TMPDIR: MMS keeps its pid file there, so this server cannot collide with another one.
    env = {**os.environ, "TMPDIR": str(root), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [str(MMS), "--start", "--foreground", "--model-store", "/", "--mms-config", str(config)]
    command += ["--models", f"model={serving}"]
    with (root / "mms.log").open("wb") as log:
        server = subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("MMS did not start:\n" + (root / "mms.log").read_text()[-3000:])
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        # Its own session: the launcher, the Java frontend and the Python worker end together.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def mms_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _serve(tiny_model_dir, tmp_path_factory.mktemp("mms")) as url:
        yield url


def test_model_server_and_harness_agree(mms_url, endpoint):
    ok = json.dumps({"inputs": "a red fox in the snow", "parameters": {**FAST, "seed": 5}}).encode()
    status, content_type, body = _post(mms_url, ok, "application/json", "application/json")
    assert (status, content_type) == (200, "application/json")
    served = json.loads(body)
    local = endpoint.invoke(ok)
    assert served["parameters"] == local.json()["parameters"]
    assert np.abs(pixels(served) - pixels(local.json())).max() <= 1

    status, content_type, body = _post(mms_url, ok, "application/json", "image/png")
    assert (status, content_type) == (200, "image/png") and body[:4] == b"\x89PNG"

    bad = json.dumps({"inputs": "a fox", "parameters": {"height": 100}}).encode()
    status, content_type, body = _post(mms_url, bad, "application/json", "application/json")
    local = endpoint.invoke(bad)
    assert status == local.status == 400
    assert content_type == local.content_type == "application/json"
    assert json.loads(body) == local.json()  # same envelope, same {"error": ...} message
    assert "multiple of 8" in error_message(local)

    status, _, body = _post(mms_url, b'{"inputs": "a fox"}', "text/plain", "application/json")
    assert status == 400 and "Content-Type 'text/plain'" in json.loads(json.loads(body)["message"])["error"]


def test_model_server_serves_an_sdxl_turbo_folder_with_its_modules_and_defaults(
    family_dirs, family_endpoints, tmp_path
):
    with _serve(family_dirs["sdxl-turbo"], tmp_path) as url:
        body = json.dumps({"inputs": "a red fox in the snow", "parameters": {"seed": 5, "width": 96}}).encode()
        status, content_type, payload = _post(url, body, "application/json", "application/json")
        assert (status, content_type) == (200, "application/json")
        served = json.loads(payload)
        too_many = json.dumps({"inputs": "a fox", "parameters": {"num_inference_steps": 8}}).encode()
        refused = _post(url, too_many, "application/json", "application/json")
    assert served["model"]["family"] == "sdxl-turbo"
    assert served["parameters"]["num_inference_steps"] == 1 and served["parameters"]["guidance_scale"] == 0.0
    assert png_image(served).size == (96, 64)
    local = family_endpoints["sdxl-turbo"].invoke(body).json()
    assert np.abs(pixels(served) - pixels(local)).max() <= 1
    assert refused[0] == 400 and "from 1 to 4 for SDXL-Turbo" in refused[2].decode()
