"""Offline speech recognition (local.transcriber: faster-whisper, PyAV) on the committed audio fixtures."""

import io
import re
import threading
import wave
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from local.transcriber import (
    MEDIA_FORMATS,
    MIN_DURATION_S,
    SAMPLE_RATE,
    AudioDecodeError,
    Transcriber,
    Transcription,
    decode_audio,
)
from local.wer import normalise, word_error_rate
from tests.local.runtime_support import AUDIO, MANIFEST, REPO

SAMPLE = REPO / "examples" / "astronaut-riding-a-horse.mp3"
SAMPLE_TEXT = "a photo of an astronaut riding a horse on mars"
SPEECH = MANIFEST["speech"]
NO_SPEECH = MANIFEST["no_speech"]
# Synthetic speech: over all fixtures the bound; one fixture may miss a word or two of its 5-7.
MAX_WER = 0.10
MAX_WER_PER_FIXTURE = 0.4


def _format(name: str) -> str:
    return name.rsplit(".", 1)[1]


def _read(name: str) -> bytes:
    return (AUDIO / name).read_bytes()


def _wav(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="session")
def transcriber() -> Transcriber:
    # One model for the whole session: loading it is the expensive part.
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


def test_manifest_covers_every_format_and_awkward_names():
    names = list(SPEECH) + NO_SPEECH + MANIFEST["undecodable"] + MANIFEST["not_audio_upload"]
    assert all((AUDIO / name).is_file() for name in names)
    assert {_format(name) for name in SPEECH} == MEDIA_FORMATS
    assert any(" " in name for name in SPEECH)
    assert any(not name.isascii() for name in SPEECH)


@pytest.mark.slow
def test_bundled_sample_is_heard_exactly(transcriber):
    result = transcriber.transcribe_bytes(SAMPLE.read_bytes(), "mp3")
    assert normalise(result.text) == SAMPLE_TEXT.split()


@pytest.mark.slow
@pytest.mark.parametrize("name", SPEECH)
def test_speech_fixture_is_heard(transcribe, name):
    result = transcribe(name)
    assert result.speech_detected
    assert word_error_rate(SPEECH[name]["text"], result.text) <= MAX_WER_PER_FIXTURE, result.text


@pytest.mark.slow
def test_word_error_rate_over_all_speech_fixtures(transcribe):
    errors = words = 0
    for name, entry in SPEECH.items():
        reference = normalise(entry["text"])
        errors += round(word_error_rate(entry["text"], transcribe(name).text) * len(reference))
        words += len(reference)
    assert errors / words <= MAX_WER


@pytest.mark.slow
@pytest.mark.parametrize("name", SPEECH)
def test_words_are_clean_ordered_and_inside_the_audio(transcribe, name):
    result = transcribe(name)
    assert result.words
    assert result.text == " ".join(word.content + word.punctuation for word in result.words)
    for word in result.words:
        # Punctuation is split off into its own field, as Transcribe splits it into its own item.
        assert re.fullmatch(r"\w[\w'.-]*", word.content), word
        assert word.punctuation in ("", ".", ",", "?", "!")
        assert 0.0 <= word.start <= word.end <= result.duration_s
        assert 0.0 <= word.confidence <= 1.0
    for before, after in zip(result.words, result.words[1:], strict=False):
        assert before.end <= after.start
    assert 0.4 <= result.mean_confidence <= 1.0
    assert result.language_code == "en-US"
    assert result.language_identification == ()


