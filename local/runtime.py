"""The local runtime: embedded AWS, the real handlers, a local Transcribe and a local SageMaker endpoint.

    with LocalRuntime(load_config(), tiny_model()) as runtime:
        runtime.upload(Path("examples/astronaut-riding-a-horse.mp3"))
        runtime.wait_until_idle(timeout_s=300)
        result = runtime.collect("astronaut-riding-a-horse.mp3")

The wiring comes from `infra.pipeline` (routes, queue settings, the ledger and `handler_environment`) and
the configuration from cdk.json's context (`PipelineConfig.from_context`), like the CDK app: local mode
swaps endpoints, not handlers. This module is the life cycle; `local.settings` has the configuration,
`local.results` reads what an upload ended as, `local.dispatcher` plays the event sources,
`local.operations` is what you do with a running pipeline (deliver, hold, replay, sweep) and
`local.async_endpoint` plays SageMaker asynchronous inference when `endpointMode` is async (the default).
"""

from __future__ import annotations

import functools
import logging
import mimetypes
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.pipeline import BucketRole, Handler, handler_environment
from local.async_endpoint import async_endpoint_for
from local.aws import FAKE_CREDENTIALS, EmbeddedAws, LocalModeError, with_local_environment
from local.dispatcher import DEFAULT_MAX_RETRIES, DEFAULT_RETRY_DELAY_S, Dispatcher
from local.endpoint import SageMakerRuntimeServer
from local.faults import Faults
from local.functions import FunctionPool, LocalFunction
from local.model_source import code_only_dir
from local.observer import PipelineObserver
from local.operations import RuntimeOperations
from local.results import ResultReader, UploadResult
from local.schedule import Timer
from local.settings import (
    CDK_JSON,
    LAMBDAS_DIR,
    REPO_ROOT,
    ModelChoice,
    choose_model,
    hub_model,
    load_config,
    local_config,
    model_folder,
    tiny_model,
)
from local.tracking import Activity, Progress, ProgressListener, Trace, Traces
from local.transcribe_engine import TranscribeEngine

log = logging.getLogger(__name__)

# On AWS the sweeper runs every SWEEP_INTERVAL_MINUTES (infra.pipeline); locally a minute keeps a run lively.
DEFAULT_SWEEP_INTERVAL_S = 60.0


