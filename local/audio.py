"""Decode an upload in any Amazon Transcribe media format to 16 kHz mono samples, in process, with PyAV."""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING

# numpy and av are imported inside decode_audio: importing this module stays cheap for callers that only
# need the constants or the error class (the engine imports it eagerly in the server process).
if TYPE_CHECKING:
    import numpy as np

SAMPLE_RATE = 16_000
"""Samples per second that decode_audio returns and Whisper expects."""

MIN_DURATION_S = 0.1
"""Shorter audio is treated as a broken file: a single MP3 frame (~0.07 s) is all a truncated upload gives."""

MEDIA_FORMATS = frozenset({"mp3", "mp4", "m4a", "wav", "flac", "ogg", "webm", "amr"})
"""Amazon Transcribe's MediaFormat values; PyAV's bundled FFmpeg decodes all of them."""

_FORMAT_LIST = "mp3, mp4, m4a, wav, flac, ogg, webm or amr"


class AudioDecodeError(ValueError):
    """The upload cannot be turned into audio samples; the message says why and what to do."""


def decode_audio(data: bytes, media_format: str) -> tuple[np.ndarray, float]:
    """Decode an upload to 16 kHz mono float32 samples in [-1, 1] and the seconds that took."""
    import av
    import numpy as np

    started = time.perf_counter()
    fmt = media_format.lower().lstrip(".")
    if fmt not in MEDIA_FORMATS:
        raise AudioDecodeError(
            f"unsupported media format {media_format!r}: use one of {', '.join(sorted(MEDIA_FORMATS))}"
        )
    if not data:
        raise AudioDecodeError("the audio file is empty (0 bytes): upload a recording of the spoken prompt")
    chunks: list[np.ndarray] = []
    try:
        # FFmpeg probes the container from the bytes, not the name: a WAV named .mp3 still decodes, as on AWS.
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.audio[0]  # IndexError: no audio stream (a text file probed as something)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            try:
                for frame in container.decode(stream):
                    chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
            except av.FFmpegError:
                # A recording cut off mid-frame (an interrupted upload): keep what decoded before the damage.
                if not chunks:
                    raise
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except (av.FFmpegError, IndexError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise AudioDecodeError(
            f"cannot decode {len(data)} bytes as {fmt} audio ({reason}): the file is not a recording "
            f"or is corrupt; upload an {_FORMAT_LIST} file"
        ) from error
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    duration = len(samples) / SAMPLE_RATE
    if duration < MIN_DURATION_S:
        raise AudioDecodeError(
            f"the {fmt} file holds only {duration:.3f} s of audio (at least {MIN_DURATION_S} s needed): "
            "it is probably truncated; upload the complete recording"
        )
    return samples.astype(np.float32, copy=False), time.perf_counter() - started
