"""Offline speech recognition (local.transcriber) on the committed audio fixtures: no network, no AWS."""

import io
import json
import re
import shutil
import threading
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from local.transcriber import (
    FFMPEG_FORMATS,
    MIN_DURATION_S,
    SAMPLE_RATE,
    AudioDecodeError,
    Transcriber,
    Transcription,
    Word,
    decode_audio,
    to_transcribe_json,
    voiced_seconds,
)

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "astronaut-riding-a-horse.mp3"
MANIFEST = json.loads((AUDIO / "manifest.json").read_text(encoding="utf-8"))
SPEECH = MANIFEST["speech"]
NO_SPEECH = MANIFEST["no_speech"]


def _format(name: str) -> str:
    return name.rsplit(".", 1)[1]


def _read(name: str) -> bytes:
    return (AUDIO / name).read_bytes()


def _skip_without_ffmpeg(name: str) -> None:
    # The m4a fixture decodes only where ffmpeg is installed; the no-ffmpeg error has its own test.
    if _format(name) in FFMPEG_FORMATS and shutil.which("ffmpeg") is None:
        pytest.skip(f"{name} needs ffmpeg on PATH")


@pytest.fixture(scope="session")
def transcriber() -> Transcriber:
    # One decoder for the whole session: loading the model is the expensive part.
    return Transcriber()


@pytest.fixture(scope="session")
def transcribe(transcriber):
    """Transcribe a fixture once per session and hand out the cached result."""
    results: dict[str, Transcription] = {}

    def run(name: str) -> Transcription:
        if name not in results:
            results[name] = transcriber.transcribe_bytes(_read(name), _format(name))
        return results[name]

    return run


def test_manifest_covers_the_formats_and_awkward_names():
    names = list(SPEECH) + NO_SPEECH + MANIFEST["undecodable"] + MANIFEST["not_audio_upload"]
    assert all((AUDIO / name).is_file() for name in names)
    assert {_format(name) for name in SPEECH} >= {"mp3", "wav", "ogg", "flac"}
    assert any(" " in name for name in SPEECH)
    assert any(not name.isascii() for name in SPEECH)


@pytest.mark.slow
@pytest.mark.parametrize("name", SPEECH)
def test_speech_fixture_gives_its_keywords(transcribe, name):
    _skip_without_ffmpeg(name)
    result = transcribe(name)
    assert result.speech_detected
    missing = set(SPEECH[name]["keywords"]) - set(result.text.split())
    assert not missing, f"{name}: {missing} not in {result.text!r}"


@pytest.mark.slow
@pytest.mark.parametrize("name", SPEECH)
def test_words_are_clean_ordered_and_inside_the_audio(transcribe, name):
    _skip_without_ffmpeg(name)
    result = transcribe(name)
    assert result.words
    assert result.text == " ".join(word.content for word in result.words)
    for word in result.words:
        # No sentence markers, fillers, noise tokens or pronunciation variants like "a(2)".
        assert re.fullmatch(r"[a-z][a-z']*", word.content), word
        assert 0.0 <= word.start <= word.end <= result.duration_s
        assert 0.0 <= word.confidence <= 1.0
    for before, after in zip(result.words, result.words[1:], strict=False):
        assert before.end <= after.start
    assert 0.0 < result.mean_confidence <= 1.0


@pytest.mark.slow
def test_bundled_sample_is_recognised(transcriber):
    result = transcriber.transcribe_bytes(SAMPLE.read_bytes(), "mp3")
    assert {"astronaut", "riding", "horse", "mars"} <= set(result.text.split())


@pytest.mark.slow
@pytest.mark.parametrize("name", SPEECH)
def test_recognition_runs_faster_than_real_time(transcribe, name):
    _skip_without_ffmpeg(name)
    result = transcribe(name)
    # ~0.13x real time on 2 cores; 1.0 leaves room for a slow CI runner.
    assert 0.0 < result.asr_s < result.duration_s
    assert result.decode_s >= 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", NO_SPEECH)
def test_silence_and_noise_give_no_speech(transcribe, name):
    result = transcribe(name)
    assert result.speech_detected is False
    assert result.text == ""
    assert result.words == ()
    assert result.mean_confidence == 0.0
    assert result.duration_s == pytest.approx(2.0, abs=0.1)


