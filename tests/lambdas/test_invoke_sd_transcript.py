"""invoke_sd's reading of a transcript and what a person reads: parsing, prompt, notices, the HTML page."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from invoke_sd.transcript import TranscriptError, make_prompt, parse_transcript
from pipeline_common.render import render_html, truncation_notices
from tests.lambdas.invoke_sd_support import EXPECTED_PROMPT, transcript_doc
from tests.lambdas.support import EVENTS_DIR, tiny_png


def test_documented_transcript_example_parses() -> None:
    transcript = parse_transcript((EVENTS_DIR / "transcribe_output.json").read_bytes())
    assert transcript.text == EXPECTED_PROMPT
    assert transcript.job_name and transcript.job_name.startswith("s2i-")
    # 11 words; the two punctuation items (confidence "0.0") are left out.
    assert transcript.scored_words == 11
    assert transcript.mean_confidence == pytest.approx(10.846 / 11, abs=1e-4)


@pytest.mark.parametrize(
    ("document", "code", "job_known"),
    [
        ((EVENTS_DIR / "transcribe_output_malformed.json").read_bytes(), "transcript-unreadable", False),
        (b"\xff\xfe not utf-8", "transcript-unreadable", False),
        (json.dumps([1, 2, 3]).encode(), "transcript-invalid", False),
        (transcript_doc("hello", status="FAILED"), "transcription-failed", True),
        ({"jobName": "j", "results": {"transcripts": [{"transcript": "hi"}]}}, "transcript-invalid", True),
        ({"jobName": "j", "status": "COMPLETED", "results": {"items": []}}, "transcript-invalid", True),
        ({"jobName": "j", "status": "COMPLETED", "results": {"transcripts": [{"x": 1}]}}, "transcript-invalid", True),
        ({"results": {"transcripts": [{"transcript": "hi"}]}}, "transcript-invalid", False),
    ],
)
def test_unusable_transcripts_are_classified(document: Any, code: str, job_known: bool) -> None:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()

    with pytest.raises(TranscriptError) as caught:
        parse_transcript(data)

    assert caught.value.code == code
    # Known when the document got that far: the ledger check needs it even for a bad transcript.
    assert (caught.value.job_name is not None) is job_known


def test_word_confidences_are_read_from_strings() -> None:
    transcript = parse_transcript((EVENTS_DIR / "transcribe_output_low_confidence.json").read_bytes())
    assert transcript.mean_confidence == pytest.approx((0.1021 + 0.2113 + 0.0466) / 3)
    assert transcript.scored_words == 3
    odd = transcript_doc("x")
    odd["results"]["items"] = [
        {"type": "pronunciation", "alternatives": [{"confidence": "n/a"}]},
        {"type": "pronunciation", "alternatives": []},
        {"type": "pronunciation", "alternatives": [{"confidence": "0.5"}]},
        {"type": "pronunciation", "alternatives": [{"confidence": "7"}]},
        {"type": "punctuation", "alternatives": [{"confidence": "0.0"}]},
        "not an item",
    ]
    assert parse_transcript(json.dumps(odd).encode()).mean_confidence == 0.5


def test_transcript_without_confidences_has_no_mean() -> None:
    document = transcript_doc(EXPECTED_PROMPT)
    document["results"]["items"] = [{"type": "pronunciation", "alternatives": [{"content": "An"}]}]
    transcript = parse_transcript(json.dumps(document).encode())
    assert (transcript.mean_confidence, transcript.scored_words) == (None, 0)


def test_prompt_collapses_whitespace_and_is_capped_at_a_word_boundary() -> None:
    assert make_prompt("  a\n\tcat   on\u00a0a mat ", 100) == ("a cat on a mat", False)
    prompt, truncated = make_prompt("word " * 300, 1000)
    assert truncated and len(prompt) <= 1000 and prompt.endswith("word")
    assert make_prompt("x" * 1500, 1000) == ("x" * 1000, True)
    assert make_prompt("a " + "x" * 1500, 1000) == ("a " + "x" * 998, True)


def test_notices_say_who_cut_the_prompt() -> None:
    assert not truncation_notices(transcript_truncated=False, prompt_truncated=False, max_prompt_chars=9, prompt="p")
    assert truncation_notices(transcript_truncated=True, prompt_truncated=True, max_prompt_chars=100, prompt="a b") == [
        "the transcript was longer than 100 characters (MAX_PROMPT_CHARS): only its first 3 characters were sent "
        "to the model",
        "the transcript was longer than the model reads (77 tokens): only the start was used",
    ]


def test_page_shows_the_image_and_escapes_every_text() -> None:
    png = tiny_png()
    text = 'Draw <script>alert("x")</script> & a "cat"'

    page = render_html(
        source_key="notes/a <b> & c.mp3",
        transcript=text,
        prompt=text,
        png=png,
        parameters={"seed": 7, "<k>": "<v>"},
        notices=["cut <here>"],
    )

    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page
    assert "<script>" not in page and "<b>" not in page and "<here>" not in page and "<k>" not in page
    assert "Draw &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; a &quot;cat&quot;" in page
    assert "<title>a &lt;b&gt; &amp; c.mp3</title>" in page
    assert '<p class="notice" role="note">Note: cut &lt;here&gt;</p>' in page


def test_page_without_notices_has_none() -> None:
    page = render_html(source_key="a.mp3", transcript="t", prompt="p", png=tiny_png(), parameters={})
    assert 'class="notice"' not in page
