"""The Transcribe-format JSON that local mode writes (local.transcriber.to_transcribe_json), as AWS writes it."""

import json
import re

import pytest

from local.transcriber import Transcriber, Transcription, Word, to_transcribe_json
from tests.local.runtime_support import AUDIO


def _transcription(*words: Word, identification: tuple[tuple[str, float], ...] = ()) -> Transcription:
    return Transcription(
        text=" ".join(word.content + word.punctuation for word in words),
        words=words,
        duration_s=2.0,
        decode_s=0.01,
        asr_s=0.2,
        speech_detected=bool(words),
        language_code=identification[0][0] if identification else "en-US",
        language_identification=identification,
    )


def _all_leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _all_leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _all_leaves(item)
    else:
        yield value


def test_mean_confidence_averages_the_words():
    result = _transcription(Word("a", 0.0, 0.1, 0.2), Word("cat", 0.1, 0.5, 0.8))
    assert result.mean_confidence == pytest.approx(0.5)
    assert _transcription().mean_confidence == 0.0


def test_transcribe_json_is_formatted_like_amazon_transcribe():
    result = _transcription(Word("Cat", 0.0, 0.44, 1.0, ","), Word("hat", 0.5, 1.5, 0.998712, "."))
    document = to_transcribe_json("upload-cat-1a2b", "123456789012", result)
    assert document == {
        "jobName": "upload-cat-1a2b",
        "accountId": "123456789012",
        "results": {
            "transcripts": [{"transcript": "Cat, hat."}],
            "items": [
                {
                    "start_time": "0.0",
                    "end_time": "0.44",
                    "alternatives": [{"confidence": "1.0", "content": "Cat"}],
                    "type": "pronunciation",
                },
                {"alternatives": [{"confidence": "0.0", "content": ","}], "type": "punctuation"},
                {
                    "start_time": "0.5",
                    "end_time": "1.5",
                    "alternatives": [{"confidence": "0.9987", "content": "hat"}],
                    "type": "pronunciation",
                },
                {"alternatives": [{"confidence": "0.0", "content": "."}], "type": "punctuation"},
            ],
        },
        "status": "COMPLETED",
    }


def test_identified_language_is_in_the_results_as_transcribe_writes_it():
    result = _transcription(Word("Hallo", 0.0, 0.4, 0.9), identification=(("de-DE", 0.91234), ("en-US", 0.05)))
    results = to_transcribe_json("job", "000000000000", result)["results"]
    assert results["language_code"] == "de-DE"
    assert results["language_identification"] == [
        {"score": "0.9123", "code": "de-DE"},
        {"score": "0.05", "code": "en-US"},
    ]
    assert "language_code" not in to_transcribe_json("job", "000000000000", _transcription())["results"]


@pytest.fixture(scope="module")
def castle() -> Transcription:
    return Transcriber().transcribe_bytes((AUDIO / "castle at sunset.mp3").read_bytes(), "mp3")


@pytest.mark.slow
def test_transcribe_json_of_a_real_recording(castle):
    document = to_transcribe_json("castle-at-sunset", "000000000000", castle)
    assert json.loads(json.dumps(document)) == document
    assert set(document) == {"jobName", "accountId", "results", "status"}
    assert document["results"]["transcripts"] == [{"transcript": castle.text}]
    items = document["results"]["items"]
    words = [item for item in items if item["type"] == "pronunciation"]
    marks = [item for item in items if item["type"] == "punctuation"]
    assert [item["alternatives"][0]["content"] for item in words] == [word.content for word in castle.words]
    assert [item["alternatives"][0]["content"] for item in marks] == ["."]
    assert items[-1] == marks[-1], "the sentence ends with its full stop"
    for item in words:
        assert set(item) == {"start_time", "end_time", "alternatives", "type"}
        assert re.fullmatch(r"\d+\.\d{1,2}", item["start_time"])
        assert re.fullmatch(r"\d+\.\d{1,2}", item["end_time"])
        assert float(item["start_time"]) <= float(item["end_time"]) <= castle.duration_s + 0.005
        assert re.fullmatch(r"[01]\.\d{1,4}", item["alternatives"][0]["confidence"])
    for item in marks:
        assert set(item) == {"alternatives", "type"}, "punctuation items have no times"
    # Every value is a string: Transcribe writes no JSON numbers at all.
    assert all(isinstance(leaf, str) for leaf in _all_leaves(document))


def test_transcribe_json_of_silence_has_no_items():
    document = to_transcribe_json("silence", "000000000000", _transcription())
    assert document["results"] == {"transcripts": [{"transcript": ""}], "items": []}


def test_transcribe_json_status():
    assert to_transcribe_json("job", "000000000000", _transcription(), status="FAILED")["status"] == "FAILED"
    with pytest.raises(ValueError, match="not a Transcribe job status"):
        to_transcribe_json("job", "000000000000", _transcription(), status="DONE")
