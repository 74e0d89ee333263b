"""moto's Transcribe job table, driven by the local engine (local.transcribe_engine) instead of moto's fake progress."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlparse


def parse_media_uri(uri: str) -> tuple[str, str]:
    """Bucket and key of a Transcribe MediaFileUri (`s3://bucket/key` or an S3 https URL)."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        # Transcribe takes the key verbatim after the bucket (spaces and unicode included).
        bucket, _, key = uri[len("s3://") :].partition("/")
        return bucket, key
    if parsed.scheme == "https":
        host, path = parsed.netloc, unquote(parsed.path.lstrip("/"))
        if host.startswith("s3.") or host.startswith("s3-"):
            bucket, _, key = path.partition("/")
            return bucket, key
        if ".s3." in host or ".s3-" in host:
            return host.split(".s3", 1)[0], path
    raise ValueError(f"unsupported MediaFileUri {uri!r}")


def engine_driven_job_class() -> type:
    """moto's job model with its state driven by this engine instead of moto's state manager."""
    from moto.transcribe.models import FakeTranscriptionJob

    class EngineDrivenJob(FakeTranscriptionJob):  # type: ignore[misc,valid-type]
        """A moto transcription job whose status only the local engine changes."""

        @property
        def status(self) -> str | None:
            """The state the engine last set (moto's state manager is not consulted)."""
            return self._status

        @status.setter
        def status(self, value: str) -> None:
            """Set by the engine as the job moves on."""
            self._status = value

        def advance(self) -> None:
            """Nothing: progress comes from the engine."""
            # moto fakes progress on every GetTranscriptionJob; here the engine does the work.
            return

        def response_object(self, response_type: str) -> dict[str, Any]:
            """moto's API view of the job, plus FailureReason where Transcribe returns it."""
            response = super().response_object(response_type)
            # Amazon Transcribe returns FailureReason from GetTranscriptionJob; moto only lists it.
            if response_type == "GET" and self.failure_reason:
                response["TranscriptionJob"]["FailureReason"] = self.failure_reason
            return response

    return EngineDrivenJob


class HookedJobs(dict):  # type: ignore[type-arg]
    """moto's job table; storing a new job hands it to the engine (inside StartTranscriptionJob)."""

    def __init__(self, existing: dict[str, Any], on_new: Callable[[Any], None]) -> None:
        super().__init__(existing)
        self._on_new = on_new

    def __setitem__(self, name: str, job: Any) -> None:
        super().__setitem__(name, job)
        self._on_new(job)
