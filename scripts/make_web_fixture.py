"""Make the browser test's fake-microphone WAV from the bundled sample, byte-identically on every run.

    .venv/bin/python scripts/make_web_fixture.py   # -> tests/fixtures/web/astronaut-mic.wav

Chromium plays a file into its fake microphone only when it is PCM (16-bit here, FACTS.md "Browser"): a 24-bit
WAV or an MP3 records silence without an error. The speech is decoded with PyAV (no ffmpeg), resampled to 16 kHz
mono (Chromium resamples it; the file stays small), given 1 s of silence before (the recorder starts a moment after
the fake device) and 0.5 s after, and scaled to a peak of -3 dBFS so the recording is loud enough to be heard.
"""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "examples" / "astronaut-riding-a-horse.mp3"
TARGET = REPO / "tests" / "fixtures" / "web" / "astronaut-mic.wav"
RATE = 16_000
PEAK = 10 ** (-3 / 20)


def decode(path: Path) -> np.ndarray:
    """Mono float samples at RATE."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(chunks)


def main() -> None:
    """Write TARGET."""
    speech = decode(SOURCE)
    speech = speech * (PEAK / max(float(np.abs(speech).max()), 1e-9))
    samples = np.concatenate([np.zeros(RATE), speech, np.zeros(RATE // 2)])
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(TARGET), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(pcm.tobytes())
    print(f"{TARGET.relative_to(REPO)}: {len(pcm) / RATE:.2f} s, {TARGET.stat().st_size} bytes")


if __name__ == "__main__":
    main()
