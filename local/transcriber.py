"""Offline speech recognition for local mode: faster-whisper (Whisper tiny.en by default), audio decoded by PyAV."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from local.asr_model import DEFAULT_MODEL, ModelError, bundled_model_path, resolve_model, verify_bundled_model
from local.audio import MEDIA_FORMATS, MIN_DURATION_S, SAMPLE_RATE, AudioDecodeError, decode_audio

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "DEFAULT_MODEL",
    "MEDIA_FORMATS",
    "MIN_DURATION_S",
    "SAMPLE_RATE",
    "AudioDecodeError",
    "ModelError",
    "Transcriber",
    "TranscriberCrashed",
    "Transcription",
    "Word",
    "decode_audio",
    "to_transcribe_json",
]

log = logging.getLogger(__name__)

TRANSCRIBE_JOB_STATUSES = frozenset({"QUEUED", "IN_PROGRESS", "FAILED", "COMPLETED"})

# Beam search as Whisper's paper and faster-whisper's defaults; no conditioning on earlier windows, so that one
# misheard window of a long recording cannot start a loop of repeated text (Whisper's known failure mode).
# A window Whisper rates as probably silent (no_speech_prob > 0.6) and decodes with little belief (mean token
# log-probability < -1) is dropped: Whisper's own no-speech rule, spelled out here because silence, noise and
# music must give an empty transcript. Silero's voice detector (vad_filter) removes most of them before that.
_DECODE_OPTIONS: dict[str, Any] = {
    "beam_size": 5,
    "condition_on_previous_text": False,
    "no_speech_threshold": 0.6,
    "log_prob_threshold": -1.0,
}

# A safety net behind both: words whose probabilities average this little are a guess, and no prompt is better
# than a wrong one. The speech fixtures average 0.78-0.95, so 0.4 leaves a margin of 2x.
_MIN_MEAN_CONFIDENCE = 0.4

# Whisper speaks ISO 639-1; Transcribe wants a dialect. Used when the job names no candidate of that language.
_DIALECTS = {
    "en": "en-US", "de": "de-DE", "fr": "fr-FR", "es": "es-US", "it": "it-IT", "pt": "pt-BR", "nl": "nl-NL",
    "ja": "ja-JP", "ko": "ko-KR", "zh": "zh-CN", "ru": "ru-RU", "hi": "hi-IN", "ar": "ar-SA", "sv": "sv-SE",
    "da": "da-DK", "pl": "pl-PL", "fi": "fi-FI", "tr": "tr-TR", "uk": "uk-UA", "cs": "cs-CZ", "el": "el-GR",
}  # fmt: skip

# Transcribe's punctuation items are these marks; Whisper attaches them (and quotes) to its words.
_PUNCTUATION = ".,?!"
_SPLIT_WORD = re.compile(r"\W*(.*?)(\W*)", re.DOTALL)


class TranscriberCrashed(RuntimeError):
    """The recogniser died in the middle of a job (its process exited); a fresh one can be started."""


@dataclass(frozen=True)
class Word:
    """One recognised word: times in seconds from the start of the audio, confidence in [0, 1]."""

    content: str
    start: float
    end: float
    confidence: float
    punctuation: str = ""  # the mark that follows the word in the transcript ("." after "Mars"), if any


@dataclass(frozen=True)
class Transcription:
    """What recognition produced for one recording, with timings."""

    text: str  # the transcript as Transcribe writes it: cased and punctuated; "" when no speech was detected
    words: tuple[Word, ...]
    duration_s: float  # length of the audio
    decode_s: float  # time spent decoding the file to samples
    asr_s: float  # time spent in voice detection and recognition
    speech_detected: bool
    language_code: str = "en-US"  # the language the words were recognised in (a Transcribe code)
    # Identified languages with scores, best first, when the job asked for identification (languageCode=auto).
    language_identification: tuple[tuple[str, float], ...] = ()

    @property
    def mean_confidence(self) -> float:
        """Mean word confidence, 0.0 when no word was recognised."""
        if not self.words:
            return 0.0
        return sum(word.confidence for word in self.words) / len(self.words)


def default_device() -> tuple[str, str]:
    """("cuda", "float16") where CTranslate2 sees a GPU, else ("cpu", "int8")."""
    import ctranslate2

    # CTranslate2 runs the model, so its view of the GPUs decides (importing torch here would cost a second).
    if ctranslate2.get_cuda_device_count() > 0:
        return "cuda", "float16"
    return "cpu", "int8"


class Transcriber:
    """A faster-whisper model, loaded once and shared by all calls (thread-safe)."""

    def __init__(self, model: str | Path | None = None, *, device: str | None = None) -> None:
        """Load `model` (None: the bundled tiny.en, checked against its vetted sha256) on the CPU or a GPU."""
        started = time.perf_counter()
        path = resolve_model(None if model is None else str(model))
        if model is None or path == bundled_model_path():
            verify_bundled_model(path)
        from faster_whisper import WhisperModel

        self.device, compute_type = default_device() if device is None else (device, "default")
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.model_path = path
        try:
            self._model = WhisperModel(str(path), device=self.device, compute_type=compute_type, cpu_threads=threads)
        except (RuntimeError, ValueError) as error:
            if device is not None or self.device == "cpu":
                raise
            # A GPU that CTranslate2 counts but cannot use (no cuBLAS/cuDNN libraries): the CPU still works.
            log.warning("the speech model cannot run on the GPU (%s); using the CPU", error)
            self.device = "cpu"
            self._model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=threads)
        self.multilingual = bool(self._model.model.is_multilingual)
        # One recording at a time: beam search already uses every core, and results stay reproducible.
        self._lock = threading.Lock()
        self.load_s = time.perf_counter() - started

    def transcribe_bytes(
        self,
        data: bytes,
        media_format: str,
        language_code: str | None = "en-US",
        language_options: Sequence[str] = (),
    ) -> Transcription:
        """Decode an upload and recognise its speech; `language_code=None` identifies the language first."""
        samples, decode_s = decode_audio(data, media_format)
        duration = len(samples) / SAMPLE_RATE
        started = time.perf_counter()
        with self._lock:
            language, identification = self._language(samples, language_code, tuple(language_options))
            segments, _ = self._model.transcribe(
                samples, language=language, vad_filter=True, word_timestamps=True, **_DECODE_OPTIONS
            )
            words = _words(list(segments), duration)  # segments is a generator: recognition runs here
        if words and sum(word.confidence for word in words) < _MIN_MEAN_CONFIDENCE * len(words):
            words = ()
        if identification:
            code = identification[0][0]
        elif language_code and language_code.split("-")[0].lower() == language:
            code = language_code
        else:  # an English-only model asked for another language: say what it heard in
            code = _dialect(language, language_options)
        return Transcription(
            text=" ".join(word.content + word.punctuation for word in words),
            words=words,
            duration_s=duration,
            decode_s=decode_s,
            asr_s=time.perf_counter() - started,
            speech_detected=bool(words),
            language_code=code,
            language_identification=identification,
        )

    def _language(
        self, samples: np.ndarray, language_code: str | None, options: tuple[str, ...]
    ) -> tuple[str, tuple[tuple[str, float], ...]]:
        """Whisper's language for this recording and, when asked to identify it, the scored candidates."""
        if not self.multilingual:
            # An English-only model hears English whatever the job asked; identification has one candidate.
            english = _dialect("en", options)
            return "en", ((english, 1.0),) if language_code is None else ()
        if language_code is not None:
            return language_code.split("-")[0].lower(), ()
        try:
            _, _, probabilities = self._model.detect_language(samples, vad_filter=True)
        except ValueError:  # the voice detector found no speech at all: nothing to identify
            probabilities = []
        scores = dict(probabilities)
        if options:
            # Like Transcribe's LanguageOptions: only the candidates can win.
            ranked = sorted(((code, scores.get(code.split("-")[0].lower(), 0.0)) for code in options), key=_score)
        else:
            ranked = sorted(((_dialect(lang, ()), p) for lang, p in probabilities[:5]), key=_score) or [("en-US", 0.0)]
        return ranked[0][0].split("-")[0].lower(), tuple((code, float(p)) for code, p in ranked)


