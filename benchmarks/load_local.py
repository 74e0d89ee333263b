"""Load test (not a unit test): many uploads, good and bad mixed, into local mode at once.

Every upload must end as exactly one final result in the output bucket: the image set
(`images/<key>.png/.json/.html`) or an error record (`errors/<key>.json`). The report counts
uploads, images, error records (by code), uploads with no result or with both, repeated
generations (more than one endpoint call for an upload), events left in dead-letter queues,
the time from the first upload until the pipeline is idle, and the peak memory of the whole
local pipeline (this process and its handler, recogniser and model processes).

    python benchmarks/load_local.py                 # 100 uploads, tiny model at 64x64, 2 steps
    python benchmarks/load_local.py --uploads 300 --json

Exit status 0 when every upload is accounted for exactly once, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

AUDIO = REPO / "tests" / "fixtures" / "audio"


def mix() -> list[Path]:
    """The kinds of upload, good and bad: every speech fixture, silence, noise, broken and non-audio files."""
    manifest = json.loads((AUDIO / "manifest.json").read_text(encoding="utf-8"))
    names = [*manifest["speech"], *manifest["no_speech"], *manifest["undecodable"], *manifest["not_audio_upload"]]
    return [AUDIO / name for name in names]


class PeakMemory:
    """Samples the resident memory of this process and all its descendants; keeps the peak."""

    def __init__(self, interval_s: float = 0.2) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.peak_bytes = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="load-memory")

    def sample(self) -> int:
        """Resident bytes of the process tree now."""
        import psutil

        total = 0
        for process in [self._process, *self._process.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue  # exited between listing and reading
        self.peak_bytes = max(self.peak_bytes, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()

    def __enter__(self) -> PeakMemory:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def account(runtime: Any, keys: list[str]) -> dict[str, Any]:
    """Which final result each upload has in the output bucket, and what is wrong where it is not exactly one."""
    from infra.pipeline import ERROR_PREFIX, IMAGE_PREFIX, BucketRole, Handler

    s3 = runtime.aws.client("s3")
    bucket = runtime.bucket_names[BucketRole.OUTPUT]
    stored: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        stored.update(item["Key"] for item in page.get("Contents", []))
    images, errors, missing, both, incomplete = [], [], [], [], []
    codes: Counter[str] = Counter()
    for key in keys:
        image_set = [f"{IMAGE_PREFIX}{key}{suffix}" in stored for suffix in (".png", ".json", ".html")]
        has_image = all(image_set)
        has_error = f"{ERROR_PREFIX}{key}.json" in stored
        if any(image_set) and not has_image:
            incomplete.append(key)
        if has_image and has_error:
            both.append(key)
        elif has_image:
            images.append(key)
        elif has_error:
            errors.append(key)
            record = json.loads(s3.get_object(Bucket=bucket, Key=f"{ERROR_PREFIX}{key}.json")["Body"].read())
            codes[f"{record.get('stage')}/{record.get('error')}"] += 1
        else:
            missing.append(key)
    repeated = {
        key: len(runtime.traces.get(key).endpoint_calls)
        for key in keys
        if len(runtime.traces.get(key).endpoint_calls) > 1
    }
    return {
        "uploads": len(keys),
        "images": len(images),
        "error_records": len(errors),
        "error_codes": dict(sorted(codes.items())),
        "accounted": len(images) + len(errors),
        "missing": missing,
        "both_image_and_error": both,
        "incomplete_image_sets": incomplete,
        "repeated_generations": repeated,
        "dead_letters": {handler.value: runtime.dead_letters(handler) for handler in Handler},
    }


def main(argv: list[str] | None = None) -> int:
    """Run the load test and print its report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=100, help="how many uploads (default 100)")
    parser.add_argument("--size", type=int, default=64, help="image size for the tiny model (default 64)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps (default 2)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the pipeline to drain")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    from local.runtime import LocalRuntime, load_config, local_config, tiny_model

    model = tiny_model()
    config = local_config(load_config(), model, size=args.size, steps=args.steps)
    kinds = mix()
    # Unique keys under a prefix, cycling through the kinds; fixture names bring spaces and unicode.
    uploads = [
        (f"load/{index:03d}/{kinds[index % len(kinds)].name}", kinds[index % len(kinds)])
        for index in range(args.uploads)
    ]
    with PeakMemory() as memory, LocalRuntime(config, model) as runtime:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda item: runtime.upload(item[1], key=item[0]), uploads))
        uploaded_s = time.perf_counter() - started
        drained = runtime.wait_until_idle(args.timeout)
        drain_s = time.perf_counter() - started
        report = account(runtime, [key for key, _ in uploads])
    report.update(
        {
            "kinds": len(kinds),
            "upload_s": round(uploaded_s, 2),
            "drained": drained,
            "time_to_drain_s": round(drain_s, 2),
            "uploads_per_minute": round(60 * args.uploads / drain_s, 1),
            "peak_memory_mib": round(memory.peak_bytes / 2**20),
            "image_size": args.size,
            "steps": args.steps,
            "cpus": os.cpu_count(),
        }
    )
    ok = (
        drained
        and report["accounted"] == report["uploads"]
        and not report["both_image_and_error"]
        and not report["incomplete_image_sets"]
        and not report["repeated_generations"]
    )
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(f"uploads              {report['uploads']} ({report['kinds']} kinds, uploaded in {report['upload_s']} s)")
        print(f"images               {report['images']}")
        print(f"error records        {report['error_records']}  {report['error_codes']}")
        print(f"accounted for        {report['accounted']}/{report['uploads']}")
        print(f"missing              {len(report['missing'])} {report['missing'][:5]}")
        print(f"image and error      {len(report['both_image_and_error'])}")
        print(f"incomplete images    {len(report['incomplete_image_sets'])}")
        print(f"repeated generations {len(report['repeated_generations'])}")
        print(f"dead letters         {report['dead_letters']}")
        print(f"time to drain        {report['time_to_drain_s']} s ({report['uploads_per_minute']} uploads/min)")
        print(f"peak memory          {report['peak_memory_mib']} MiB (local pipeline, all processes)")
        print("OK: every upload ended exactly once" if ok else "FAILED: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
