"""Offline speech recognition for local mode: pocketsphinx's bundled en-us model, audio decoded by miniaudio."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# numpy, miniaudio and pocketsphinx are imported inside the functions that use them, so that importing
# this module costs ~25 ms instead of ~110 ms (numpy alone is ~55 ms): callers import it eagerly.
if TYPE_CHECKING:
    import numpy as np

SAMPLE_RATE = 16_000
"""Samples per second that decode_audio returns and the en-us acoustic model expects."""

MIN_DURATION_S = 0.1
"""Shorter audio is treated as a broken file: a single MP3 frame (~0.07 s) is all a truncated upload gives."""

MINIAUDIO_FORMATS = frozenset({"mp3", "wav", "flac", "ogg"})
FFMPEG_FORMATS = frozenset({"m4a", "mp4", "webm", "amr"})
MEDIA_FORMATS = MINIAUDIO_FORMATS | FFMPEG_FORMATS
"""Amazon Transcribe's MediaFormat values."""

TRANSCRIBE_JOB_STATUSES = frozenset({"QUEUED", "IN_PROGRESS", "FAILED", "COMPLETED"})

_FFMPEG_TIMEOUT_S = 120

# Voice-activity check, run before recognition, because the decoder does hallucinate on noise: in
# noise-bursts.mp3 (white noise pulsing 4 times a second) it hears "thank" with confidence 1.0,
# which no confidence floor can catch. pocketsphinx's own Vad (WebRTC's) is no help there:
# measured on these fixtures it marks 100% of white or pink noise at -28 dBFS or louder as speech, in
# every aggressiveness mode. Voiced speech is periodic at the speaker's pitch, noise is not, so a
# frame counts as voiced when it is loud enough and its normalised autocorrelation peaks above
# _MIN_PERIODICITY at a pitch lag of 60-400 Hz. Tuned on tests/fixtures/audio: the loud frames of
# the speech fixtures have a median periodicity of 0.87-0.97, white noise (noise.mp3) at most 0.26,
# pink noise at most 0.64 in one frame in 66; the speech fixtures hold 0.75-2.2 s of voiced frames,
# the silence and noise fixtures none. Known limit: steady periodic sounds (a hum, beeps, a tone
# sweep) pass this check; the decoder mostly turns them into [SPEECH]/[NOISE] fillers, which are
# dropped, but a sweep can still come out as one short word.
_VAD_FRAME = 480  # 30 ms at 16 kHz
_MIN_VOICED_POWER = 10 ** (-55 / 10)  # frame RMS above -55 dBFS; digital silence and hiss stay below
_MIN_PITCH_LAG = SAMPLE_RATE // 400
_MAX_PITCH_LAG = SAMPLE_RATE // 60
_MIN_PERIODICITY = 0.5
_MIN_VOICED_S = 0.12  # a short word ("cat") has about this much voicing

# Confidence floor on the whole utterance: when even the words the decoder kept have a mean
# posterior this low, it is guessing (a 100-1000 Hz tone sweep came out as "mm" at 0.03). The speech
# fixtures average 0.34-0.85 (the bundled sample is the 0.34), so 0.15 leaves a margin of 2x.
_MIN_MEAN_CONFIDENCE = 0.15

# pocketsphinx marks pronunciation variants as "word(2)"; Transcribe's content is the bare word.
_VARIANT_SUFFIX = re.compile(r"\(\d+\)$")


class AudioDecodeError(ValueError):
    """The upload cannot be turned into audio samples; the message says why and what to do."""


class TranscriberCrashed(RuntimeError):
    """The recogniser died in the middle of a job (its process exited); a fresh one can be started."""


@dataclass(frozen=True)
class Word:
    """One recognised word: times in seconds from the start of the audio, confidence in [0, 1]."""

    content: str
    start: float
    end: float
    confidence: float


@dataclass(frozen=True)
class Transcription:
    """What recognition produced for one recording, with timings."""

    text: str  # the words joined by spaces, lower case; "" when no speech was detected
    words: tuple[Word, ...]
    duration_s: float  # length of the audio
    decode_s: float  # time spent decoding the file to samples
    asr_s: float  # time spent in the voice check and recognition
    speech_detected: bool

    @property
    def mean_confidence(self) -> float:
        """Mean word confidence, 0.0 when no word was recognised."""
        if not self.words:
            return 0.0
        return sum(word.confidence for word in self.words) / len(self.words)


