"""Load test (not a unit test): many uploads, good and bad mixed, plus same-key races, into local mode at once.

Every key must end as exactly one final result in the output bucket, and it must be the result of the
key's LAST upload: the image set (`images/<key>.png/.json/.html`, whose metadata names the upload's
version as `source.upload_id`) or an error record (`errors/<key>.json`, which the ledger item of the key
ties to the upload). Races upload A, B and A's bytes again under one key, back to back. The report
counts keys, images, error records (by code), keys with no result or with both, keys whose result is not
their last upload's, duplicated generations (more than one successful endpoint call for one upload,
i.e. one Transcribe job), events left in dead-letter queues, the time from the first upload until the
pipeline is idle, the peak concurrent invocations per handler, and the peak memory of the whole local
pipeline (this process and its handler, recogniser and model processes).

    python benchmarks/load_local.py                 # 100 uploads + 20 races, tiny model at 64x64, 2 steps
    python benchmarks/load_local.py --burst 1000    # 1,000 small recordings at once: does the backlog drain?
    python benchmarks/load_local.py --uploads 300 --races 50 --json
    python benchmarks/load_local.py --endpoint-mode realtime   # the real-time endpoint (default: async)

Exit status 0 when every key is accounted for exactly once by its last upload's result, 1 otherwise.
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
from dataclasses import replace
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


def last_upload_holds(runtime: Any, s3: Any, key: str, has_image: bool, last_version: str) -> bool:
    """True when the key's result belongs to its last upload (metadata `source.upload_id`, or the ledger's item)."""
    from infra.pipeline import IMAGE_PREFIX, BucketRole

    if has_image:
        body = s3.get_object(Bucket=runtime.bucket_names[BucketRole.OUTPUT], Key=f"{IMAGE_PREFIX}{key}.json")["Body"]
        return json.loads(body.read()).get("source", {}).get("upload_id") == last_version
    # Error records name the key, not the upload: the ledger says which upload the committed record is for.
    item = runtime.ledger_item(key) or {}
    return (
        item.get("upload_id", {}).get("S") == last_version
        and item.get("stage", {}).get("S") == "failed"
        and item.get("result", {}).get("M", {}).get("kind", {}).get("S") == "error"
    )


def account(runtime: Any, keys: list[str], last_versions: dict[str, str]) -> dict[str, Any]:
    """Which final result each key has in the output bucket, and what is wrong where it is not exactly one."""
    from infra.pipeline import ERROR_PREFIX, IMAGE_PREFIX, BucketRole, Handler

    s3 = runtime.aws.client("s3")
    bucket = runtime.bucket_names[BucketRole.OUTPUT]
    stored: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        stored.update(item["Key"] for item in page.get("Contents", []))
    images, errors, missing, both, incomplete, not_last = [], [], [], [], [], []
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
        if (has_image or has_error) and not last_upload_holds(runtime, s3, key, has_image, last_versions[key]):
            not_last.append(key)
    duplicated = {job: count for job, count in runtime.generations.items() if count > 1}
    accounted = len(images) + len(errors)
    return {
        "keys": len(keys),
        "images": len(images),
        "error_records": len(errors),
        "error_codes": dict(sorted(codes.items())),
        "accounted": accounted,
        "last_upload_result_pct": round(100 * (accounted - len(not_last)) / max(1, len(keys)), 2),
        "not_last_upload": not_last,
        "missing": missing,
        "both_image_and_error": both,
        "incomplete_image_sets": incomplete,
        "generations": sum(runtime.generations.values()),
        "duplicated_generations": duplicated,
        "dead_letters": {handler.value: runtime.dead_letters(handler) for handler in Handler},
    }


def diagnose(runtime: Any, key: str) -> dict[str, Any]:
    """What the ledger and the handlers said about a key whose result is not its last upload's."""
    item = runtime.ledger_item(key) or {}
    trace = runtime.traces.get(key)
    return {
        "last_version": trace.version_id,
        "ledger": {name: value.get("S") for name, value in item.items() if isinstance(value, dict) and "S" in value},
        "outcomes": [(record.handler, record.outcomes, record.invocation.ok) for record in trace.invocations],
        "generations": {job: count for job, count in runtime.generations.items() if job in str(item)},
    }


