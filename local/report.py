"""What `python -m local run` prints and keeps: each result copied to --out, and the report of the run."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, TextIO

from local import gallery

# The order stages happen in, with the words a person reads.
STAGE_LABELS = (
    ("upload", "upload"),
    ("to_transcribe", "to Transcribe"),
    ("fetch_media", "fetch"),
    ("decode", "decode"),
    ("asr", "ASR"),
    ("transcript_to_endpoint", "transcript->endpoint"),
    ("waiting", "waiting for the GPU"),
    ("generation", "generation"),
    ("writes", "writes"),
)


def save_result(out: Path, result: Any) -> dict[str, Any]:
    """Copy one result into the results folder; the report entry for it."""
    report: dict[str, Any] = {
        "name": result.key,
        "status": result.status,
        "transcript": result.transcript,
        "timings": result.timings,
        "repeat": result.repeat,
    }
    if result.conflict:
        report["conflict"] = "the output bucket holds both an image set and an error record for this upload"
    if result.status == "image" and result.png is not None and result.html is not None:
        report["notices"] = list((result.metadata or {}).get("notices") or [])
        paths = gallery.save_image(out, result.key, result.png, result.metadata or {}, result.html)
        report["outputs"] = {kind: str(path) for kind, path in paths.items()}
    else:
        report["status"] = "error"
        error = result.error or {"status": "error", "reason": "the image set is incomplete in the output bucket"}
        path = gallery.save_error(out, result.key, error)
        report["outputs"] = {"error": str(path)}
        report["error"] = {
            "stage": error.get("stage"),
            "error": error.get("error"),
            "reason": error.get("reason"),
            "action": error.get("action"),
            "recorded_by": "output bucket"
            if result.error_origin == "output bucket"
            else f"local mode ({result.error_origin})",
        }
    return report


def format_timings(timings: dict[str, float]) -> str:
    """One line: seconds per stage, the total and the pipeline's own overhead."""
    parts = [f"{label} {timings[key]:.2f}s" for key, label in STAGE_LABELS if key in timings]
    total = timings.get("total")
    if total:
        overhead = timings.get("overhead", 0.0)
        parts.append(f"total {total:.2f}s (pipeline overhead {overhead:.2f}s, {100 * overhead / total:.0f}%)")
    return " | ".join(parts)


def print_outcome(report: dict[str, Any], stdout: TextIO) -> None:
    """One file's transcript, notices, error with what to do, and saved paths (`local run`, `ops.generate`)."""
    if report.get("transcript") is not None:
        print(f"  transcript: {report['transcript']!r}", file=stdout)
    for notice in report.get("notices", []):
        print(f"  notice: {notice}", file=stdout)
    if report.get("conflict"):
        print(f"  warning: {report['conflict']}", file=stdout)
    if report["status"] == "error":
        error = report["error"]
        print(f"  error ({error.get('stage')}, {error.get('error')}): {error.get('reason')}", file=stdout)
        print(f"  what to do: {error.get('action')}", file=stdout)
    for path in report["outputs"].values():
        print(f"  {path}", file=stdout)


def print_report(
    args: argparse.Namespace,
    reports: list[dict[str, Any]],
    index: Path,
    runtime: Any,
    elapsed: float,
    stdout: TextIO,
    dead_letters: dict[str, int],
) -> None:
    """Print the run: one JSON document (--json), the result paths (--quiet), or a summary a person reads."""
    if args.json:
        document = {
            "ok": all(report["status"] == "image" for report in reports),
            "files": reports,
            "dead_letters": dead_letters,
            "gallery": str(index),
            "startup_s": round(runtime.startup_s, 3),
            "elapsed_s": round(elapsed, 3),
            "model": {
                "path": str(runtime.model.path) if runtime.model and runtime.model.path else None,
                "hub_id": runtime.model.hub_id if runtime.model else None,
                "hub_revision": runtime.model.hub_revision if runtime.model else None,
                "tiny": bool(runtime.model and runtime.model.tiny),
                "image_parameters": runtime.config.image.as_dict(),
            },
            "logs": str(runtime.log_dir) if runtime.log_dir else None,
        }
        print(json.dumps(document, ensure_ascii=False, indent=2), file=stdout)
        return
    if args.quiet:
        for report in reports:
            for path in report["outputs"].values():
                print(path, file=stdout)
        print(index, file=stdout)
        return
    for report in reports:
        print(f"\n{report['name']}: {report['status']}", file=stdout)
        if report.get("repeat"):
            print(
                f"  {report['name']}: this upload's event arrived again; the upload ledger recognised the repeat "
                "and these are the upload's own results",
                file=stdout,
            )
        print_outcome(report, stdout)
        print(f"  timings: {format_timings(report['timings'])}", file=stdout)
    images = sum(report["status"] == "image" for report in reports)
    print(f"\n{images} of {len(reports)} files produced an image in {elapsed:.1f} s", file=stdout)
    for handler, count in dead_letters.items():
        if count:
            print(
                f"{count} event(s) wait in {handler}'s dead-letter queue: on AWS, fix the cause and run `make replay`",
                file=stdout,
            )
    print(
        f"start-up: {runtime.startup_s:.1f} s (model {runtime.endpoint.load_s:.1f} s, "
        f"speech recogniser {runtime.engine.load_s:.1f} s)",
        file=stdout,
    )
    print(f"gallery: {index}", file=stdout)
    if os.environ.get("CI") is None and args.out == Path("out"):
        print(f"open it with: python -m webbrowser -t file://{index.resolve()}", file=stdout)
