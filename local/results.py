"""What an upload ended as: its image set or error record in the output bucket, or why there is none."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from infra.pipeline import ERROR_PREFIX, IMAGE_PREFIX, BucketRole, Handler
from local.functions import Invocation
from local.tracking import Trace
from local.transcribe_engine import JobRecord

if TYPE_CHECKING:
    from local.runtime import LocalRuntime


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


class ResultReader:
    """Reads uploads' results from the running pipeline (output bucket, traces, Transcribe jobs)."""

    def __init__(self, runtime: LocalRuntime) -> None:
        """Read what `runtime` (started) holds."""
        self.runtime = runtime
        self.aws = runtime.aws
        self.engine = runtime.engine
        self.traces = runtime.traces
        self.config = runtime.config
        self._s3 = runtime.aws.client("s3")

    @property
    def log_dir(self) -> Any:
        """The handlers' log folder."""
        return self.runtime.log_dir

    def _log_path(self, handler_value: str) -> str:
        return str(self.log_dir / f"{handler_value}.log") if self.log_dir else "(no log folder)"

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
            started = call.started_at or call.received_at
            if call.inference_id:
                # Asynchronous: the request waited in the endpoint's queue; async_result wrote the result.
                timings["waiting"] = started - call.received_at
                invocations = trace.invocations_of(Handler.ASYNC_RESULT.value)
            timings["generation"] = call.finished_at - started
            timings["inference"] = call.inference_s
            if invocations:
                timings["writes"] = invocations[-1].invocation.ended_at - call.finished_at
        for record in trace.invocations:
            ends.append(record.invocation.ended_at)
        timings["total"] = max(ends) - trace.uploaded_at
        asr = timings.get("decode", 0.0) + timings.get("asr", 0.0)
        # Waiting for the GPU (cold start, other requests) is the endpoint's, not the pipeline's.
        timings["overhead"] = timings["total"] - asr - timings.get("generation", 0.0) - timings.get("waiting", 0.0)
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