def decode_audio(data: bytes, media_format: str) -> tuple[np.ndarray, float]:
    """Decode an upload to 16 kHz mono int16 samples (read-only) and the seconds that took."""
    import numpy as np

    started = time.perf_counter()
    fmt = media_format.lower().lstrip(".")
    if fmt not in MEDIA_FORMATS:
        raise AudioDecodeError(
            f"unsupported media format {media_format!r}: use one of {', '.join(sorted(MEDIA_FORMATS))}"
        )
    if not data:
        raise AudioDecodeError("the audio file is empty (0 bytes): upload a recording of the spoken prompt")
    pcm = _decode_with_miniaudio(data, fmt) if fmt in MINIAUDIO_FORMATS else _decode_with_ffmpeg(data, fmt)
    samples = np.frombuffer(pcm, dtype=np.int16)
    duration = len(samples) / SAMPLE_RATE
    if duration < MIN_DURATION_S:
        raise AudioDecodeError(
            f"the {fmt} file holds only {duration:.3f} s of audio (at least {MIN_DURATION_S} s needed): "
            "it is probably truncated; upload the complete recording"
        )
    return samples, time.perf_counter() - started


def _decode_with_miniaudio(data: bytes, fmt: str) -> bytes:
    """Decode mp3/wav/flac/ogg in process; miniaudio resamples and downmixes to 16 kHz mono."""
    import miniaudio

    try:
        # miniaudio detects the container from the bytes, so a WAV named .mp3 still decodes.
        decoded = miniaudio.decode(
            data,
            output_format=miniaudio.SampleFormat.SIGNED16,
            nchannels=1,
            sample_rate=SAMPLE_RATE,
        )
    except miniaudio.DecodeError as exc:
        raise AudioDecodeError(
            f"cannot decode {len(data)} bytes as {fmt} audio ({exc.args[0]}): the file is not a recording "
            "or is corrupt; upload an mp3, wav, flac or ogg (Vorbis) file"
        ) from exc
    return decoded.samples.tobytes()


