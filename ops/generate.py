"""`python -m ops.generate FILE...` (`make generate FILE=...`): speech to picture on the deployed pipeline.

Each FILE is uploaded to the stack's input bucket under its base name; the upload's ledger item shows its
stage as the pipeline works (the same words as `local run`), and its result is copied to --out with the
gallery `local run` writes: the image set, or the error record whose reason and action are printed.
Exit status as `local run`: 0 when every file produced an image, 1 when any ended as an error (or did not
finish within --timeout), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from local import gallery
from local.cli import DEFAULT_TIMEOUT_S, EXIT_ERRORS, EXIT_OK, EXIT_USAGE, ProgressPrinter, UsageError, check_files
from local.report import print_outcome
from ops.stack import require, run_command, stack_outputs
from ops.stack import session as _session
from ops.upload_status import STAGE_WORDS, UploadStatus, read_status, starting_from_zero

DEFAULT_STACK = "InfraStack"
# The ledger is read this often per upload: a GetItem costs a fraction of a cent per thousand.
POLL_INTERVAL_S = 2.0


@dataclass(frozen=True)
class Deployment:
    """What the command reads from the stack's outputs."""

    input_bucket: str
    output_bucket: str
    ledger_table: str
    endpoint_name: str | None


@dataclass
class Upload:
    """One file on its way through the pipeline."""

    path: Path
    key: str
    version_id: str | None
    etag: str
    started: float
    stage: str = "uploaded"
    status: UploadStatus | None = None
    saved: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        """True once the upload has its result (or lost its key to a newer upload)."""
        return self.status is not None and self.status.final


def deployment_of(outputs: dict[str, str], stack_name: str) -> Deployment:
    """The buckets, ledger and endpoint named by InfraStack's outputs."""
    input_bucket, output_bucket, ledger = require(
        outputs, stack_name, "InputBucketName", "OutputBucketName", "LedgerTableName"
    )
    return Deployment(input_bucket, output_bucket, ledger, outputs.get("EndpointName"))


def upload(s3: Any, deployment: Deployment, path: Path, clock: Callable[[], float]) -> Upload:
    """Put the file in the input bucket under its base name, as `local run` and `aws s3 cp` do."""
    response = s3.put_object(Bucket=deployment.input_bucket, Key=path.name, Body=path.read_bytes())
    return Upload(
        path=path,
        key=path.name,
        version_id=response.get("VersionId"),
        etag=str(response.get("ETag", "")).strip('"'),
        started=clock(),
    )


