"""A local Amazon Transcribe: runs the jobs that handlers start through the (moto) Transcribe API.

moto tracks a job's state but writes no transcript. This engine hooks moto's in-process Transcribe
backend: every job a handler starts is queued here, its media is read from the embedded S3 (the job's
MediaFileUri), `local.transcriber.Transcriber` recognises the speech, the Transcribe output JSON is
written to the job's OutputBucketName/OutputKey (whose S3 notification triggers the next handler, as on
AWS), and the job ends COMPLETED, or FAILED with a FailureReason. Every final state is published as
the EventBridge "Transcribe Job State Change" event on the embedded EventBridge, whose rule (the same
pattern as InfraStack's) delivers FAILED jobs to transcribe_failed; `on_state_change` listeners get
it too. If the recogniser's process dies mid-job, a fresh one is started and the job tried once more.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from botocore.exceptions import ClientError

from local.aws import EmbeddedAws
from local.tracking import Activity, Progress
from local.transcribe_jobs import HookedJobs, engine_driven_job_class, parse_media_uri
from local.transcriber import TranscriberCrashed

log = logging.getLogger(__name__)

JobStateListener = Callable[[dict[str, Any]], None]


@dataclass
class JobRecord:
    """What the engine knows about one transcription job (timings are wall-clock seconds)."""

    name: str
    media_uri: str
    source_bucket: str
    source_key: str
    output_bucket: str
    output_key: str
    status: str = "QUEUED"
    failure_reason: str = ""
    queued_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    fetch_s: float = 0.0
    decode_s: float = 0.0
    asr_s: float = 0.0
    write_s: float = 0.0
    asr_done_at: float = 0.0
    transcript: str = ""
    audio_duration_s: float = 0.0
    speech_detected: bool = False
    mean_confidence: float | None = None


def _now() -> datetime:
    return datetime.now(UTC)


class TranscribeEngine:
    """Runs transcription jobs one at a time on a worker thread (the recogniser is loaded once)."""

    def __init__(
        self,
        aws: EmbeddedAws,
        activity: Activity,
        transcriber_factory: Callable[[], Any],
        progress: Callable[[Progress], None],
    ) -> None:
        self.aws = aws
        self.activity = activity
        self.progress = progress
        self.jobs: dict[str, JobRecord] = {}
        self.load_s = 0.0
        self._transcriber_factory = transcriber_factory
        self._transcriber: Any = None
        self._listeners: list[JobStateListener] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._s3: Any = None
        self._events: Any = None
        self._lock = threading.Lock()
        self.restarts = 0

    def on_state_change(self, listener: JobStateListener) -> None:
        """Call `listener` with the EventBridge "Transcribe Job State Change" event of every final state."""
        self._listeners.append(listener)

    def load(self) -> None:
        """Load the speech recogniser (faster-whisper in its own process; about a second)."""
        started = time.perf_counter()
        self._transcriber = self._transcriber_factory()
        self.load_s = time.perf_counter() - started

    def start(self) -> None:
        """Hook moto's Transcribe backend and start the worker thread."""
        from local.transcriber import AudioDecodeError  # noqa: F401 - fail at start-up if the module is missing

        self._job_class = engine_driven_job_class()
        self._s3 = self.aws.client("s3")
        self._events = self.aws.client("events")
        backend = self.aws.backend("transcribe")
        backend.transcriptions = HookedJobs(backend.transcriptions, self._accept)
        self._thread = threading.Thread(target=self._work, daemon=True, name="local-transcribe")
        self._thread.start()

    def stop(self) -> None:
        """Finish the job in progress, then stop the worker thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=60)
            self._thread = None
        close = getattr(self._transcriber, "close", None)
        if close is not None:
            close()
        self._transcriber = None

    def record_for_output(self, bucket: str, key: str) -> JobRecord | None:
        """The job that wrote this transcript object, if the engine wrote it."""
        return self._latest(lambda record: (record.output_bucket, record.output_key) == (bucket, key))

    def record_for_source(self, bucket: str, key: str) -> JobRecord | None:
        """The latest job that transcribed this media object."""
        return self._latest(lambda record: (record.source_bucket, record.source_key) == (bucket, key))

    def _latest(self, matches: Callable[[JobRecord], bool]) -> JobRecord | None:
        with self._lock:
            return next((record for record in reversed(self.jobs.values()) if matches(record)), None)

    # Runs in moto's request thread, inside StartTranscriptionJob, before the handler gets its answer:
    # so the job counts as in flight before the handler invocation that started it is finished.
    def _accept(self, job: Any) -> None:
        job.__class__ = self._job_class
        job.status = "QUEUED"
        name = job.transcription_job_name
        uri = (job.media or {}).get("MediaFileUri", "")
        try:
            bucket, key = parse_media_uri(uri)
        except ValueError:
            bucket, key = "", ""
        output_key = job.output_key or f"{name}.json"
        if output_key.endswith("/"):
            output_key += f"{name}.json"
        record = JobRecord(
            name=name,
            media_uri=uri,
            source_bucket=bucket,
            source_key=key,
            output_bucket=job._output_bucket_name or "",
            output_key=output_key,
            queued_at=time.time(),
        )
        with self._lock:
            self.jobs[name] = record
        self.activity.begin()
        self._queue.put(name)

    def _work(self) -> None:
        while (name := self._queue.get()) is not None:
            try:
                self._run(name)
            except Exception:
                log.exception("local Transcribe engine: job %s failed unexpectedly", name)
            finally:
                self.activity.end()

    def _run(self, name: str) -> None:
        record = self.jobs[name]
        job = self.aws.backend("transcribe").transcriptions.get(name)
        if job is None:  # deleted before it started
            return
        record.started_at = time.time()
        job.status = "IN_PROGRESS"
        job.start_time = _now()
        self.progress(Progress(record.source_key, "transcribe", f"transcribing (job {name})"))
        try:
            self._transcribe(record, job)
        except Exception as error:
            log.error("job %s: %s", name, traceback.format_exc())
            self._finish(record, job, "FAILED", f"Internal failure in the local Transcribe engine: {error}")

    def _transcribe(self, record: JobRecord, job: Any) -> None:
        from local.transcriber import AudioDecodeError, to_transcribe_json

        if not record.source_bucket:
            self._finish(record, job, "FAILED", f"The S3 URI that you provided is invalid: {record.media_uri!r}.")
            return
        started = time.perf_counter()
        try:
            data = self._s3.get_object(Bucket=record.source_bucket, Key=record.source_key)["Body"].read()
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            self._finish(
                record,
                job,
                "FAILED",
                f"The S3 URI that you provided can't be accessed ({code}): {record.media_uri}. "
                "Make sure that the object exists and try your request again.",
            )
            return
        record.fetch_s = time.perf_counter() - started
        media_format = (job.media_format or PurePosixPath(record.source_key).suffix.lstrip(".")).lower()
        if not job.media_format:
            job.media_format = media_format
        identify = bool(job.identify_language or job.identify_multiple_languages)
        requested = None if identify else job.language_code or "en-US"
        options = tuple(job.language_options or ())
        try:
            transcription = self._recognise(record, data, media_format, requested, options)
        except TranscriberCrashed as error:
            self._finish(
                record,
                job,
                "FAILED",
                f"Internal failure: the speech recogniser crashed twice while transcribing this file ({error}).",
            )
            return
        except AudioDecodeError as error:
            self._finish(
                record,
                job,
                "FAILED",
                f"The media file couldn't be decoded as {media_format} audio: {error}. "
                "Check that the file is a valid recording in a supported format and try your request again.",
            )
            return
        self._set_language(record, job, transcription, requested)
        record.asr_done_at = time.time()
        record.decode_s = float(getattr(transcription, "decode_s", 0.0) or 0.0)
        record.asr_s = float(getattr(transcription, "asr_s", 0.0) or 0.0)
        record.transcript = transcription.text
        record.audio_duration_s = float(getattr(transcription, "duration_s", 0.0) or 0.0)
        record.speech_detected = bool(getattr(transcription, "speech_detected", bool(transcription.text)))
        record.mean_confidence = getattr(transcription, "mean_confidence", None)
        document = to_transcribe_json(record.name, self.aws.account, transcription)
        # Reported before the write: the write triggers invoke_sd at once, and progress should read in order.
        self.progress(
            Progress(
                record.source_key,
                "transcribed",
                f"transcript: {record.transcript!r}" if record.transcript else "no speech recognised",
                {"transcript": record.transcript, "decode_s": record.decode_s, "asr_s": record.asr_s},
            )
        )
        body = json.dumps(document).encode("utf-8")
        if self.aws.faults.take("transcript", key=record.output_key) is not None:
            body = body[: len(body) // 2]  # cut off mid-document, as a broken writer would leave it
        started = time.perf_counter()
        try:
            self._s3.put_object(
                Bucket=record.output_bucket,
                Key=record.output_key,
                Body=body,
                ContentType="application/json",
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            self._finish(
                record,
                job,
                "FAILED",
                f"The output location s3://{record.output_bucket}/{record.output_key} can't be written ({code}).",
            )
            return
        record.write_s = time.perf_counter() - started
        job.media_sample_rate_hertz = job.media_sample_rate_hertz or 16000
        job.transcript = {
            "TranscriptFileUri": f"https://s3.{self.aws.region}.amazonaws.com/{record.output_bucket}/{record.output_key}"
        }
        self._finish(record, job, "COMPLETED", "")

    def _set_language(self, record: JobRecord, job: Any, transcription: Any, requested: str | None) -> None:
        """Report the language on the job as Transcribe does; say so when the model could not hear the one asked."""
        heard = getattr(transcription, "language_code", requested) or "en-US"
        if requested is None:
            scores = dict(getattr(transcription, "language_identification", ()) or ())
            job.language_code = heard
            job.identified_language_score = float(scores.get(heard, 1.0))
        elif heard != requested:
            self.progress(
                Progress(
                    record.source_key,
                    "transcribe",
                    f"{requested} requested, but the local speech model knows only English: transcribed as {heard} "
                    "(pass a multilingual model with --asr-model, e.g. small)",
                )
            )

    def _recognise(
        self, record: JobRecord, data: bytes, media_format: str, language: str | None, options: tuple[str, ...]
    ) -> Any:
        """Run the recogniser; if its process dies, start a fresh one and try once more (a second crash raises)."""
        try:
            return self._recognise_once(record, data, media_format, language, options)
        except TranscriberCrashed as error:
            log.error("job %s: the recogniser crashed: %s", record.name, error)
            self.progress(Progress(record.source_key, "transcribe", "the speech recogniser crashed; restarting it"))
            self._restart_transcriber()
        try:
            return self._recognise_once(record, data, media_format, language, options)
        except TranscriberCrashed:
            self._restart_transcriber()  # for the jobs after this one
            raise

    def _recognise_once(
        self, record: JobRecord, data: bytes, media_format: str, language: str | None, options: tuple[str, ...]
    ) -> Any:
        if self.aws.faults.take("transcriber", key=record.source_key) is not None:
            kill = getattr(self._transcriber, "kill", None)
            if kill is None:
                raise TranscriberCrashed("a crash injected by local mode")
            kill()
        return self._transcriber.transcribe_bytes(data, media_format, language, options)

    def _restart_transcriber(self) -> None:
        close = getattr(self._transcriber, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("closing the crashed recogniser failed")
        self._transcriber = self._transcriber_factory()
        self.restarts += 1

    def _finish(self, record: JobRecord, job: Any, status: str, reason: str) -> None:
        record.status = status
        record.failure_reason = reason
        record.finished_at = time.time()
        job.status = status
        job.completion_time = _now()
        if reason:
            job.failure_reason = reason
            self.progress(Progress(record.source_key, "transcribe-failed", f"transcription job FAILED: {reason}"))
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Transcribe Job State Change",
            "source": "aws.transcribe",
            "account": self.aws.account,
            "time": _now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": self.aws.region,
            "resources": [],
            "detail": {"TranscriptionJobName": record.name, "TranscriptionJobStatus": status},
        }
        try:
            # As Transcribe does on AWS: EventBridge's rule decides which handler (if any) hears about it.
            self._events.put_events(
                Entries=[
                    {
                        "Source": event["source"],
                        "DetailType": event["detail-type"],
                        "Detail": json.dumps(event["detail"]),
                        "Resources": [],
                    }
                ]
            )
        except Exception:
            log.exception("publishing the job state change of %s failed", record.name)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("job state listener failed for %s", record.name)