def plan(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The uploads, in order: the mix (or the burst), then the races (A, B, A's bytes again per key)."""
    if args.burst:
        # The shortest clear recording, under 1,000 keys: every upload is transcribed and generated.
        small = AUDIO / "dog-on-the-beach.ogg"
        return [(f"burst/{index:04d}/{small.name}", small) for index in range(args.burst)]
    kinds = mix()
    # Unique keys under a prefix, cycling through the kinds; fixture names bring spaces and unicode.
    uploads = [
        (f"load/{index:03d}/{kinds[index % len(kinds)].name}", kinds[index % len(kinds)])
        for index in range(args.uploads)
    ]
    return uploads


def race(runtime: Any, key: str) -> None:
    """A, B, then A's bytes again under one key, back to back: the third upload must win."""
    for name in ("red-apple.mp3", "castle at sunset.mp3", "red-apple.mp3"):
        runtime.upload(AUDIO / name, key=key)


def main(argv: list[str] | None = None) -> int:
    """Run the load test and print its report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=100, help="how many single uploads (default 100)")
    parser.add_argument("--races", type=int, default=20, help="how many same-key races A, B, A again (default 20)")
    parser.add_argument("--burst", type=int, default=0, help="instead: this many small recordings at once")
    parser.add_argument("--size", type=int, default=64, help="image size for the tiny model (default 64)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps (default 2)")
    parser.add_argument(
        "--endpoint-mode",
        choices=("async", "realtime"),
        default="async",
        help="the SageMaker endpoint local mode plays: asynchronous inference (default) or real-time",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the pipeline to drain")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--logs", type=Path, help="keep the handlers' logs in this folder")
    args = parser.parse_args(argv)
    if args.burst:
        args.races = 0

    from local.runtime import LocalRuntime, load_config, local_config, tiny_model

    model = tiny_model()
    config = replace(
        local_config(load_config(), model, size=args.size, steps=args.steps), endpoint_mode=args.endpoint_mode
    )
    uploads = plan(args)
    race_keys = [f"race/{index:02d}/same name.mp3" for index in range(args.races)]
    with PeakMemory() as memory, LocalRuntime(config, model, log_dir=args.logs) as runtime:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=16) as pool:
            singles = pool.map(lambda item: runtime.upload(item[1], key=item[0]), uploads)
            races = pool.map(lambda key: race(runtime, key), race_keys)
            list(singles), list(races)
        uploaded_s = time.perf_counter() - started
        drained = runtime.wait_until_idle(args.timeout)
        drain_s = time.perf_counter() - started
        keys = [key for key, _ in uploads] + race_keys
        last_versions = {key: runtime.traces.get(key).version_id for key in keys}
        report = account(runtime, keys, last_versions)
        report["diagnosis"] = {key: diagnose(runtime, key) for key in report["not_last_upload"]}
        assert runtime.dispatcher is not None
        peak_concurrency = {handler.value: count for handler, count in runtime.dispatcher.concurrency.peak.items()}
        environments = {handler.value: len(pool.all()) for handler, pool in runtime.pools.items()}
    total_uploads = len(uploads) + 3 * len(race_keys)
    report.update(
        {
            "uploads": total_uploads,
            "races": len(race_keys),
            "burst": args.burst,
            "upload_s": round(uploaded_s, 2),
            "drained": drained,
            "time_to_drain_s": round(drain_s, 2),
            "uploads_per_minute": round(60 * total_uploads / drain_s, 1),
            "peak_concurrency": peak_concurrency,
            "execution_environments": environments,
            "peak_memory_mib": round(memory.peak_bytes / 2**20),
            "endpoint_mode": args.endpoint_mode,
            "image_size": args.size,
            "steps": args.steps,
            "cpus": os.cpu_count(),
        }
    )
    ok = (
        drained
        and report["accounted"] == report["keys"]
        and not report["not_last_upload"]
        and not report["both_image_and_error"]
        and not report["incomplete_image_sets"]
        and not report["duplicated_generations"]
    )
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(
            f"uploads              {report['uploads']} ({len(uploads)} single, {report['races']} races of 3; "
            f"uploaded in {report['upload_s']} s)"
        )
        print(f"endpoint             {report['endpoint_mode']}")
        print(f"keys                 {report['keys']}")
        print(f"images               {report['images']}")
        print(f"error records        {report['error_records']}  {report['error_codes']}")
        print(f"accounted for        {report['accounted']}/{report['keys']}")
        print(f"last upload's result {report['last_upload_result_pct']}%  {report['not_last_upload'][:5]}")
        print(f"missing              {len(report['missing'])} {report['missing'][:5]}")
        print(f"image and error      {len(report['both_image_and_error'])}")
        print(f"incomplete images    {len(report['incomplete_image_sets'])}")
        print(f"generations          {report['generations']} ({len(report['duplicated_generations'])} duplicated)")
        print(f"dead letters         {report['dead_letters']}")
        print(f"time to drain        {report['time_to_drain_s']} s ({report['uploads_per_minute']} uploads/min)")
        print(f"peak concurrency     {report['peak_concurrency']} (environments {report['execution_environments']})")
        print(f"peak memory          {report['peak_memory_mib']} MiB (local pipeline, all processes)")
        print("OK: every key ended exactly once, with its last upload's result" if ok else "FAILED: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
