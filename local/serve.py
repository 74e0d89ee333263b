"""`python -m local serve`: the local pipeline plus the web page and its API on 127.0.0.1, for one local user.

    with LocalRuntime(config, tiny_model()) as runtime, WebFrontend(runtime, port=0) as web:
        print(web.url)

The web API is `lambdas/web_api/handler.py`, run like the pipeline's handlers: in its own process with exactly
the environment WebStack gives the deployed function (`infra.web_config.web_api_environment`), from the same
cdk.json context (`webMaxUploadMb`, `webMaxRecordingSeconds`, `webUrlTtlSeconds`; `--max-seconds` overrides one).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import boto3
from botocore.config import Config

from infra.pipeline import BucketRole
from infra.web_config import WebConfig, web_api_environment
from local.aws import FAKE_CREDENTIALS
from local.functions import LocalFunction
from local.settings import REPO_ROOT, load_web_config
from local.web_server import LocalWebServer, WebServerConfig

WEB_DIR = REPO_ROOT / "web"
DEFAULT_PORT = 8080


@dataclass(frozen=True)
class WebApiFunction:
    """The web API as a local function: InfraStack's `Handler` lists the pipeline's functions, not WebStack's."""

    value: str = "web_api"
    entry_point: str = "web_api.handler.handler"


class WebFrontend:
    """The web API's function and the HTTP server in front of it, over a started `LocalRuntime`."""

    def __init__(
        self,
        runtime: Any,
        *,
        port: int = DEFAULT_PORT,
        host: str = "127.0.0.1",
        web: WebConfig | None = None,
        web_dir: Path = WEB_DIR,
    ) -> None:
        """Serve on `host:port` (port 0: any free one) with `web` (default: cdk.json's, as WebStack is deployed)."""
        self.runtime = runtime
        self.address = (host, port)
        self.web = web if web is not None else load_web_config(runtime.config)
        self.web_dir = web_dir
        self.function: LocalFunction | None = None
        self.server: LocalWebServer | None = None
        self._s3: Any = None

    @property
    def url(self) -> str:
        """The page's address."""
        assert self.server is not None, "start() first"
        return self.server.url

    def environment(self) -> dict[str, str]:
        """The web API's own variables, as WebStack gives the deployed function (docs/API.md "Deployment")."""
        runtime = self.runtime
        return web_api_environment(runtime.config, self.web, runtime.bucket_names, runtime.aws.ledger_table)

    def page_config(self) -> dict[str, object]:
        """The page's config.json: the same limits the API enforces, the API on this server, no sign-in."""
        return {
            "apiUrl": "/api",
            "maxRecordingSeconds": self.web.max_recording_seconds,
            "maxUploadBytes": self.web.max_upload_bytes,
            "auth": None,
        }

    def start(self) -> WebFrontend:
        """Start the API's process and the server."""
        runtime = self.runtime
        assert runtime.log_dir is not None, "start the runtime first"
        self.function = LocalFunction(
            handler=WebApiFunction(),  # type: ignore[arg-type]
            environment=self.environment(),
            # The credentials and endpoints every local function gets (moto, the local SageMaker runtime).
            runtime_environment=runtime.function_runtime_environment("web_api.0"),
            lambdas_dir=runtime.lambdas_dir,
            log_path=runtime.log_dir / "web_api.log",
            account=runtime.aws.account,
            region=runtime.aws.region,
            timeout_s=30,
        )
        self.function.start()
        self.function.wait_ready()
        self._s3 = boto3.client(
            "s3",
            endpoint_url=runtime.aws.endpoint_url,
            region_name=runtime.aws.region,
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=FAKE_CREDENTIALS["AWS_SESSION_TOKEN"],
            config=Config(retries={"max_attempts": 2, "mode": "standard"}),
        )
        config = WebServerConfig(
            web_dir=self.web_dir,
            page_config=self.page_config(),
            input_bucket=runtime.bucket_names[BucketRole.INPUT],
            max_upload_bytes=self.web.max_upload_bytes,
            access_key=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        self.server = LocalWebServer(self.address, config, invoke_api=self._invoke, put_object=self._put).start()
        return self

    def stop(self) -> None:
        """Stop the server and the API's process."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.function is not None:
            self.function.stop()
            self.function = None

    def __enter__(self) -> WebFrontend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        assert self.function is not None
        invocation = self.function.invoke(event)
        if invocation.ok and isinstance(invocation.result, dict):
            return invocation.result
        # What API Gateway answers when the integration fails; the traceback is in the function's log.
        return {
            "statusCode": 500,
            "headers": {"Content-Type": "application/json"},
            "body": '{"message":"Internal Server Error"}',
        }

    def _put(self, key: str, body: bytes, content_type: str | None) -> None:
        bucket = self.runtime.bucket_names[BucketRole.INPUT]
        extra = {"ContentType": content_type} if content_type else {}
        self._s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)


def add_parser(commands: Any) -> None:
    """The `serve` command's arguments."""
    serve = commands.add_parser(
        "serve",
        help="serve the web page and its API on 127.0.0.1 over the local pipeline",
        description="Run the local pipeline and serve the web page (record or pick a file, watch it become a picture).",
    )
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default {DEFAULT_PORT})")
    serve.add_argument(
        "--model-dir", type=Path, help="a diffusers Stable Diffusion v1.x folder (default: tiny test model)"
    )
    serve.add_argument("--size", type=int, help="image width and height in pixels (multiple of 8, 64-1024)")
    serve.add_argument("--steps", type=int, help="denoising steps (1-150)")
    serve.add_argument("--endpoint-mode", choices=("async", "realtime"), help="as for `run`")
    serve.add_argument(
        "--max-seconds",
        type=int,
        help="longest recording the page takes, 5-3600 (default: cdk.json's webMaxRecordingSeconds)",
    )


def serve(args: argparse.Namespace, *, stdout: TextIO, stderr: TextIO) -> int:
    """Start everything, print the address, serve until Ctrl-C."""
    from local.cli import EXIT_ERRORS, EXIT_OK, ProgressPrinter, UsageError
    from local.runtime import LocalRuntime, load_config, local_config, model_folder, tiny_model

    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be 0-65535")
    try:
        model = model_folder(args.model_dir) if args.model_dir is not None else tiny_model()
        config = local_config(load_config(endpoint_mode=args.endpoint_mode), model, size=args.size, steps=args.steps)
        web_config = load_web_config(config, max_recording_seconds=args.max_seconds)
    except ValueError as error:  # ConfigError too, which names the context key
        overridden = args.max_seconds is not None and "webMaxRecordingSeconds" in str(error)
        raise UsageError(f"--max-seconds {args.max_seconds}: {error}" if overridden else str(error)) from None
    runtime = LocalRuntime(config, model)
    progress = ProgressPrinter(stderr, enabled=True)
    runtime.add_listener(progress)
    progress.line("starting local AWS (moto S3/SQS/Transcribe), the handlers, the endpoint and the web API")
    try:
        runtime.start()
    except Exception as error:
        print(f"error: local mode could not start: {error}", file=stderr)
        return EXIT_ERRORS
    web = WebFrontend(runtime, port=args.port, web=web_config)
    try:
        try:
            web.start()
        except OSError as error:
            print(f"error: cannot serve on 127.0.0.1:{args.port}: {error} (try --port)", file=stderr)
            return EXIT_ERRORS
        print(f"open {web.url} (Ctrl-C stops; handler logs: {runtime.log_dir})", file=stdout, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", file=stderr)
        return EXIT_OK
    finally:
        web.stop()
        runtime.remove_listener(progress)
        runtime.stop()
