"""`python -m local run FILE...`: the whole pipeline on this machine, no AWS account needed (`serve`: local/serve.py).

Each FILE is uploaded to the local input bucket; the real handlers, a local Amazon Transcribe and a
local SageMaker endpoint turn it into an image set (or an error record), which is copied to --out with
a gallery (index.html) of every run in that folder. Exit status: 0 when every file produced an image,
1 when any ended as an error, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from infra.config import ConfigError
from local import gallery
from local.report import print_report, save_result

EXIT_OK = 0
EXIT_ERRORS = 1
EXIT_USAGE = 2
DEFAULT_TIMEOUT_S = 600.0
TINY_MODEL_NOTE = (
    "Using the tiny random-weight test model: its images are abstract noise ({size}x{size}, {steps} steps). "
    "For real pictures pass a Hugging Face Hub model (downloaded once into .cache/hub) or a diffusers folder, e.g.\n"
    "  python -m local run FILE --model stabilityai/sd-turbo\n"
    "  python -m local run FILE --model models/sd-v1-4"
)


class UsageError(ValueError):
    """The command line cannot be run as given; the message says how to fix it."""


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m local", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run recordings through the local pipeline",
        description="Upload recordings to the local pipeline and collect the images it draws.",
    )
    run.add_argument("files", nargs="+", type=Path, metavar="FILE", help="audio recordings (mp3, wav, flac, ogg, ...)")
    run.add_argument("--out", type=Path, default=Path("out"), help="results folder (default: ./out)")
    model = run.add_mutually_exclusive_group()
    model.add_argument(
        "--model",
        metavar="PATH|ORG/NAME[@REVISION]",
        help="a diffusers pipeline folder, or a Hugging Face Hub model the endpoint downloads into .cache/hub "
        "(SD 1.x/2.x, SDXL, SD-Turbo, SDXL-Turbo; default: a tiny random-weight test model)",
    )
    model.add_argument("--model-dir", type=Path, help="a diffusers pipeline folder (the same as --model PATH)")
    run.add_argument(
        "--asr-model",
        metavar="NAME|PATH",
        help="faster-whisper speech model: a name (base.en, small, large-v3-turbo, ...; downloaded once) or a "
        "folder (default: Whisper tiny.en, installed with the project)",
    )
    run.add_argument("--size", type=int, help="image width and height in pixels (multiple of 8, 64-1024)")
    run.add_argument("--steps", type=int, help="denoising steps (1-150)")
    run.add_argument(
        "--endpoint-mode",
        choices=("async", "realtime"),
        help="SageMaker asynchronous inference (cdk.json's endpointMode, async by default) or a real-time endpoint",
    )
    run.add_argument(
        "--cold-start",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="async: the GPU starts from zero, taking this long before the run's first request and after "
        "scaleInIdleMinutes without work (default 0)",
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for all results (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    output = run.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", help="print only the paths of the results")
    output.add_argument("--json", action="store_true", help="print one JSON document with every result")
    from local.serve import add_parser as add_serve_parser

    add_serve_parser(commands)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    runtime: Any = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the CLI; `runtime` lets callers (tests, benchmarks) share one started `LocalRuntime`."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser()
    try:
        # argparse prints usage and errors itself: to the streams this call was given.
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        if args.command == "serve":
            from local.serve import serve

            return serve(args, stdout=stdout, stderr=stderr)
        return run(args, runtime=runtime, stdout=stdout, stderr=stderr)
    except UsageError as error:
        print(f"error: {error}", file=stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=stderr)
        return 130


def check_files(files: Sequence[Path]) -> list[Path]:
    """The files to upload, in order, each once; `UsageError` for anything that cannot be uploaded."""
    chosen: dict[str, Path] = {}
    for path in files:
        if not path.exists():
            raise UsageError(f"{path}: no such file")
        if not path.is_file():
            raise UsageError(f"{path}: not a file (pass audio files, not folders)")
        # Any file is uploaded: as on AWS, transcribe_trigger answers a non-audio file with an error record.
        earlier = chosen.get(path.name)
        if earlier is not None and earlier.resolve() != path.resolve():
            raise UsageError(
                f"{earlier} and {path} would both be uploaded as '{path.name}': rename one, or run them separately"
            )
        chosen.setdefault(path.name, path)
    return list(chosen.values())


def run(args: argparse.Namespace, *, runtime: Any = None, stdout: TextIO, stderr: TextIO) -> int:
    """Start (or reuse) the runtime, process every file, write the results folder and report."""
    from local.runtime import LocalRuntime, load_config, local_config

    progress = ProgressPrinter(stderr, enabled=not args.quiet)
    if args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    owned = runtime is None
    if owned:
        try:
            config = load_config(endpoint_mode=args.endpoint_mode)
        except ConfigError as error:
            raise UsageError(f"cdk.json{' with --endpoint-mode' if args.endpoint_mode else ''}: {error}") from None
        files = check_files(args.files)
        if args.cold_start < 0:
            raise UsageError("--cold-start must be zero or more seconds")
        if args.cold_start and not config.is_async:
            raise UsageError("--cold-start needs the async endpoint (a real-time endpoint is always up)")
        model = _choose_model(args)
        try:
            config = local_config(_with_image_overrides(config, args), model, size=args.size, steps=args.steps)
        except ConfigError as error:
            raise UsageError(f"--size/--steps: {error}") from None
        transcriber_factory = _transcriber_factory(args.asr_model, out / "logs" / "transcribe.log", quiet=args.quiet)
        out.mkdir(parents=True, exist_ok=True)
        runtime = LocalRuntime(
            config, model, log_dir=out / "logs", transcriber_factory=transcriber_factory, cold_start_s=args.cold_start
        )
    else:
        if any(
            value is not None
            for value in (args.model, args.model_dir, args.size, args.steps, args.asr_model, args.endpoint_mode)
        ):
            raise UsageError(
                "--model, --model-dir, --asr-model, --size, --steps and --endpoint-mode cannot change a runtime "
                "that is already running"
            )
        files = check_files(args.files)
        out.mkdir(parents=True, exist_ok=True)
    if not args.quiet:
        _describe_model(runtime, stderr)
    runtime.add_listener(progress)
    try:
        if owned:
            progress.line("starting local AWS (moto S3/SQS/Transcribe), the handlers and the endpoint")
            try:
                runtime.start()
            except Exception as error:
                print(f"error: local mode could not start: {error}", file=stderr)
                return EXIT_ERRORS
        started = time.perf_counter()
        for path in files:
            runtime.upload(path)
        idle = runtime.wait_until_idle(args.timeout)
        if not idle:
            print(
                f"error: timed out after {args.timeout:g} s with work still in flight; results so far are below "
                f"(handler logs: {runtime.log_dir}); raise --timeout for large models on CPU",
                file=stderr,
            )
        results = [runtime.collect(path.name) for path in files]
        if not idle:
            for result in results:
                if result.error_origin == "local mode" and result.error is not None:
                    job = result.job
                    stage = "validate" if job is None else "generate" if job.status == "COMPLETED" else "transcribe"
                    result.error.update(
                        stage=stage,
                        error="timeout",
                        reason=f"no result within --timeout {args.timeout:g} s: the pipeline was still working on it",
                        action="run again with a larger --timeout (a full-size model on a CPU takes minutes per image)",
                    )
        elapsed = time.perf_counter() - started
        reports = [save_result(out, result) for result in results]
        dead_letters = {handler.value: runtime.dead_letters(handler) for handler in runtime.functions}
        index = gallery.write_index(out)
    finally:
        runtime.remove_listener(progress)
        if owned:
            runtime.stop()
    print_report(args, reports, index, runtime, elapsed, stdout, dead_letters)
    return EXIT_OK if idle and all(report["status"] == "image" for report in reports) else EXIT_ERRORS


class ProgressPrinter:
    """Prints progress a person can follow on stderr: `[  1.2s] name: message`."""

    def __init__(self, stream: TextIO, *, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.started = time.perf_counter()
        # Events come from several threads (dispatcher, Transcribe engine, endpoint): one line at a time.
        self._lock = threading.Lock()

    def line(self, message: str) -> None:
        """Print one progress line."""
        if self.enabled:
            text = f"[{time.perf_counter() - self.started:6.1f}s] {message}\n"
            with self._lock:
                self.stream.write(text)
                self.stream.flush()

    def __call__(self, progress: Any) -> None:
        """A runtime progress event."""
        self.line(f"{progress.key}: {progress.message}" if progress.key else progress.message)


def _transcriber_factory(asr_model: str | None, log_path: Path, *, quiet: bool = False) -> Any:
    """What starts local mode's recogniser; a model named here is downloaded now, with a progress bar."""
    from local.asr import RemoteTranscriber
    from local.asr_model import ModelError, resolve_model

    if asr_model is None:
        return None  # the runtime's default: the bundled tiny.en
    try:
        path = resolve_model(asr_model, progress=not quiet)
    except ModelError as error:
        raise UsageError(f"--asr-model: {error}") from None
    return lambda: RemoteTranscriber(path, log_path=log_path)