@pytest.mark.slow
def test_low_confidence_guess_is_not_speech(transcriber):
    # A 100 -> 1000 Hz sweep is periodic, so it passes the voice check; the decoder then guesses
    # "mm" with a confidence of ~0.03, which the confidence floor must turn into "no speech".
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    sweep = (0.1 * 32767 * np.sin(2 * np.pi * (100 * t + 225 * t**2))).astype("<i2")
    assert voiced_seconds(sweep) > 1.0
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(sweep.tobytes())
    result = transcriber.transcribe_bytes(buffer.getvalue(), "wav")
    assert result.speech_detected is False
    assert result.text == ""


@pytest.mark.parametrize("name", NO_SPEECH)
def test_voice_activity_check_finds_no_voice_in_silence_or_noise(name):
    samples, _ = decode_audio(_read(name), _format(name))
    assert voiced_seconds(samples) == 0.0


@pytest.mark.parametrize("name", [name for name in SPEECH if _format(name) not in FFMPEG_FORMATS])
def test_voice_activity_check_finds_voice_in_speech(name):
    samples, _ = decode_audio(_read(name), _format(name))
    assert voiced_seconds(samples) > 0.5


@pytest.mark.slow
def test_result_does_not_depend_on_the_previous_file(transcriber):
    # The decoder is reused; its noise statistics must not leak from one upload into the next.
    target = "red-apple.mp3"
    first_use = Transcriber().transcribe_bytes(_read(target), "mp3")
    transcriber.transcribe_bytes(_read("castle at sunset.mp3"), "mp3")
    after_another_file = transcriber.transcribe_bytes(_read(target), "mp3")
    assert after_another_file.words == first_use.words


@pytest.mark.slow
def test_one_transcriber_is_safe_to_share_between_threads(transcriber, transcribe):
    names = ["cat-in-a-hat.wav", "mountain-lake.flac"] * 2
    start = threading.Barrier(len(names))

    def run(name: str) -> Transcription:
        start.wait()  # all threads reach the decoder together
        return transcriber.transcribe_bytes(_read(name), _format(name))

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        results = list(pool.map(run, names))
    for name, result in zip(names, results, strict=True):
        assert result.words == transcribe(name).words


@pytest.mark.parametrize("name", list(SPEECH) + NO_SPEECH)
def test_decode_audio_gives_16khz_mono_int16(name):
    _skip_without_ffmpeg(name)
    samples, decode_s = decode_audio(_read(name), _format(name))
    assert samples.dtype == np.int16
    assert samples.ndim == 1
    assert len(samples) >= MIN_DURATION_S * SAMPLE_RATE
    assert decode_s >= 0.0


def test_decode_audio_resamples_to_the_right_duration():
    # silence.mp3 is 2 s at 22.05 kHz: a missing or wrong resampling would give 2.76 s or 1.45 s.
    samples, _ = decode_audio(_read("silence.mp3"), "mp3")
    assert len(samples) / SAMPLE_RATE == pytest.approx(2.0, abs=0.1)


def test_decode_audio_accepts_upper_case_format():
    samples, _ = decode_audio(_read("cat-in-a-hat.wav"), "WAV")
    assert len(samples) > 0


def test_empty_file_is_a_clear_error():
    with pytest.raises(AudioDecodeError, match=r"empty \(0 bytes\)"):
        decode_audio(_read("empty.mp3"), "mp3")


def test_random_bytes_are_a_clear_error():
    with pytest.raises(AudioDecodeError, match=r"cannot decode 16384 bytes as mp3 audio.*upload an mp3, wav"):
        decode_audio(_read("not-audio.mp3"), "mp3")


def test_text_file_is_a_clear_error(transcriber):
    with pytest.raises(AudioDecodeError, match="cannot decode"):
        transcriber.transcribe_bytes(_read("readme.txt"), "mp3")


def test_unknown_media_format_is_a_clear_error():
    with pytest.raises(AudioDecodeError, match=r"unsupported media format 'txt': use one of .*mp3"):
        decode_audio(_read("readme.txt"), "txt")


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        (50, "cannot decode 50 bytes as mp3 audio"),  # not even one MP3 frame
        (600, r"holds only 0\.\d+ s of audio .* probably truncated"),  # a few frames, under MIN_DURATION_S
    ],
)
def test_truncated_mp3_is_a_clear_error(keep, message):
    with pytest.raises(AudioDecodeError, match=message):
        decode_audio(_read("red-apple.mp3")[:keep], "mp3")