def generate(
    clients: dict[str, Any],
    deployment: Deployment,
    files: Sequence[Path],
    *,
    out: Path,
    timeout_s: float,
    progress: ProgressPrinter,
    poll_s: float = POLL_INTERVAL_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[list[Upload], bool]:
    """Upload every file, follow each to its result and save it in `out`; (uploads, all finished in time)."""
    s3 = clients["s3"]
    uploads = []
    for path in files:
        item = upload(s3, deployment, path, clock)
        progress.line(f"{item.key}: uploaded to s3://{deployment.input_bucket}/{item.key}")
        uploads.append(item)
    deadline = clock() + timeout_s
    while True:
        for item in uploads:
            if not item.final:
                _follow(clients, deployment, item, progress, clock)
        if all(item.final for item in uploads):
            break
        if clock() >= deadline:
            break
        sleep(poll_s)
    for item in uploads:
        if item.final:
            item.saved = _save(s3, deployment, item, out)
    return uploads, all(item.final for item in uploads)


def _follow(
    clients: dict[str, Any], deployment: Deployment, item: Upload, progress: ProgressPrinter, clock: Any
) -> None:
    """Read the upload's stage once; report a change."""
    before = item.status.stage if item.status is not None else None
    item.status = read_status(
        clients["dynamodb"], clients["s3"], deployment.ledger_table, deployment.input_bucket, item
    )
    stage = item.status.stage
    if stage == before:
        return
    words = STAGE_WORDS.get(stage, stage)
    # Asked once, as the request starts waiting: an async endpoint at zero instances takes minutes to start.
    if stage == "waiting" and starting_from_zero(clients.get("sagemaker"), deployment.endpoint_name):
        words = "starting the GPU (from zero instances: the first picture after a quiet spell takes minutes)"
    if words != item.stage:
        item.stage = words
        progress.line(f"{item.key}: {words} ({clock() - item.started:.0f} s)")


def _save(s3: Any, deployment: Deployment, item: Upload, out: Path) -> dict[str, Any]:
    """Copy the result into `out` (the local gallery's layout); the report entry."""
    status = item.status
    assert status is not None
    if status.kind == "image":
        base = status.result_key.removesuffix(".png")
        png, metadata, page = (
            _read(s3, deployment.output_bucket, f"{base}{suffix}") for suffix in (".png", ".json", ".html")
        )
        document = json.loads(metadata)
        paths = gallery.save_image(out, item.key, png, document, page)
        return {"status": "image", "transcript": document.get("transcript"), "outputs": paths}
    if status.kind == "error":
        record = json.loads(_read(s3, deployment.output_bucket, status.result_key))
    else:
        record = status.local_error
    return {"status": "error", "error": record, "outputs": {"error": gallery.save_error(out, item.key, record)}}


def _read(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def _report(uploads: list[Upload], index: Path, timed_out: float | None, stdout: TextIO) -> None:
    """What became of each file, as `local run` reports it."""
    for item in uploads:
        report = item.saved
        if not report:
            print(f"\n{item.key}: still {item.stage} when --timeout {timed_out:g} s ran out", file=stdout)
            print(
                "  what to do: run again with a larger --timeout (a GPU starting from zero takes minutes); the "
                "upload keeps going and its result will appear in the output bucket",
                file=stdout,
            )
            continue
        print(f"\n{item.key}: {report['status']}", file=stdout)
        print_outcome(report, stdout)
    images = sum(item.saved.get("status") == "image" for item in uploads)
    print(f"\n{images} of {len(uploads)} files produced an image", file=stdout)
    print(f"gallery: {index}", file=stdout)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.generate",
        description="Speech to picture on the deployed pipeline: upload each FILE to the input bucket, show its "
        "stages as the pipeline works, and save its image set (or error record) in --out with a gallery.",
        epilog="exit status: 0 every file produced an image, 1 any error or --timeout, 2 usage problem "
        "(files, credentials, region, stack).",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="audio recordings (mp3, wav, ...)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="results folder (default: ./out)")
    parser.add_argument("--stack", default=DEFAULT_STACK, help="the pipeline stack (default: %(default)s)")
    parser.add_argument("--region", help="AWS region (default: your AWS configuration)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for all results (default {DEFAULT_TIMEOUT_S:.0f}; a GPU starting from zero takes "
        "minutes)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(
    argv: list[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Command line entry point; `sleep`/`clock` let tests drive the pipeline between polls."""
    args = _parser().parse_args(argv)
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    try:
        if args.timeout <= 0:
            raise UsageError("--timeout must be a positive number of seconds")
        if args.out.exists() and not args.out.is_dir():
            raise UsageError(f"--out {args.out}: exists and is not a folder")
        files = check_files(args.files)
    except UsageError as error:
        print(f"error: {error}", file=stderr)
        return EXIT_USAGE

    def run(session: Any) -> int:
        deployment = deployment_of(stack_outputs(session.client("cloudformation"), args.stack), args.stack)
        clients = {name: session.client(name) for name in ("s3", "dynamodb", "sagemaker")}
        args.out.mkdir(parents=True, exist_ok=True)
        progress = ProgressPrinter(stderr, enabled=not args.quiet)
        uploads, finished = generate(
            clients,
            deployment,
            files,
            out=args.out,
            timeout_s=args.timeout,
            progress=progress,
            sleep=sleep,
            clock=clock,
        )
        index = gallery.write_index(args.out)
        _report(uploads, index, None if finished else args.timeout, stdout)
        ok = finished and all(item.saved.get("status") == "image" for item in uploads)
        return EXIT_OK if ok else EXIT_ERRORS

    try:
        return run_command(
            run, make_session=lambda region: _session(region), region=args.region, stack_name=args.stack, err=stderr
        )
    except KeyboardInterrupt:
        print("interrupted: the uploads keep going; their results will appear in the output bucket", file=stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
