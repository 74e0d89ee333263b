"""The local runtime: embedded AWS, the real handlers, a local Transcribe and a local SageMaker endpoint.

    with LocalRuntime(load_config(), tiny_model()) as runtime:
        runtime.upload(Path("examples/astronaut-riding-a-horse.mp3"))
        runtime.wait_until_idle(timeout_s=300)
        result = runtime.collect("astronaut-riding-a-horse.mp3")

The wiring comes from `infra.pipeline` (routes and `handler_environment`) and the configuration from
cdk.json's context (`PipelineConfig.from_context`), like the CDK app: local mode swaps endpoints, not
handlers.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from infra.config import ConfigError, PipelineConfig
from infra.pipeline import ERROR_PREFIX, IMAGE_PREFIX, BucketRole, Handler, handler_environment
from local.aws import FAKE_CREDENTIALS, EmbeddedAws, LocalModeError, with_local_environment
from local.dispatcher import DEFAULT_MAX_RETRIES, Dispatcher
from local.endpoint import REALTIME_LIMIT_S, SageMakerRuntimeServer
from local.faults import Faults
from local.functions import Invocation, LocalFunction
from local.tracking import Activity, EndpointCall, Progress, ProgressListener, Trace, Traces
from local.transcribe_engine import JobRecord, TranscribeEngine

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
LAMBDAS_DIR = REPO_ROOT / "lambdas"
CDK_JSON = REPO_ROOT / "cdk.json"
# The tiny test model draws noise at any size: keep it small and quick, and say so.
TINY_IMAGE_SIZE = 128
TINY_STEPS = 4
# Files every diffusers Stable Diffusion v1.x folder has.


def load_config(cdk_json: Path = CDK_JSON, *, image_overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """The CDK app's configuration, built from cdk.json's "context" exactly as infra/app.py does.

    `image_overrides` replace keys of the "imageParameters" context, so they are checked by the same rules.
    """
    try:
        context = dict(json.loads(cdk_json.read_text(encoding="utf-8")).get("context", {}))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read the CDK context from {cdk_json}: {error}") from None
    if image_overrides:
        context["imageParameters"] = {**(context.get("imageParameters") or {}), **image_overrides}
    return PipelineConfig.from_context(context.get)


@dataclass(frozen=True)
class ModelChoice:
    """The Stable Diffusion folder the local endpoint serves."""

    path: Path
    tiny: bool


def tiny_model() -> ModelChoice:
    """The tiny random-weight test model (built once into .cache/tiny-sd)."""
    from sd_tools.tiny_model import ensure_tiny_model

    return ModelChoice(path=ensure_tiny_model(), tiny=True)


def model_folder(path: Path) -> ModelChoice:
    """A real diffusers SD v1.x folder; `ValueError` says what is missing."""
    from sd_tools.package_model import PackagingError, validate_model_dir

    path = Path(path).expanduser()
    # The same check `make upload-model` applies: what passes here also deploys.
    try:
        validate_model_dir(path)
    except PackagingError as error:
        raise ValueError(
            f"--model-dir: {error} (e.g. `huggingface-cli download CompVis/stable-diffusion-v1-4 --local-dir DIR`)"
        ) from None
    return ModelChoice(path=path.resolve(), tiny=False)


def local_config(
    config: PipelineConfig, model: ModelChoice, *, size: int | None = None, steps: int | None = None
) -> PipelineConfig:
    """The configuration local mode runs with: image parameters made small for the tiny model or as asked."""
    image = config.image
    if model.tiny:
        image = replace(image, height=TINY_IMAGE_SIZE, width=TINY_IMAGE_SIZE, num_inference_steps=TINY_STEPS)
    if size is not None:
        image = replace(image, height=size, width=size)
    if steps is not None:
        image = replace(image, num_inference_steps=steps)
    return replace(config, image=image)


@dataclass(frozen=True)
class InvocationRecord:
    """One handler invocation seen for an upload, with the event it was given."""

    handler: str
    invocation: Invocation
    final: bool
    event: dict[str, Any] = field(default_factory=dict)

    @property
    def outcomes(self) -> list[str]:
        """The per-record outcomes the handler returned (e.g. "started", "duplicate", "superseded")."""
        results = (self.invocation.result or {}).get("results", []) if self.invocation.ok else []
        return [str(item.get("outcome")) for item in results if isinstance(item, dict)]


@dataclass
class UploadResult:
    """The final result of one upload: an image set or an error record, with a timing breakdown."""

    key: str
    status: str  # "image" or "error"
    transcript: str | None = None
    metadata: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    # Where the error came from: the output bucket (a handler wrote it) or local mode's own report.
    error_origin: str = ""
    png: bytes | None = None
    html: bytes | None = None
    timings: dict[str, float] = field(default_factory=dict)
    job: JobRecord | None = None
    handler_errors: list[str] = field(default_factory=list)
    # Set when the pipeline recognised the upload as a repeat (same key and content) and skipped it.
    repeat: bool = False
    # Set when the output bucket holds both an image set and an error record for the key.
    conflict: bool = False


class LocalRuntime:
    """Starts and stops everything; one per process (moto keeps its state per process)."""

    def __init__(
        self,
        config: PipelineConfig,
        model: ModelChoice | None,
        *,
        lambdas_dir: Path = LAMBDAS_DIR,
        log_dir: Path | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transcriber_factory: Callable[[], Any] | None = None,
    ) -> None:
        config = with_local_environment(config)
        self.config = config
        self.model = model
        self.lambdas_dir = Path(lambdas_dir)
        self.max_retries = max_retries
        self.activity = Activity()
        self.traces = Traces()
        self.faults = Faults()
        self.aws = EmbeddedAws(config, self.faults)
        self.engine = TranscribeEngine(
            self.aws, self.activity, transcriber_factory or self._remote_transcriber, self._emit
        )
        self.endpoint = SageMakerRuntimeServer(
            config.endpoint_name,
            self.aws.account,
            self.aws.region,
            on_call=self._endpoint_finished,
            on_received=self._endpoint_received,
            faults=self.faults,
        )
        self.functions: dict[Handler, LocalFunction] = {}
        self.dispatcher: Dispatcher | None = None
        self.startup_s = 0.0
        self.started = False
        self._tmp_logs: tempfile.TemporaryDirectory[str] | None = None
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._listeners: list[ProgressListener] = []
        self._current: dict[Handler, str] = {}
        self._s3: Any = None
        self._sqs: Any = None
        self._torch_threads: int | None = None

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
            self.endpoint.start()
            runtime_environment = self._runtime_environment()
            for handler in Handler:
                function = LocalFunction(
                    handler=handler,
                    environment=handler_environment(handler, self.config, self.aws.bucket_names),
                    runtime_environment=runtime_environment,
                    lambdas_dir=self.lambdas_dir,
                    log_path=self.log_dir / f"{handler.value}.log",
                    account=self.aws.account,
                    region=self.aws.region,
                )
                function.start()
                self.functions[handler] = function
            if self.model is not None:
                what = "the tiny random-weight test model" if self.model.tiny else str(self.model.path)
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
            self.dispatcher = Dispatcher(self.aws, self.functions, self.activity, self, self.max_retries)
            self.dispatcher.start()
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
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None
        self.engine.stop()
        for function in self.functions.values():
            function.stop()
        self.functions.clear()
        self.endpoint.stop()
        self.aws.stop()
        if self._torch_threads is not None:
            import torch

            torch.set_num_threads(self._torch_threads)
            self._torch_threads = None
        if self._tmp_logs is not None:
            self._tmp_logs.cleanup()
            self._tmp_logs = None
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

    def deliver(self, handler: Handler, event: dict[str, Any]) -> None:
        """Send an event to a handler through its queue, as S3 or EventBridge would (again, or out of order)."""
        self._sqs.send_message(QueueUrl=self.aws.queue_for(handler).url, MessageBody=json.dumps(event))

    def dead_letters(self, handler: Handler) -> int:
        """How many failed events wait in the handler's dead-letter queue."""
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=self.aws.dead_letter_queues[handler],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return sum(int(value) for value in attributes.values())

    def replay_dead_letters(self, handler: Handler | None = None) -> list[Any]:
        """Send the dead-lettered events back through the pipeline (all handlers, or one): `make replay`, locally.

        The same code as the AWS command (`ops.replay_dead_letters`); only "invoke" differs: the event
        goes to the function's queue, as an asynchronous invocation would.
        """
        from ops.replay_dead_letters import replay_dead_letters

        by_arn = {function.arn: name for name, function in self.functions.items()}

        def invoke(function_arn: str, payload: dict[str, Any]) -> None:
            """Queue the event for the local function with this ARN."""
            target = by_arn.get(function_arn)
            if target is None:
                raise LookupError(f"no local function {function_arn}; known: {sorted(by_arn)}")
            self.deliver(target, payload)

        handlers = [handler] if handler is not None else list(Handler)
        # moto answers ReceiveMessage exactly, so no wait is needed to see every message (wait_s=0).
        return [
            replay_dead_letters(self._sqs, self.aws.dead_letter_queues[name], invoke, wait_s=0) for name in handlers
        ]

    def function_environment(self, handler: Handler) -> dict[str, str]:
        """The handler's own variables, exactly as `infra.pipeline.handler_environment` gives them."""
        return dict(self.functions[handler].environment)

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
        self._emit(Progress(key, "upload", f"uploaded to s3://{self.aws.bucket_names[BucketRole.INPUT]}/{key}"))
        return trace

    def wait_until_idle(self, timeout_s: float) -> bool:
        """Wait until no event, invocation or job is left in flight; False on timeout."""
        return self.activity.wait_until_idle(self._queues_empty, timeout_s)

    def collect(self, key: str) -> UploadResult:
        """The final result of an upload: what the handlers wrote to the output bucket, or why nothing was."""
        trace = self.traces.get(key)
        job = self.engine.record_for_source(self.aws.bucket_names[BucketRole.INPUT], key)
        failures = [
            f"{item.handler}: {item.invocation.error_summary}"
            for item in trace.invocations
            if not item.invocation.ok and item.final
        ]
        metadata, metadata_time = self._read_json(f"{IMAGE_PREFIX}{key}.json")
        error, error_time = self._read_json(f"{ERROR_PREFIX}{key}.json")
        result = UploadResult(key=key, status="error", job=job, handler_errors=failures, repeat=_is_repeat(trace))
        # Both at once breaks the pipeline's promise of one final result per upload: say so.
        result.conflict = metadata is not None and error is not None
        if metadata is not None and (error is None or metadata_time >= error_time):
            result.status = "image"
            result.metadata = metadata
            result.transcript = metadata.get("transcript")
            result.png = self._read_bytes(f"{IMAGE_PREFIX}{key}.png")
            result.html = self._read_bytes(f"{IMAGE_PREFIX}{key}.html")
        elif error is not None:
            result.error, result.error_origin = error, "output bucket"
        elif job is not None and job.status == "FAILED" and not failures:
            # transcribe_failed should have recorded this: report the job, and that its record is missing.
            result.error, result.error_origin = (
                self._local_error(
                    key,
                    "transcribe",
                    "transcription-failed",
                    job.failure_reason,
                    "upload a playable recording in one of: " + ", ".join(self.config.media_formats),
                    {"job_name": job.name, "job_status": job.status},
                ),
                "transcribe job",
            )
        elif failures:
            handler = next(item.handler for item in trace.invocations if not item.invocation.ok and item.final)
            result.error, result.error_origin = (
                self._local_error(
                    key,
                    {Handler.TRANSCRIBE_TRIGGER.value: "validate", Handler.TRANSCRIBE_FAILED.value: "transcribe"}.get(
                        handler, "generate"
                    ),
                    "handler-error",
                    "; ".join(failures),
                    f"see the handler's log {self._log_path(handler)} and fix the cause",
                    {"attempts": len([i for i in trace.invocations if i.handler == handler])},
                ),
                "handler",
            )
        else:
            result.error, result.error_origin = (
                self._local_error(
                    key,
                    "validate",
                    "no-result",
                    "the upload produced neither an image nor an error record",
                    "check the handlers' logs in " + str(self.log_dir),
                    {},
                ),
                "local mode",
            )
        if result.transcript is None and job is not None and job.status == "COMPLETED":
            result.transcript = job.transcript
        result.timings = self._timings(trace, job, metadata if result.status == "image" else None)
        return result

    def read_notification_configuration(self, role: BucketRole) -> dict[str, Any]:
        """The bucket's notification configuration as the running S3 reports it."""
        response = self._s3.get_bucket_notification_configuration(Bucket=self.aws.bucket_names[role])
        response.pop("ResponseMetadata", None)
        return response

    # -- observer of the dispatcher, the engine and the endpoint ------------------------------

    def before_invoke(self, handler: Handler, event: dict[str, Any]) -> None:
        """Remember which upload the function is working on (the endpoint call is attributed to it)."""
        sources = self._sources(event)
        if sources:
            self._current[handler] = sources[0]
        stage = {Handler.TRANSCRIBE_TRIGGER: "trigger", Handler.TRANSCRIBE_FAILED: "record-failure"}.get(
            handler, "invoke"
        )
        for key in sources:
            self._emit(Progress(key, stage, f"{self.functions[handler].name} invoked"))

    def after_invoke(self, handler: Handler, event: dict[str, Any], invocation: Invocation, final: bool) -> None:
        """Record the invocation in the upload's trace and report failures."""
        self._current.pop(handler, None)
        for key in self._sources(event):
            self.traces.get(key).invocations.append(InvocationRecord(handler.value, invocation, final, event))
            if not invocation.ok:
                retry = "" if final else f"; retrying ({invocation.attempt}/{self.max_retries})"
                self._emit(
                    Progress(
                        key,
                        "handler-error",
                        f"{self.functions[handler].name} raised {invocation.error_summary}{retry}",
                        {"error": invocation.error},
                    )
                )

    def _endpoint_received(self, call: EndpointCall, request: dict[str, Any]) -> None:
        key = self._current.get(Handler.INVOKE_SD, "")
        parameters = request.get("parameters") or {}
        size = f"{parameters.get('width', '?')}x{parameters.get('height', '?')}"
        steps = parameters.get("num_inference_steps", "?")
        self._emit(Progress(key, "generate", f"generating {size}, {steps} steps: {request.get('inputs', '')!r}"))

    def _endpoint_finished(self, call: EndpointCall) -> None:
        key = self._current.get(Handler.INVOKE_SD, "")
        if key:
            self.traces.get(key).endpoint_calls.append(call)
        seconds = call.finished_at - call.received_at
        note = ""
        if seconds > REALTIME_LIMIT_S:
            note = f" (over SageMaker's {REALTIME_LIMIT_S:.0f} s real-time limit: a deployed endpoint would time out)"
        self._emit(Progress(key, "generated", f"endpoint answered {call.status} in {seconds:.2f} s{note}"))

    # -- internals ----------------------------------------------------------------------------

    def _load_model(self) -> None:
        if self.model is not None and self.model.tiny:
            # The tiny model gains nothing from threads, and on a busy 2-core machine (speech recognition
            # runs beside it) OpenMP's spinning threads made a 0.2 s request take 5-15 s.
            import torch

            self._torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        self.endpoint.load(self.model.path if self.model is not None else None)

    def _log_path(self, handler_value: str) -> str:
        return str(self.log_dir / f"{handler_value}.log") if self.log_dir else "(no log folder)"

    def _remote_transcriber(self) -> Any:
        from local.asr import RemoteTranscriber

        return RemoteTranscriber(log_path=self.log_dir / "transcribe.log" if self.log_dir else None)

    def _emit(self, progress: Progress) -> None:
        for listener in list(self._listeners):
            try:
                listener(progress)
            except Exception:
                log.exception("progress listener failed")

    def _runtime_environment(self) -> dict[str, str]:
        return {
            **FAKE_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.aws.endpoint_url,
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": self.endpoint.url,
            # No shared config or credentials file can redirect or authorise anything real.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def _sources(self, event: dict[str, Any]) -> list[str]:
        """The uploads (input keys) an event is about."""
        input_bucket = self.aws.bucket_names[BucketRole.INPUT]
        detail = event.get("detail")
        if isinstance(detail, dict):
            # A Transcribe job state change: the job knows its media.
            job = self.engine.jobs.get(str(detail.get("TranscriptionJobName", "")))
            return [job.source_key] if job is not None else []
        keys = []
        for record in event.get("Records", []):
            s3 = record.get("s3", {})
            bucket = s3.get("bucket", {}).get("name", "")
            key = unquote_plus(s3.get("object", {}).get("key", ""))
            if bucket != input_bucket:
                job = self.engine.record_for_output(bucket, key)
                key = job.source_key if job is not None else key
            keys.append(key)
        return keys

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

    def _read_json(self, key: str) -> tuple[dict[str, Any] | None, float]:
        try:
            response = self._s3.get_object(Bucket=self.aws.bucket_names[BucketRole.OUTPUT], Key=key)
        except self._s3.exceptions.NoSuchKey:
            return None, 0.0
        try:
            document = json.loads(response["Body"].read())
        except ValueError:
            return None, 0.0
        return document, response["LastModified"].timestamp()

    def _read_bytes(self, key: str) -> bytes | None:
        try:
            return self._s3.get_object(Bucket=self.aws.bucket_names[BucketRole.OUTPUT], Key=key)["Body"].read()
        except self._s3.exceptions.NoSuchKey:
            return None

    def _local_error(
        self, key: str, stage: str, code: str, reason: str, action: str, details: dict[str, Any]
    ) -> dict[str, Any]:
        """An error in the shape of docs/CONTRACTS.md's error record, for failures no handler recorded."""
        return {
            "status": "error",
            "source": {"bucket": self.aws.bucket_names[BucketRole.INPUT], "key": key},
            "stage": stage,
            "error": code,
            "reason": reason,
            "action": action,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "details": {**details, "recorded_by": "local mode (no handler wrote an error record)"},
        }

    def _timings(self, trace: Trace, job: JobRecord | None, metadata: dict[str, Any] | None) -> dict[str, float]:
        """Seconds per stage for one upload; the pipeline's own overhead is what is not ASR or generation."""
        timings: dict[str, float] = {"upload": trace.upload_s}
        uploaded = trace.uploaded_at + trace.upload_s
        ends = [uploaded]
        if job is not None and job.started_at:
            timings["to_transcribe"] = job.started_at - uploaded
            timings["fetch_media"] = job.fetch_s
            timings["decode"] = job.decode_s
            timings["asr"] = job.asr_s
            ends.append(job.finished_at or job.started_at)
        calls = [call for call in trace.endpoint_calls if call.finished_at]
        invocations = trace.invocations_of(Handler.INVOKE_SD.value)
        if calls and job is not None and job.asr_done_at:
            call = calls[-1]
            timings["transcript_to_endpoint"] = call.received_at - job.asr_done_at
            timings["generation"] = call.finished_at - call.received_at
            timings["inference"] = call.inference_s
            if invocations:
                timings["writes"] = invocations[-1].invocation.ended_at - call.finished_at
        for record in trace.invocations:
            ends.append(record.invocation.ended_at)
        timings["total"] = max(ends) - trace.uploaded_at
        asr = timings.get("decode", 0.0) + timings.get("asr", 0.0)
        timings["overhead"] = timings["total"] - asr - timings.get("generation", 0.0)
        if metadata:
            handler_timings = metadata.get("timings") or {}
            for name in ("transcript_read_s", "endpoint_call_s", "writes_s"):
                if isinstance(handler_timings.get(name), int | float):
                    timings[f"handler_{name.removesuffix('_s')}"] = float(handler_timings[name])
        return {name: round(value, 4) for name, value in timings.items()}


def _is_repeat(trace: Trace) -> bool:
    """True when transcribe_trigger reported this upload as a repeat of one it already started."""
    for record in trace.invocations_of(Handler.TRANSCRIBE_TRIGGER.value):
        outcomes = record.outcomes  # empty for a failed invocation
        if outcomes and all(outcome == "duplicate" for outcome in outcomes):
            return True
    return False


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
    "LocalModeError",
    "LocalRuntime",
    "ModelChoice",
    "UploadResult",
    "load_config",
    "local_config",
    "model_folder",
    "tiny_model",
]