def test_decode_errors_are_value_errors():
    # Callers that treat bad input as ValueError (400-style errors) need no special case.
    with pytest.raises(ValueError):
        decode_audio(b"", "mp3")


def test_ffmpeg_formats_without_ffmpeg_say_so(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no ffmpeg to find
    with pytest.raises(AudioDecodeError, match=r"m4a audio needs ffmpeg, which is not on PATH"):
        decode_audio(_read("lighthouse.m4a"), "m4a")


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg on PATH")
def test_ffmpeg_rejects_bytes_that_are_not_audio():
    with pytest.raises(AudioDecodeError, match=r"ffmpeg cannot decode 16384 bytes as webm audio"):
        decode_audio(_read("not-audio.mp3"), "webm")


def _transcription(*words: Word) -> Transcription:
    return Transcription(
        text=" ".join(word.content for word in words),
        words=words,
        duration_s=2.0,
        decode_s=0.01,
        asr_s=0.2,
        speech_detected=bool(words),
    )


def test_mean_confidence_averages_the_words():
    result = _transcription(Word("a", 0.0, 0.1, 0.2), Word("cat", 0.1, 0.5, 0.8))
    assert result.mean_confidence == pytest.approx(0.5)
    assert _transcription().mean_confidence == 0.0


def test_transcribe_json_is_formatted_like_amazon_transcribe():
    result = _transcription(Word("cat", 0.0, 0.44, 1.0), Word("hat", 0.5, 1.5, 0.998712))
    document = to_transcribe_json("upload-cat-1a2b", "123456789012", result)
    assert document == {
        "jobName": "upload-cat-1a2b",
        "accountId": "123456789012",
        "results": {
            "transcripts": [{"transcript": "cat hat"}],
            "items": [
                {
                    "start_time": "0.0",
                    "end_time": "0.44",
                    "alternatives": [{"confidence": "1.0", "content": "cat"}],
                    "type": "pronunciation",
                },
                {
                    "start_time": "0.5",
                    "end_time": "1.5",
                    "alternatives": [{"confidence": "0.9987", "content": "hat"}],
                    "type": "pronunciation",
                },
            ],
        },
        "status": "COMPLETED",
    }


def _all_leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _all_leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _all_leaves(item)
    else:
        yield value


@pytest.mark.slow
def test_transcribe_json_of_a_real_recording(transcribe):
    result = transcribe("castle at sunset.mp3")
    document = to_transcribe_json("castle-at-sunset", "000000000000", result)
    assert json.loads(json.dumps(document)) == document
    assert set(document) == {"jobName", "accountId", "results", "status"}
    assert document["results"]["transcripts"] == [{"transcript": result.text}]
    items = document["results"]["items"]
    assert [item["alternatives"][0]["content"] for item in items] == result.text.split()
    for item in items:
        assert set(item) == {"start_time", "end_time", "alternatives", "type"}
        assert item["type"] == "pronunciation"
        assert re.fullmatch(r"\d+\.\d{1,2}", item["start_time"])
        assert re.fullmatch(r"\d+\.\d{1,2}", item["end_time"])
        assert float(item["start_time"]) <= float(item["end_time"]) <= result.duration_s + 0.005
        assert re.fullmatch(r"[01]\.\d{1,4}", item["alternatives"][0]["confidence"])
    # Every value is a string: Transcribe writes no JSON numbers at all.
    assert all(isinstance(leaf, str) for leaf in _all_leaves(document))


@pytest.mark.slow
def test_transcribe_json_of_silence_has_no_items(transcribe):
    document = to_transcribe_json("silence", "000000000000", transcribe("silence.mp3"))
    assert document["results"] == {"transcripts": [{"transcript": ""}], "items": []}


def test_transcribe_json_status():
    assert to_transcribe_json("job", "000000000000", _transcription(), status="FAILED")["status"] == "FAILED"
    with pytest.raises(ValueError, match="not a Transcribe job status"):
        to_transcribe_json("job", "000000000000", _transcription(), status="DONE")