def _score(item: tuple[str, float]) -> float:
    return -item[1]


def _dialect(language: str, options: Sequence[str]) -> str:
    """The job's candidate for a Whisper language, else its usual Transcribe dialect."""
    for option in options:
        if option.split("-")[0].lower() == language:
            return option
    return _DIALECTS.get(language, language)


def _words(segments: list[Any], duration: float) -> tuple[Word, ...]:
    """Whisper's words as Transcribe's: bare content, trailing mark apart, times in order inside the audio."""
    words: list[Word] = []
    previous_end = 0.0
    for segment in segments:
        for token in segment.words or ():
            match = _SPLIT_WORD.fullmatch(token.word.strip())
            content, trailing = (match.group(1), match.group(2)) if match else ("", "")
            mark = next((char for char in trailing if char in _PUNCTUATION), "")
            if not content:
                # A lone mark ("...", "-"): it belongs to the word before it.
                if mark and words and not words[-1].punctuation:
                    words[-1] = dataclasses.replace(words[-1], punctuation=mark)
                continue
            start = min(max(float(token.start), previous_end), duration)
            end = min(max(float(token.end), start), duration)
            confidence = min(max(float(token.probability), 0.0), 1.0)
            words.append(Word(content, start, end, confidence, mark))
            previous_end = end
    return tuple(words)


def to_transcribe_json(
    job_name: str, account_id: str, transcription: Transcription, *, status: str = "COMPLETED"
) -> dict:
    """Amazon Transcribe's output document for this transcription: every number a string, as Transcribe writes it."""
    if status not in TRANSCRIBE_JOB_STATUSES:
        known = ", ".join(sorted(TRANSCRIBE_JOB_STATUSES))
        raise ValueError(f"status {status!r} is not a Transcribe job status: {known}")
    items: list[dict[str, Any]] = []
    for word in transcription.words:
        items.append(
            {
                "start_time": _seconds(word.start),
                "end_time": _seconds(word.end),
                "alternatives": [{"confidence": _confidence(word.confidence), "content": word.content}],
                "type": "pronunciation",
            }
        )
        if word.punctuation:
            # Transcribe's punctuation items have no times and a confidence of "0.0".
            items.append({"alternatives": [{"confidence": "0.0", "content": word.punctuation}], "type": "punctuation"})
    results: dict[str, Any] = {"transcripts": [{"transcript": transcription.text}], "items": items}
    if transcription.language_identification:
        # As Transcribe writes it for a job with IdentifyLanguage: the chosen code and every candidate's score.
        results["language_code"] = transcription.language_code
        results["language_identification"] = [
            {"score": _confidence(score), "code": code} for code, score in transcription.language_identification
        ]
    return {"jobName": job_name, "accountId": account_id, "results": results, "status": status}


def _seconds(value: float) -> str:
    """Transcribe writes times with at most two decimals and no trailing zeros: "0.44", "1.5", "0.0"."""
    return str(round(value, 2))


def _confidence(value: float) -> str:
    """Transcribe writes confidences with at most four decimals: "0.9987", "1.0"."""
    return str(round(value, 4))
