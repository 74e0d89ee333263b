"""Amazon Transcribe's output document: parsed, checked, and turned into a prompt."""

from __future__ import annotations

import json
from typing import Any

# One definition for both stages that render an image set (it travels with an asynchronous request).
from pipeline_common.render import Transcript

__all__ = ["Transcript", "TranscriptError", "make_prompt", "parse_transcript", "word_confidences"]


class TranscriptError(ValueError):
    """The transcript document cannot be used; `code` is the error record's short code."""

    def __init__(self, code: str, reason: str, job_name: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        # Known when the document got that far: the gone/superseded check needs it even for a bad transcript.
        self.job_name = job_name


def parse_transcript(data: bytes) -> Transcript:
    """Parse Transcribe's output JSON; `TranscriptError` when it is malformed or not COMPLETED."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TranscriptError("transcript-unreadable", f"the transcript is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise TranscriptError("transcript-invalid", "the transcript is not a JSON object")
    job = document.get("jobName")
    job = job if isinstance(job, str) and job else None
    status = document.get("status")
    if status is None:
        raise TranscriptError("transcript-invalid", "the transcript has no 'status' field", job)
    if status != "COMPLETED":
        raise TranscriptError(
            "transcription-failed", f"the transcription job status is {status!r}, not 'COMPLETED'", job
        )
    results = document.get("results")
    transcripts = results.get("transcripts") if isinstance(results, dict) else None
    if not isinstance(results, dict) or not isinstance(transcripts, list) or not transcripts:
        raise TranscriptError("transcript-invalid", "the transcript has no results.transcripts list", job)
    texts = [item.get("transcript") if isinstance(item, dict) else None for item in transcripts]
    if not all(isinstance(text, str) for text in texts):
        raise TranscriptError("transcript-invalid", "a results.transcripts entry has no 'transcript' text", job)
    confidences = word_confidences(results.get("items"))
    return Transcript(
        text=" ".join(texts),
        job_name=job,
        language_code=results.get("language_code"),
        mean_confidence=sum(confidences) / len(confidences) if confidences else None,
        scored_words=len(confidences),
    )


def word_confidences(items: Any) -> list[float]:
    """The confidence of each word (pronunciation item) that has a readable one; Transcribe writes them as strings."""
    confidences: list[float] = []
    for item in items if isinstance(items, list) else []:
        # Punctuation items carry a confidence of "0.0": they are not words, so they must not drag the mean down.
        if not isinstance(item, dict) or item.get("type") != "pronunciation":
            continue
        alternatives = item.get("alternatives")
        first = alternatives[0] if isinstance(alternatives, list) and alternatives else None
        value = first.get("confidence") if isinstance(first, dict) else None
        try:
            confidence = float(value) if value is not None else None
        except (TypeError, ValueError):
            confidence = None
        if confidence is not None and 0.0 <= confidence <= 1.0:
            confidences.append(confidence)
    return confidences


def make_prompt(text: str, max_chars: int) -> tuple[str, bool]:
    """The prompt for a transcript: whitespace collapsed, cut at a word boundary; and whether it was cut."""
    prompt = " ".join(text.split())
    if len(prompt) <= max_chars:
        return prompt, False
    head = prompt[: max_chars + 1]
    boundary = head.rfind(" ")
    # Cut between words unless that would throw away more than half (one enormous "word").
    return (head[:boundary] if boundary > max_chars // 2 else prompt[:max_chars]), True