def _decode_with_ffmpeg(data: bytes, fmt: str) -> bytes:
    """Decode m4a/mp4/webm/amr with the ffmpeg command, which miniaudio cannot read."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioDecodeError(
            f"{fmt} audio needs ffmpeg, which is not on PATH: install it (e.g. `apt-get install ffmpeg`) "
            "or convert the recording to mp3, wav, flac or ogg"
        )
    with tempfile.TemporaryDirectory(prefix="transcriber-") as tmp:
        # A file, not stdin: MP4/M4A often keep their index (moov atom) at the end, which ffmpeg
        # cannot seek back to on a pipe.
        source = Path(tmp) / f"upload.{fmt}"
        source.write_bytes(data)
        command = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(source)]
        command += ["-map", "0:a:0", "-f", "s16le", "-acodec", "pcm_s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
        try:
            result = subprocess.run(command, capture_output=True, timeout=_FFMPEG_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise AudioDecodeError(
                f"ffmpeg took more than {_FFMPEG_TIMEOUT_S} s to decode the {fmt} file: upload a shorter recording"
            ) from exc
    if result.returncode != 0:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        raise AudioDecodeError(
            f"ffmpeg cannot decode {len(data)} bytes as {fmt} audio ({reason}): the file is not a recording "
            "or is corrupt; upload an mp3, wav, flac or ogg file"
        )
    return result.stdout


def voiced_seconds(samples: np.ndarray) -> float:
    """Seconds of 30 ms frames that are loud enough and periodic at a voice pitch (the VAD above)."""
    import numpy as np

    n_frames = len(samples) // _VAD_FRAME
    if n_frames == 0:
        return 0.0
    frames = samples[: n_frames * _VAD_FRAME].reshape(n_frames, _VAD_FRAME).astype(np.float32) / 32768.0
    frames -= frames.mean(axis=1, keepdims=True)
    frames = frames[np.einsum("ij,ij->i", frames, frames) / _VAD_FRAME > _MIN_VOICED_POWER]
    if len(frames) == 0:
        return 0.0
    # Zero-padding to twice the frame length gives the linear (not circular) autocorrelation.
    spectrum = np.fft.rfft(frames, n=2 * _VAD_FRAME, axis=1)
    acf = np.fft.irfft(spectrum.real**2 + spectrum.imag**2, axis=1)[:, :_VAD_FRAME]
    lags = np.arange(_MIN_PITCH_LAG, _MAX_PITCH_LAG + 1)
    # Unbiased estimate (divide by the overlap) so that low voices, with long lags, are not penalised.
    at_lags = acf[:, lags] * (_VAD_FRAME / (_VAD_FRAME - lags))
    periodicity = at_lags.max(axis=1) / np.maximum(acf[:, 0], 1e-12)
    # A maximum on the shortest lag is no pitch peak, just the slow decay of rumble (brown noise).
    peaked = at_lags.argmax(axis=1) > 0
    return float(np.count_nonzero((periodicity > _MIN_PERIODICITY) & peaked)) * _VAD_FRAME / SAMPLE_RATE


class Transcriber:
    """pocketsphinx's bundled US English recogniser, loaded once and shared by all calls (thread-safe)."""

    def __init__(self) -> None:
        """Load the en-us acoustic model, language model and dictionary (about 0.3-0.6 s)."""
        import pocketsphinx

        started = time.perf_counter()
        # No arguments: the wheel's bundled en-us model; FATAL keeps its per-utterance INFO logs quiet.
        self._decoder = pocketsphinx.Decoder(loglevel="FATAL")
        self._frame_rate = int(self._decoder.config["frate"])
        # One decoder holds one utterance at a time; the lock lets threads share it.
        self._lock = threading.Lock()
        self.load_s = time.perf_counter() - started

    def transcribe_bytes(self, data: bytes, media_format: str) -> Transcription:
        """Decode an upload and recognise its speech; silence or noise gives empty text, not a guess."""
        samples, decode_s = decode_audio(data, media_format)
        duration = len(samples) / SAMPLE_RATE
        started = time.perf_counter()
        words: tuple[Word, ...] = ()
        # Skip recognition when nothing sounds voiced: the decoder would only guess.
        if voiced_seconds(samples) >= _MIN_VOICED_S:
            words = self._recognise(samples, duration)
            if sum(word.confidence for word in words) < _MIN_MEAN_CONFIDENCE * len(words):
                words = ()
        asr_s = time.perf_counter() - started
        return Transcription(
            text=" ".join(word.content for word in words),
            words=words,
            duration_s=duration,
            decode_s=decode_s,
            asr_s=asr_s,
            speech_detected=bool(words),
        )

    def _recognise(self, samples: np.ndarray, duration: float) -> tuple[Word, ...]:
        """Run the decoder over one whole utterance and keep the real words of its best path."""
        with self._lock:
            # Spectral noise removal keeps statistics across utterances: reset them so that a
            # result does not depend on the file decoded before (it did: "and then" vs "for").
            self._decoder.reinit_feat()
            self._decoder.start_utt()
            # full_utt: normalise cepstra over the whole recording (batch CMN), not a running estimate.
            self._decoder.process_raw(samples.tobytes(), full_utt=True)
            self._decoder.end_utt()
            segments = list(self._decoder.seg())
        words = []
        for segment in segments:
            # <s>, </s>, <sil>, [NOISE], [SPEECH] and ++FILLER++ are not words of the prompt.
            if segment.word[0] in "<[+":
                continue
            start = segment.start_frame / self._frame_rate
            end = min((segment.end_frame + 1) / self._frame_rate, duration)  # end_frame is inclusive
            # Segment.prob is the word's lattice posterior, already taken out of the log domain by
            # the binding (logmath_exp); log-base rounding can give 1.0001, hence the clamp.
            confidence = min(max(segment.prob, 0.0), 1.0)
            words.append(Word(_VARIANT_SUFFIX.sub("", segment.word), start, max(end, start), confidence))
        return tuple(words)


def to_transcribe_json(
    job_name: str, account_id: str, transcription: Transcription, *, status: str = "COMPLETED"
) -> dict:
    """Amazon Transcribe's output document for this transcription: every number a string, as Transcribe writes it."""
    if status not in TRANSCRIBE_JOB_STATUSES:
        known = ", ".join(sorted(TRANSCRIBE_JOB_STATUSES))
        raise ValueError(f"status {status!r} is not a Transcribe job status: {known}")
    items = [
        {
            "start_time": _seconds(word.start),
            "end_time": _seconds(word.end),
            "alternatives": [{"confidence": _confidence(word.confidence), "content": word.content}],
            "type": "pronunciation",
        }
        for word in transcription.words
    ]
    return {
        "jobName": job_name,
        "accountId": account_id,
        "results": {"transcripts": [{"transcript": transcription.text}], "items": items},
        "status": status,
    }


def _seconds(value: float) -> str:
    """Transcribe writes times with at most two decimals and no trailing zeros: "0.44", "1.5", "0.0"."""
    return str(round(value, 2))


def _confidence(value: float) -> str:
    """Transcribe writes confidences with at most four decimals: "0.9987", "1.0"."""
    return str(round(value, 4))
