"""What a finished image looks like to a person: the notices, the HTML page, the metadata document."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

# Stable Diffusion 1.x reads prompts through CLIP, whose tokenizer stops at 77 tokens; the endpoint
# only says whether it cut (prompt_truncated), so the notice names the model's limit itself.
MODEL_PROMPT_TOKENS = 77


def truncation_notices(
    *, transcript_truncated: bool, prompt_truncated: bool, max_prompt_chars: int, prompt: str
) -> list[str]:
    """Plain-language notices for a prompt that was cut, by this function or by the model's tokenizer."""
    notices: list[str] = []
    if transcript_truncated:
        notices.append(
            f"the transcript was longer than {max_prompt_chars} characters (MAX_PROMPT_CHARS): "
            f"only its first {len(prompt)} characters were sent to the model"
        )
    if prompt_truncated:
        notices.append(
            f"the transcript was longer than the model reads ({MODEL_PROMPT_TOKENS} tokens): only the start was used"
        )
    return notices


def render_html(
    *,
    source_key: str,
    transcript: str,
    prompt: str,
    png: bytes,
    parameters: Mapping[str, Any],
    notices: Sequence[str] = (),
) -> str:
    """A self-contained page: the transcript and the image as a data: URI, all text HTML-escaped."""
    title = html.escape(PurePosixPath(source_key).name)
    settings = ", ".join(f"{html.escape(str(k))}={html.escape(str(v))}" for k, v in sorted(parameters.items()))
    image = base64.b64encode(png).decode("ascii")
    notes = "".join(f'<p class="notice" role="note">Note: {html.escape(notice)}</p>\n' for notice in notices)
    return f"""<!doctype html>
<html>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem}}
img{{max-width:100%;height:auto}}.meta{{color:#555;font-size:.9rem}}
.notice{{background:#fff4ce;border-left:4px solid #c19c00;padding:.5rem 1rem}}</style>
</head>
<body>
<h1>{title}</h1>
{notes}<figure>
<img src="data:image/png;base64,{image}" alt="{html.escape(prompt)}">
<figcaption><blockquote>{html.escape(transcript)}</blockquote></figcaption>
</figure>
<p class="meta">Recording: {html.escape(source_key)}<br>Parameters: {settings}</p>
</body>
</html>
"""


def metadata_document(
    *,
    settings: Any,
    source_key: str,
    transcript: Any,
    transcript_location: Mapping[str, Any],
    prompt: str,
    transcript_truncated: bool,
    image: Any,
    notices: Sequence[str],
    keys: Any,
    timings: Mapping[str, Any],
    upload_id: str,
    created: str,
) -> dict[str, Any]:
    """The metadata JSON of an image set (docs/CONTRACTS.md): what was heard, asked for and made."""
    mean = transcript.mean_confidence
    return {
        "status": "ok",
        "source": {"bucket": settings.input_bucket, "key": source_key, "upload_id": upload_id},
        "transcript": transcript.text,
        "transcript_source": {
            **transcript_location,
            "job_name": transcript.job_name,
            "language_code": transcript.language_code,
            "mean_confidence": round(mean, 4) if mean is not None else None,
        },
        "prompt": prompt,
        # Cut by this function (MAX_PROMPT_CHARS) vs. cut by the model's tokenizer (reported by the endpoint).
        "transcript_truncated": transcript_truncated,
        "prompt_truncated": image.prompt_truncated,
        "notices": list(notices),
        "parameters": dict(image.parameters),
        "nsfw_content_detected": image.nsfw_content_detected,
        "model": {**image.model, "endpoint_name": settings.endpoint_name},
        "outputs": {"bucket": settings.output_bucket, "image": keys.png, "metadata": keys.metadata, "html": keys.html},
        "timings": dict(timings),
        "created": created,
    }
