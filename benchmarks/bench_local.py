"""Local mode benchmark: end-to-end latency per stage and throughput (prints numbers; not a test).

    .venv/bin/python benchmarks/bench_local.py [--model-dir DIR] [--files 20] [--repeats 5]

1. start-up: moto, the handler processes, the speech recogniser and the model;
2. latency: the sample recording, once cold (first invocation of each handler) and then `--repeats` times
   warm, one upload at a time, broken down by stage;
3. throughput: `--files` copies of the speech fixtures under distinct names, uploaded at once.

The pipeline's own overhead is the total minus speech recognition (decode + ASR) and generation (the
endpoint call): uploads, queues, handler invocations, S3 reads and writes, HTTP. Target once warm:
< 10 % of the total and < 0.5 s per file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from local.runtime import LocalRuntime, load_config, local_config, model_folder, tiny_model  # noqa: E402

SAMPLE = REPO / "examples" / "astronaut-riding-a-horse.mp3"
AUDIO = REPO / "tests" / "fixtures" / "audio"
STAGES = (
    "upload",
    "to_transcribe",
    "fetch_media",
    "decode",
    "asr",
    "transcript_to_endpoint",
    "generation",
    "writes",
    "total",
    "overhead",
)


def run_one(runtime: LocalRuntime, path: Path, key: str, timeout_s: float) -> dict[str, float]:
    """Upload one file, wait for the pipeline to go idle and return its stage timings."""
    runtime.upload(path, key)
    if not runtime.wait_until_idle(timeout_s):
        raise SystemExit(f"timed out after {timeout_s} s on {key}")
    result = runtime.collect(key)
    if result.status != "image":
        raise SystemExit(f"{key} did not produce an image: {result.error}")
    return result.timings


def table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """Stages as rows, runs as columns."""
    widths = [max(12, len(name)) + 2 for name, _ in rows]
    header = f"{'stage':<24}" + "".join(f"{name:>{width}}" for (name, _), width in zip(rows, widths, strict=True))
    lines = [header, "-" * len(header)]
    for stage in STAGES:
        cells = "".join(
            f"{timings.get(stage, float('nan')):>{width - 1}.3f}s"
            for (_, timings), width in zip(rows, widths, strict=True)
        )
        lines.append(f"{stage:<24}{cells}")
    return "\n".join(lines)


def median_timings(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median of each stage over several runs."""
    return {
        stage: statistics.median(run[stage] for run in runs if stage in run) for stage in STAGES if stage in runs[0]
    }


def speech_fixtures() -> list[Path]:
    """The committed speech recordings (those the manifest says hold a prompt)."""
    manifest = json.loads((AUDIO / "manifest.json").read_text(encoding="utf-8"))
    return [AUDIO / name for name in manifest["speech"]]


def main() -> int:
    """Run the benchmark and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a diffusers SD v1.x folder (default: the tiny test model)")
    parser.add_argument("--files", type=int, default=20, help="files in the throughput run (default 20)")
    parser.add_argument("--repeats", type=int, default=5, help="warm single-file runs (default 5)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for one batch")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args()

    model = model_folder(args.model_dir) if args.model_dir else tiny_model()
    config = local_config(load_config(), model)
    image = config.image
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    what = "tiny random-weight test model" if model.tiny else str(model.path)
    # Parameters left unset in cdk.json are the model family's own defaults, applied by the endpoint.
    print(f"model: {what}, image parameters {image.as_dict() or 'of the model family (defaults)'}")

    with tempfile.TemporaryDirectory(prefix="bench-local-") as scratch:
        work = Path(scratch)
        runtime = LocalRuntime(config, model, log_dir=work / "logs")
        started = time.perf_counter()
        runtime.start()
        startup_s = time.perf_counter() - started
        try:
            cold = run_one(runtime, SAMPLE, "cold.mp3", args.timeout)
            warm_runs = [run_one(runtime, SAMPLE, f"warm-{index}.mp3", args.timeout) for index in range(args.repeats)]
            warm = median_timings(warm_runs)

            fixtures = speech_fixtures()
            batch: list[tuple[Path, str]] = []
            for index in range(args.files):
                source = fixtures[index % len(fixtures)]
                batch.append((source, f"batch-{index:02d}{source.suffix}"))
            batch_started = time.perf_counter()
            for source, key in batch:
                runtime.upload(source, key)
            if not runtime.wait_until_idle(args.timeout):
                raise SystemExit(f"the batch of {args.files} timed out after {args.timeout} s")
            batch_wall = time.perf_counter() - batch_started
            results = [runtime.collect(key) for _, key in batch]
        finally:
            runtime.stop()

    images = sum(result.status == "image" for result in results)
    asr_total = sum(result.timings.get("decode", 0) + result.timings.get("asr", 0) for result in results)
    generation_total = sum(result.timings.get("generation", 0) for result in results)
    # ASR and generation run in different processes, so the busier of the two bounds the batch.
    bound = max(asr_total, generation_total)

    print(
        f"\nstart-up: {startup_s:.2f} s "
        f"(model {runtime.endpoint.load_s:.2f} s, recogniser {runtime.engine.load_s:.2f} s)"
    )
    print(f"\nlatency of the sample ({SAMPLE.name}), seconds per stage:")
    print(table([("cold", cold), (f"warm (median of {args.repeats})", warm)]))
    share = 100 * warm["overhead"] / warm["total"]
    print(
        f"\npipeline overhead once warm: {warm['overhead']:.3f} s per file = {share:.1f} % of {warm['total']:.3f} s "
        f"(target < 0.5 s and < 10 %: {'met' if warm['overhead'] < 0.5 and share < 10 else 'NOT met'})"
    )
    print(
        f"\nthroughput: {images}/{len(results)} images from {len(results)} files in {batch_wall:.2f} s = "
        f"{len(results) / batch_wall * 60:.1f} files/min ({batch_wall / len(results):.3f} s per file)"
    )
    print(
        f"  work in the batch: speech recognition {asr_total:.2f} s, generation {generation_total:.2f} s; "
        f"wall time beyond the busier of the two: {batch_wall - bound:.2f} s "
        f"({(batch_wall - bound) / len(results):.3f} s per file)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "startup_s": startup_s,
                    "cold": cold,
                    "warm_median": warm,
                    "warm_runs": warm_runs,
                    "batch": {
                        "files": len(results),
                        "images": images,
                        "wall_s": batch_wall,
                        "asr_s": asr_total,
                        "generation_s": generation_total,
                    },
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