def _choose_model(args: argparse.Namespace) -> Any:
    """The model the local endpoint serves: --model (a folder or a Hub id), --model-dir, or the tiny test model."""
    from local.runtime import choose_model, model_folder, tiny_model

    try:
        if args.model is not None:
            return choose_model(args.model)
        return model_folder(args.model_dir) if args.model_dir is not None else tiny_model()
    except ValueError as error:  # ModelSourceError too: a Hub model that cannot be resolved or reached
        flag = "--model" if args.model is not None else "--model-dir"
        message = str(error)
        raise UsageError(message if message.startswith("--model") else f"{flag} {message}") from None


def _with_image_overrides(config: Any, args: argparse.Namespace) -> Any:
    """Check --size/--steps with the configuration's own rules (as if they were in cdk.json)."""
    if args.size is None and args.steps is None:
        return config
    from local.runtime import load_config

    overrides: dict[str, Any] = {}
    if args.size is not None:
        overrides.update(height=args.size, width=args.size)
    if args.steps is not None:
        overrides["num_inference_steps"] = args.steps
    return load_config(image_overrides=overrides, endpoint_mode=args.endpoint_mode)


def _describe_model(runtime: Any, stderr: TextIO) -> None:
    image = runtime.config.image
    if runtime.model is not None and runtime.model.tiny:
        print(TINY_MODEL_NOTE.format(size=image.width, steps=image.num_inference_steps), file=stderr)
        return
    if runtime.model is not None and runtime.model.hub_id is not None:
        print(
            f"Serving {runtime.model.label}: the endpoint downloads the files it loads on first use "
            "(progress bars below), later runs read the cache.",
            file=stderr,
        )
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if gpu:
        return
    # Beyond a quick look (256x256, 10 steps) a CPU needs minutes per image; unset values are the family's own.
    configured = (image.width, image.height, image.num_inference_steps)
    if None in configured or image.width * image.height * image.num_inference_steps > 256 * 256 * 10:
        what = (
            f"{image.width}x{image.height} with {image.num_inference_steps} steps"
            if None not in configured
            else "the model family's default size and steps"
        )
        print(
            f"No GPU: generating {what} on the CPU can take minutes, longer than invoke_sd's 70 s endpoint "
            "read timeout (SageMaker's real-time limit is 60 s). For a quick look try --size 256 --steps 10.",
            file=stderr,
        )