@pytest.mark.slow
@pytest.mark.parametrize("name", SPEECH)
def test_recognition_runs_faster_than_real_time(transcribe, name):
    result = transcribe(name)
    # ~0.2x real time on 2 cores (benchmarks/bench_asr.py); 1.0 leaves room for a slow CI runner.
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
@pytest.mark.parametrize(
    "sound",
    [
        lambda t: 0.1 * np.sin(2 * np.pi * (100 * t + 225 * t**2)),  # a rising tone: periodic, like a voice
        lambda t: sum(0.08 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)) * (1 + 0.5 * np.sin(4 * t)),
        lambda t: 0.2 * np.sin(2 * np.pi * np.repeat([262, 330, 392, 523, 392, 330], SAMPLE_RATE // 2) * t),
    ],
    ids=["tone-sweep", "chord", "melody"],
)
def test_tones_and_music_are_not_speech(transcriber, sound):
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    result = transcriber.transcribe_bytes(_wav(sound(t)), "wav")
    assert result.speech_detected is False
    assert result.text == ""


def test_guesses_below_the_confidence_floor_are_not_speech(monkeypatch):
    # Words the voice detector let through but Whisper barely believes in: no prompt is better than a wrong one.
    model = Transcriber.__new__(Transcriber)
    model.multilingual = False
    model._lock = threading.Lock()
    guess = SimpleNamespace(words=[SimpleNamespace(word=" Mm.", start=0.1, end=0.5, probability=0.12)])
    model._model = SimpleNamespace(transcribe=lambda *args, **kwargs: (iter([guess]), None))
    result = model.transcribe_bytes(_read("red-apple.mp3"), "mp3")
    assert (result.speech_detected, result.text, result.words) == (False, "", ())
    guess.words[0].probability = 0.9
    assert model.transcribe_bytes(_read("red-apple.mp3"), "mp3").text == "Mm."


@pytest.mark.slow
def test_result_does_not_depend_on_the_previous_file(transcriber):
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
        start.wait()  # all threads reach the model together
        return transcriber.transcribe_bytes(_read(name), _format(name))

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        results = list(pool.map(run, names))
    for name, result in zip(names, results, strict=True):
        assert result.words == transcribe(name).words


@pytest.mark.slow
def test_an_english_model_asked_to_identify_the_language_reports_english(transcriber):
    result = transcriber.transcribe_bytes(_read("red-apple.mp3"), "mp3", None, ["de-DE", "en-GB"])
    assert result.language_code == "en-GB"
    assert result.language_identification == (("en-GB", 1.0),)
    asked_for_german = transcriber.transcribe_bytes(_read("red-apple.mp3"), "mp3", "de-DE")
    assert asked_for_german.language_code == "en-US", "it says what it heard in, not what was asked"


def test_a_multilingual_model_picks_the_best_of_the_job_s_candidates():
    model = Transcriber.__new__(Transcriber)
    model.multilingual = True
    model._model = SimpleNamespace(detect_language=lambda *a, **k: ("it", 0.5, [("it", 0.5), ("de", 0.3), ("en", 0.1)]))
    samples = np.zeros(SAMPLE_RATE, dtype=np.float32)
    # Like Transcribe's LanguageOptions: Italian scores best but is not a candidate.
    assert model._language(samples, None, ("en-US", "de-DE")) == ("de", (("de-DE", 0.3), ("en-US", 0.1)))
    assert model._language(samples, None, ())[1][0] == ("it-IT", 0.5)
    assert model._language(samples, "fr-FR", ()) == ("fr", ())


@pytest.mark.parametrize("name", list(SPEECH) + NO_SPEECH)
def test_decode_audio_gives_16khz_mono_float32(name):
    samples, decode_s = decode_audio(_read(name), _format(name))
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert len(samples) >= MIN_DURATION_S * SAMPLE_RATE
    assert 0.0 < np.abs(samples).max() <= 1.0 or name in NO_SPEECH
    assert decode_s >= 0.0


def test_every_format_decodes_in_process_with_no_ffmpeg_on_path(monkeypatch, tmp_path):
    # A tripwire ffmpeg first on PATH: any subprocess decoder would run it and leave a mark.
    mark = tmp_path / "ffmpeg-was-run"
    for tool in ("ffmpeg", "ffprobe"):
        (tmp_path / tool).write_text(f"#!/bin/sh\ntouch {mark}\nexit 1\n")
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    decoded = {_format(name): len(decode_audio(_read(name), _format(name))[0]) for name in SPEECH}
    assert set(decoded) == MEDIA_FORMATS
    assert all(length > SAMPLE_RATE for length in decoded.values())
    assert not mark.exists()


def test_decode_audio_resamples_to_the_right_duration():
    # silence.mp3 is 2 s at 22.05 kHz, robot.amr 8 kHz, the webm 48 kHz: all come out at 16 kHz.
    samples, _ = decode_audio(_read("silence.mp3"), "mp3")
    assert len(samples) / SAMPLE_RATE == pytest.approx(2.0, abs=0.1)
    for name in ("robot.amr", "hot air balloon.webm"):
        wav, _ = decode_audio(_read(name), _format(name))
        assert 2.0 < len(wav) / SAMPLE_RATE < 4.0


def test_decode_audio_accepts_upper_case_format_and_reads_the_content_not_the_name():
    samples, _ = decode_audio(_read("cat-in-a-hat.wav"), "WAV")
    assert len(samples) > 0
    as_mp3, _ = decode_audio(_read("cat-in-a-hat.wav"), "mp3")
    assert np.array_equal(samples, as_mp3)


def test_empty_file_is_a_clear_error():
    with pytest.raises(AudioDecodeError, match=r"empty \(0 bytes\)"):
        decode_audio(_read("empty.mp3"), "mp3")


def test_random_bytes_are_a_clear_error():
    with pytest.raises(AudioDecodeError, match=r"cannot decode 16384 bytes as mp3 audio .*upload an mp3, mp4, m4a"):
        decode_audio(_read("not-audio.mp3"), "mp3")


@pytest.mark.parametrize("fmt", sorted(MEDIA_FORMATS))
def test_a_text_file_is_a_clear_error_whatever_its_name(fmt):
    with pytest.raises(AudioDecodeError, match=rf"cannot decode \d+ bytes as {fmt} audio"):
        decode_audio(_read("readme.txt"), fmt)


def test_unknown_media_format_is_a_clear_error():
    with pytest.raises(AudioDecodeError, match=r"unsupported media format 'txt': use one of .*mp3"):
        decode_audio(_read("readme.txt"), "txt")


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        (50, r"cannot decode 50 bytes as mp3 audio"),  # not even one MP3 frame
        (300, r"holds only 0\.\d+ s of audio .* probably truncated"),  # two frames, under MIN_DURATION_S
    ],
)
def test_truncated_mp3_is_a_clear_error(keep, message):
    with pytest.raises(AudioDecodeError, match=message):
        decode_audio(_read("red-apple.mp3")[:keep], "mp3")


def test_a_recording_cut_off_midway_keeps_what_was_recorded():
    data = _read("castle at sunset.mp3")
    full, _ = decode_audio(data, "mp3")
    half, _ = decode_audio(data[: len(data) // 2], "mp3")
    assert 0.3 * len(full) < len(half) < 0.7 * len(full)


def test_decode_errors_are_value_errors():
    # Callers that treat bad input as ValueError (400-style errors) need no special case.
    with pytest.raises(ValueError):
        decode_audio(b"", "mp3")
