"""Request and image helpers shared by the inference tests."""

from __future__ import annotations

import base64
import contextlib
import importlib
import io
import json
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

from sd_tools.toolkit_harness import DEFAULT_CODE_DIR as CODE_DIR
from sd_tools.toolkit_harness import InvocationResult, ToolkitEndpoint

# Small and fast: every request in these tests uses them unless it checks a default.
FAST = {"num_inference_steps": 2, "height": 64, "width": 64}


def request(endpoint: ToolkitEndpoint, body: Any, **kwargs: Any) -> InvocationResult:
    """POST a JSON-serialisable body (bytes/str are sent as they are)."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    elif not isinstance(body, bytes):
        body = json.dumps(body).encode("utf-8")
    return endpoint.invoke(body, **kwargs)


def generate(endpoint: ToolkitEndpoint, prompt: str = "a red fox in the snow", **parameters: Any) -> dict[str, Any]:
    """A successful JSON request with FAST defaults; returns the parsed response."""
    result = request(endpoint, {"inputs": prompt, "parameters": {**FAST, **parameters}})
    assert result.status == 200, result.body[:500]
    assert result.content_type == "application/json"
    return result.json()


def decode_png(data: bytes) -> Image.Image:
    """Open PNG bytes, checking the signature first."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def pixels(response: dict[str, Any], index: int = 0) -> np.ndarray:
    """Image `index` of a JSON response as an int16 array (so differences do not wrap)."""
    return np.asarray(png_image(response, index).convert("RGB"), dtype=np.int16)


def png_image(response: dict[str, Any], index: int = 0) -> Image.Image:
    """Image `index` of a JSON response, decoded from base64 PNG."""
    return decode_png(base64.b64decode(response["images"][index]))


@contextlib.contextmanager
def code_module(name: str) -> Iterator[Any]:
    """Import code/<name>.py as the toolkit would (code/ on sys.path); forget it and its siblings afterwards."""
    own = {path.stem for path in CODE_DIR.glob("*.py")}
    sys.path.insert(0, str(CODE_DIR))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(CODE_DIR))
        for module in own:
            sys.modules.pop(module, None)  # endpoints import their own copies (see toolkit_harness)
