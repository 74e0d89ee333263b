"""Encode a 16-bit PCM WAV as m4a, mp4, webm or amr with PyAV, byte-identically on every run (fixtures).

    .venv/bin/python scripts/encode_audio.py IN.wav OUT.{m4a,mp4,webm,amr}

The formats a phone (m4a: AAC in an MPEG-4 container) or a browser (webm: Opus) records, plus mp4 and
AMR-NB (8 kHz narrow-band, as old phones and voice-mail systems record). FFmpeg's bitexact flags keep its
version string and timestamps out of the files, so regenerating them changes no byte.
"""

from __future__ import annotations

import sys
import wave
from pathlib import Path

import av
import numpy as np

# extension -> (muxer, encoder, sample rate, bit rate)
FORMATS = {
    "m4a": ("ipod", "aac", 16_000, 40_000),
    "mp4": ("mp4", "aac", 16_000, 40_000),
    "webm": ("webm", "libopus", 48_000, 24_000),
    "amr": ("amr", "libopencore_amrnb", 8_000, 12_200),
}


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono int16 samples and the sample rate of a 16-bit PCM WAV."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise SystemExit(f"{path}: expected 16-bit mono PCM")
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2"), wav.getframerate()


def encode(source: Path, target: Path) -> None:
    """Encode `source` into `target`, the format chosen by the target's extension."""
    muxer, codec, rate, bit_rate = FORMATS[target.suffix.lstrip(".").lower()]
    samples, source_rate = read_wav(source)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = source_rate
    with av.open(str(target), mode="w", format=muxer, container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=rate, options={"flags": "+bitexact"})
        stream.bit_rate = bit_rate
        stream.layout = "mono"
        context = stream.codec_context
        # Encoders take fixed-size frames (AAC 1024 samples, Opus 960, AMR 160): the resampler cuts them.
        resampler = av.AudioResampler(
            format=context.codec.audio_formats[0].name, layout="mono", rate=rate, frame_size=context.frame_size or None
        )
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(chunk))
        container.mux(stream.encode(None))


if __name__ == "__main__":
    if len(sys.argv) != 3 or Path(sys.argv[2]).suffix.lstrip(".").lower() not in FORMATS:
        raise SystemExit(f"usage: {sys.argv[0]} IN.wav OUT.{{{','.join(FORMATS)}}}")
    encode(Path(sys.argv[1]), Path(sys.argv[2]))
