"""What a finished image looks like to a person: the notices, the HTML page, the metadata document.

Both ways of generating (a real-time call in invoke_sd, an asynchronous request finished in async_result) build
an upload's image set here, from an `ImageRequest` (what was heard and asked for) and the endpoint's image.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from pipeline_common.endpoint_output import GeneratedImage
from pipeline_common.keys import ImageKeys
from pipeline_common.results import ImageSet

# Stable Diffusion 1.x reads prompts through CLIP, whose tokenizer stops at 77 tokens; the endpoint
# only says whether it cut (prompt_truncated), so the notice names the model's limit itself.
MODEL_PROMPT_TOKENS = 77


@dataclass(frozen=True)
class Transcript:
    """The parts of a Transcribe output document the pipeline uses."""

    text: str
    job_name: str | None = None
    language_code: str | None = None
    # Mean over the words (pronunciation items) that carry a confidence; None when none does.
    mean_confidence: float | None = None
    scored_words: int = 0


@dataclass(frozen=True)
class ImageRequest:
    """Everything an image set tells besides the image: the upload, what was heard, the prompt and its limits.

    An asynchronous request keeps it as JSON next to the staged request (`to_json`/`from_json`), so the stage
    that receives the result renders exactly what the real-time path renders.
    """

    source_key: str
    upload_id: str
    transcript: Transcript
    transcript_location: Mapping[str, Any]
    prompt: str
    transcript_truncated: bool
    max_prompt_chars: int
    parameters: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """The request as a JSON document."""
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> ImageRequest:
        """Read `to_json`'s document; `ValueError` when it is not one."""
        try:
            document = json.loads(data)
            return cls(**{**document, "transcript": Transcript(**document["transcript"])})
        except (UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not an image request document: {error!r}") from None


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
    transcript: Transcript,
    transcript_location: Mapping[str, Any],
    prompt: str,
    transcript_truncated: bool,
    image: GeneratedImage,
    notices: Sequence[str],
    keys: ImageKeys,
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


def build_image_set(
    request: ImageRequest,
    image: GeneratedImage,
    *,
    settings: Any,
    keys: ImageKeys,
    timings: Mapping[str, Any],
    created: str,
) -> ImageSet:
    """The PNG, HTML page and metadata of a generated image (settings: buckets and endpoint name)."""
    notices = truncation_notices(
        transcript_truncated=request.transcript_truncated,
        prompt_truncated=image.prompt_truncated,
        max_prompt_chars=request.max_prompt_chars,
        prompt=request.prompt,
    )
    page = render_html(
        source_key=request.source_key,
        transcript=request.transcript.text,
        prompt=request.prompt,
        png=image.png,
        parameters=image.parameters,
        notices=notices,
    )
    metadata = metadata_document(
        settings=settings,
        source_key=request.source_key,
        transcript=request.transcript,
        transcript_location=request.transcript_location,
        prompt=request.prompt,
        transcript_truncated=request.transcript_truncated,
        image=image,
        notices=notices,
        keys=keys,
        timings={**request.timings, **timings, "endpoint": dict(image.timings)},
        upload_id=request.upload_id,
        created=created,
    )
    return ImageSet(
        png=image.png, html=page, metadata=json.dumps(metadata, ensure_ascii=False, indent=2).encode("utf-8")
    )
