"""Local speech recognition benchmark: engine load time, real-time factor per clip, word error rate (prints numbers).

    .venv/bin/python benchmarks/bench_asr.py [--repeats 3] [--json]

1. load: seconds to import and load the recogniser in a fresh process (what `make demo` pays once), and
   seconds until the recognition child process of local mode answers "ready";
2. real-time factor: recognition seconds (decode + ASR, best of `--repeats`) / audio seconds, per clip,
   on the bundled sample and every speech fixture; the "3 s clips" line is the median over clips of 2-4 s;
3. word error rate of each transcript against the text the fixture was synthesised from;
4. the same on speech fixtures joined into longer clips (10 s, 16 s, 41 s), for the real-time factor by length;
5. how long a 1 ms ticker thread stalls while a clip is recognised in-process: whether the engine holds the GIL.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from local.transcriber import AudioDecodeError, Transcriber, decode_audio  # noqa: E402
from local.wer import word_error_rate  # noqa: E402

AUDIO = REPO / "tests" / "fixtures" / "audio"
SAMPLE = REPO / "examples" / "astronaut-riding-a-horse.mp3"
SAMPLE_TEXT = "a photo of an astronaut riding a horse on mars"
# Formats pocketsphinx's decoder read too, so that the engines before and after hear the same clips.
SHORT = ["red-apple.mp3", "castle at sunset.mp3", "café painting.mp3", "cat-in-a-hat.wav", "dog-on-the-beach.ogg"]
LONGER_CLIPS = {
    "3 joined (wav)": SHORT[:3],
    "6 joined (wav)": [*SHORT, "mountain-lake.flac"],
    "7 joined (wav)": [*SHORT, "mountain-lake.flac", "long-description.mp3"],
}
LOAD_IN_FRESH_PROCESS = (
    "import time; started = time.perf_counter(); from local.transcriber import Transcriber; Transcriber(); "
    "print(time.perf_counter() - started)"
)


def fresh_load_s() -> float:
    """Import and load the recogniser in a new interpreter, as local mode's child process does."""
    output = subprocess.run(
        [sys.executable, "-c", LOAD_IN_FRESH_PROCESS], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return float(output.strip().splitlines()[-1])


def child_ready_s() -> float:
    """Seconds until local mode's recognition process has loaded its model and answers."""
    from local.asr import RemoteTranscriber

    started = time.perf_counter()
    remote = RemoteTranscriber()
    ready = time.perf_counter() - started
    remote.close()
    return ready


def longest_pause_ms(transcriber: Transcriber) -> float:
    """Longest stall of a 1 ms ticker thread while a 3 s clip is recognised in this process (GIL held?)."""
    done = threading.Event()
    pauses: list[float] = []

    def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            pauses.append(now - last)
            last = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    transcriber.transcribe_bytes((AUDIO / "red-apple.mp3").read_bytes(), "mp3")
    done.set()
    ticker.join()
    return max(pauses) * 1000


def clips() -> list[tuple[str, Path, str]]:
    """(name, path, spoken text) of the bundled sample and every speech fixture."""
    manifest = json.loads((AUDIO / "manifest.json").read_text(encoding="utf-8"))
    found = [(SAMPLE.name, SAMPLE, SAMPLE_TEXT)]
    found += [(name, AUDIO / name, entry["text"]) for name, entry in manifest["speech"].items()]
    return found


def joined(names: list[str]) -> tuple[bytes, str]:
    """Speech fixtures one after another as one 16 kHz WAV, and what they say (longer clips, varied speech)."""
    manifest = json.loads((AUDIO / "manifest.json").read_text(encoding="utf-8"))
    parts = []
    for name in names:
        samples, _ = decode_audio((AUDIO / name).read_bytes(), name.rsplit(".", 1)[1])
        parts.append(samples if samples.dtype == np.int16 else (samples * 32767).astype(np.int16))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
        wav.writeframes(np.concatenate(parts).tobytes())
    return buffer.getvalue(), " ".join(manifest["speech"][name]["text"] for name in names)


def measure(transcriber: Transcriber, repeats: int) -> list[dict[str, object]]:
    """Transcribe every clip `repeats` times; keep the fastest run's timings and the transcript."""
    rows: list[dict[str, object]] = []
    inputs = [(name, path.read_bytes(), path.suffix.lstrip("."), text) for name, path, text in clips()]
    for label, names in LONGER_CLIPS.items():
        data, text = joined(names)
        inputs.append((label, data, "wav", text))
    for name, data, fmt, text in inputs:
        best = None
        try:
            for _ in range(repeats):
                result = transcriber.transcribe_bytes(data, fmt)
                if best is None or result.decode_s + result.asr_s < best.decode_s + best.asr_s:
                    best = result
        except AudioDecodeError as error:
            rows.append({"clip": name, "error": str(error)})
            continue
        assert best is not None
        seconds = best.decode_s + best.asr_s
        rows.append(
            {
                "clip": name,
                "audio_s": round(best.duration_s, 2),
                "decode_s": round(best.decode_s, 3),
                "asr_s": round(best.asr_s, 3),
                "rtf": round(seconds / best.duration_s, 3),
                "wer": round(word_error_rate(text, best.text), 3),
                "transcript": best.text,
            }
        )
    return rows


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per clip; the fastest counts (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    args = parser.parse_args()

    loads = [fresh_load_s() for _ in range(3)]
    ready = child_ready_s()
    transcriber = Transcriber()
    rows = measure(transcriber, args.repeats)
    pause = longest_pause_ms(transcriber)
    timed = [row for row in rows if "rtf" in row]
    three_s = [row["rtf"] for row in timed if 2.0 <= float(row["audio_s"]) <= 4.0]
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_s_fresh_process": [round(value, 2) for value in loads],
        "engine_ready_s": round(ready, 2),
        "longest_pause_ms": round(pause, 1),
        "rtf_3s_clips_median": round(statistics.median(three_s), 3) if three_s else None,
        "wer_mean": round(statistics.mean(float(row["wer"]) for row in timed), 3) if timed else None,
        "clips": rows,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"speech recognition benchmark ({summary['machine']})")
    print(f"  load in a fresh process: {', '.join(f'{value:.2f} s' for value in loads)}")
    print(f"  local mode's recognition process ready in {ready:.2f} s")
    print(f"  longest stall of another thread while a 3 s clip is recognised in-process: {pause:.0f} ms")
    print(f"  {'clip':<28} {'audio':>6} {'decode':>7} {'asr':>7} {'RTF':>6} {'WER':>6}  transcript")
    for row in rows:
        if "error" in row:
            print(f"  {row['clip']:<28} not decoded: {row['error']}")
            continue
        print(
            f"  {row['clip']:<28} {row['audio_s']:>5.2f}s {row['decode_s']:>6.3f}s {row['asr_s']:>6.3f}s "
            f"{row['rtf']:>6.3f} {row['wer']:>6.3f}  {row['transcript']}"
        )
    print(f"  real-time factor, median over 2-4 s clips: {summary['rtf_3s_clips_median']}")
    print(f"  word error rate, mean over the decoded clips: {summary['wer_mean']}")


if __name__ == "__main__":
    main()
