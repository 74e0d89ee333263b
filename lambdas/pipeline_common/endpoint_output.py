"""What the endpoint answers (docs/CONTRACTS.md), read the same way by the real-time and asynchronous paths."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class GeneratedImage:
    """A parsed endpoint response."""

    png: bytes
    parameters: Mapping[str, Any]
    nsfw_content_detected: bool
    prompt_truncated: bool
    timings: Mapping[str, Any]
    model: Mapping[str, Any]


def parse_response(payload: bytes, requested: Mapping[str, Any]) -> GeneratedImage:
    """Parse the endpoint's JSON response (docs/CONTRACTS.md); `ValueError` when it does not match."""
    try:
        document = json.loads(payload)
        images = document["images"]
        png = base64.b64decode(images[0], validate=True)
    except (UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError, binascii.Error) as error:
        raise ValueError(f"the endpoint response has no base64 image in 'images': {error!r}") from None
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("the endpoint's first image is not a PNG")
    return GeneratedImage(
        png=png,
        parameters=document.get("parameters") or dict(requested),
        nsfw_content_detected=any(document.get("nsfw_content_detected") or []),
        prompt_truncated=bool(document.get("prompt_truncated", False)),
        timings=document.get("timings") or {},
        model=document.get("model") or {},
    )


def innermost_message(text: str, depth: int = 0) -> str:
    """The model's own words in an error body: unwraps `{"error": ...}` / `{"message": ...}` until plain text."""
    # The DLC's Multi Model Server wraps the model's `{"error": ...}` as a JSON string inside its own
    # `{"code", "type", "message"}` envelope: unwrap until plain text.
    try:
        body: Any = json.loads(text)
    except (TypeError, ValueError):
        return text
    if not isinstance(body, dict) or depth > 3:
        return text
    inner = body.get("error") or body.get("message")
    return innermost_message(str(inner), depth + 1) if inner else text