class LocalRuntime(RuntimeOperations):
    """Starts and stops everything; one per process (moto keeps its state per process)."""

    def __init__(
        self,
        config: Any,
        model: ModelChoice | None,
        *,
        lambdas_dir: Path = LAMBDAS_DIR,
        log_dir: Path | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_delay_s: int = DEFAULT_RETRY_DELAY_S,
        sweep_interval_s: float | None = DEFAULT_SWEEP_INTERVAL_S,
        transcriber_factory: Callable[[], Any] | None = None,
        cold_start_s: float = 0.0,
    ) -> None:
        config = with_local_environment(config)
        self.config = config
        self.model = model
        self.lambdas_dir = Path(lambdas_dir)
        self.max_retries = max_retries
        self.retry_delay_s = retry_delay_s
        # None: no timer, the sweeper runs only when `sweep()` is called.
        self.sweep_interval_s = sweep_interval_s
        # endpointMode=async: seconds the GPU takes to start from zero (before the run's first request).
        self.cold_start_s = cold_start_s
        self.activity = Activity()
        self.traces = Traces()
        self.faults = Faults()
        self.aws = EmbeddedAws(config, self.faults)
        self.engine = TranscribeEngine(
            self.aws, self.activity, transcriber_factory or self._remote_transcriber, self._emit
        )
        self.observer = PipelineObserver(self.aws, self.engine, self.traces, self._emit)
        self.endpoint = SageMakerRuntimeServer(
            config.endpoint_name,
            self.aws.account,
            self.aws.region,
            on_call=self.observer.endpoint_finished,
            on_received=self.observer.endpoint_received,
            on_queued=self.observer.endpoint_queued,
            faults=self.faults,
        )
        self.pools: dict[Handler, FunctionPool] = {}
        # The first execution environment of each function: its name, ARN and environment are the function's.
        self.functions: dict[Handler, LocalFunction] = {}
        self.dispatcher: Dispatcher | None = None
        self.startup_s = 0.0
        self.started = False
        self._tmp_logs: tempfile.TemporaryDirectory[str] | None = None
        self._tmp_code: tempfile.TemporaryDirectory[str] | None = None
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._listeners: list[ProgressListener] = []
        self._s3: Any = None
        self._sqs: Any = None
        self._dynamodb: Any = None
        self._reader: ResultReader | None = None
        self._torch_threads: int | None = None
        self._sweeper: Timer | None = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> LocalRuntime:
        """Start moto, the handlers' processes, the speech recogniser and the endpoint; load in parallel."""
        started = time.perf_counter()
        loaders: list[threading.Thread] = []
        try:
            if self.log_dir is None:
                self._tmp_logs = tempfile.TemporaryDirectory(prefix="s2i-local-logs-")
                self.log_dir = Path(self._tmp_logs.name)
            self.aws.start()
            self._s3 = self.aws.client("s3")
            self._sqs = self.aws.client("sqs")
            self._reader = ResultReader(self)
            self.endpoint.start()
            if self.config.is_async:
                self.endpoint.async_endpoint = async_endpoint_for(self, self.cold_start_s)
                self.endpoint.async_endpoint.start()
            # As InfraStack: the async_result stage exists only for an asynchronous endpoint.
            for handler in (h for h in Handler if self.config.is_async or h is not Handler.ASYNC_RESULT):
                pool = FunctionPool(functools.partial(self._make_function, handler))
                self.pools[handler] = pool
                self.functions[handler] = pool.start()
            if self.model is not None:
                what = self.model.label
                self._emit(
                    Progress("", "startup", f"loading Stable Diffusion ({what}) through the Hugging Face toolkit")
                )
            self._emit(Progress("", "startup", "loading the speech recogniser (faster-whisper)"))
            errors: list[BaseException] = []
            loaders += [
                _thread(self._load_model, errors, "load-model"),
                _thread(self.engine.load, errors, "load-asr"),
            ]
            self.engine.start()
            for function in self.functions.values():
                function.wait_ready()
            for loader in loaders:
                loader.join()
            if errors:
                raise errors[0]
            self.dispatcher = Dispatcher(
                self.aws, self.pools, self.activity, self.observer, self.max_retries, self.retry_delay_s
            )
            self.dispatcher.start()
            if self.sweep_interval_s:
                self._sweeper = Timer(self.sweep_interval_s, self.sweep, name="local-sweeper")
        except BaseException:
            # Let the loaders finish first: whatever they load (a model, the recogniser's process) stop() releases.
            for loader in loaders:
                loader.join()
            self.stop()
            raise
        self.startup_s = time.perf_counter() - started
        self.started = True
        self._emit(
            Progress(
                "",
                "startup",
                f"ready in {self.startup_s:.1f} s "
                f"(model {self.endpoint.load_s:.1f} s, recogniser {self.engine.load_s:.1f} s)",
            )
        )
        return self

    def stop(self) -> None:
        """Stop everything, in reverse order; safe to call twice or after a failed start."""
        self.started = False
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None
        self.engine.stop()
        for pool in self.pools.values():
            pool.stop()
        self.pools.clear()
        self.functions.clear()
        if self.endpoint.async_endpoint is not None:
            self.endpoint.async_endpoint.stop()
            self.endpoint.async_endpoint = None
        self.endpoint.stop()
        self.aws.stop()
        self._dynamodb = None
        if self._torch_threads is not None:
            import torch

            torch.set_num_threads(self._torch_threads)
            self._torch_threads = None
        if self._tmp_logs is not None:
            self._tmp_logs.cleanup()
            self._tmp_logs = None
        if self._tmp_code is not None:
            self._tmp_code.cleanup()
            self._tmp_code = None
            self.log_dir = None

    def __enter__(self) -> LocalRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- using it ---------------------------------------------------------------------------

    def add_listener(self, listener: ProgressListener) -> None:
        """Receive progress events (model loading, stages of each upload)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: ProgressListener) -> None:
        """Stop receiving progress events."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def on_job_state_change(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Receive every final Transcribe job state as its EventBridge "Transcribe Job State Change" event.

        The pipeline itself hears FAILED jobs through the EventBridge rule (transcribe_failed); this is
        for observers.
        """
        self.engine.on_state_change(listener)

    @property
    def generations(self) -> Counter[str]:
        """Successful endpoint calls per Transcribe job, i.e. per upload (more than one: a duplicate)."""
        return self.observer.generations

    def function_environment(self, handler: Handler) -> dict[str, str]:
        """The handler's own variables, exactly as `infra.pipeline.handler_environment` gives them."""
        return dict(self.functions[handler].environment)

    def function_runtime_environment(self, caller: str) -> dict[str, str]:
        """What Lambda's runtime gives every local function beside its own variables: moto, this endpoint, no AWS.

        `caller` names the process (e.g. `web_api.0`) in its SageMaker runtime URL, so each call is traced to it.
        """
        return {
            **FAKE_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.aws.endpoint_url,
            # The path prefix names the calling process (see local.endpoint); botocore keeps it.
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": f"{self.endpoint.url}/_caller/{caller}",
            # No shared config or credentials file can redirect or authorise anything real.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    @property
    def bucket_names(self) -> dict[BucketRole, str]:
        """The local bucket name of each role."""
        return dict(self.aws.bucket_names)

    def upload(self, path: Path, key: str | None = None) -> Trace:
        """Upload a file to the input bucket (under its base name unless `key` is given), as a user would."""
        key = key or path.name
        data = path.read_bytes()
        trace = self.traces.new(key)
        trace.uploaded_at = time.time()
        started = time.perf_counter()
        response = self._s3.put_object(
            Bucket=self.aws.bucket_names[BucketRole.INPUT],
            Key=key,
            Body=data,
            ContentType=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
        )
        trace.upload_s = time.perf_counter() - started
        trace.etag = response.get("ETag", "").strip('"')
        trace.version_id = response.get("VersionId", "")
        self._emit(Progress(key, "upload", f"uploaded to s3://{self.aws.bucket_names[BucketRole.INPUT]}/{key}"))
        return trace

    def wait_until_idle(self, timeout_s: float) -> bool:
        """Wait until no event, invocation or job is left in flight; False on timeout."""
        return self.activity.wait_until_idle(self._queues_empty, timeout_s)

    def collect(self, key: str) -> UploadResult:
        """The final result of an upload: what the handlers wrote to the output bucket, or why nothing was."""
        assert self._reader is not None, "start() first"
        return self._reader.collect(key)

    # -- internals ----------------------------------------------------------------------------

    def _make_function(self, handler: Handler, index: int) -> LocalFunction:
        """Execution environment `index` of `handler`, with exactly the environment InfraStack gives it."""
        assert self.log_dir is not None
        return LocalFunction(
            handler=handler,
            environment=handler_environment(handler, self.config, self.aws.bucket_names, self.aws.ledger_table),
            runtime_environment=self.function_runtime_environment(f"{handler.value}.{index}"),
            lambdas_dir=self.lambdas_dir,
            log_path=self.log_dir / f"{handler.value}.log",
            account=self.aws.account,
            region=self.aws.region,
            instance=index,
        )

    def _load_model(self) -> None:
        if self.model is not None and self.model.tiny:
            # The tiny model gains nothing from threads, and on a busy 2-core machine (speech recognition
            # runs beside it) OpenMP's spinning threads made a 0.2 s request take 5-15 s.
            import torch

            self._torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        if self.model is None:
            self.endpoint.load(None)
            return
        model_dir = self.model.path
        if model_dir is None:
            # A Hub model: the endpoint gets only code/, as a code-only archive on AWS; model_fn downloads the rest.
            self._tmp_code = tempfile.TemporaryDirectory(prefix="s2i-local-code-")
            model_dir = code_only_dir(Path(self._tmp_code.name))
        self.endpoint.load(model_dir, environment=self.model.environment(self.config))

    def _remote_transcriber(self) -> Any:
        from local.asr import RemoteTranscriber

        return RemoteTranscriber(log_path=self.log_dir / "transcribe.log" if self.log_dir else None)

    def _emit(self, progress: Progress) -> None:
        for listener in list(self._listeners):
            try:
                listener(progress)
            except Exception:
                log.exception("progress listener failed")

    def _queues_empty(self) -> bool:
        for binding in self.aws.queues:
            attributes = self._sqs.get_queue_attributes(
                QueueUrl=binding.url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            )["Attributes"]
            if any(int(value) for value in attributes.values()):
                return False
        return True


def _thread(target: Callable[[], Any], errors: list[BaseException], name: str) -> threading.Thread:
    def run() -> None:
        """Run `target`, keeping its exception for the caller."""
        try:
            target()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True, name=name)
    thread.start()
    return thread


__all__ = [
    "CDK_JSON",
    "REPO_ROOT",
    "LocalModeError",
    "LocalRuntime",
    "ModelChoice",
    "UploadResult",
    "choose_model",
    "hub_model",
    "load_config",
    "local_config",
    "model_folder",
    "tiny_model",
]
