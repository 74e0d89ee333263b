"""Shared helpers for the Lambda tests: bucket names, sample audio, events, endpoint responses."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from botocore.response import StreamingBody

from infra.pipeline import BucketRole

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"
REGION = "us-east-1"
JOB_PREFIX = "s2i-"
INPUT_BUCKET = "speech-to-image-input"
TRANSCRIPT_BUCKET = "speech-to-image-transcripts"
OUTPUT_BUCKET = "speech-to-image-output"
LEDGER_TABLE = "speech-to-image-ledger"
BUCKETS = {
    BucketRole.INPUT: INPUT_BUCKET,
    BucketRole.TRANSCRIPTS: TRANSCRIPT_BUCKET,
    BucketRole.OUTPUT: OUTPUT_BUCKET,
    BucketRole.MODEL: "speech-to-image-model",
}

# The first bytes of each container the trigger accepts, padded to look like a real file.
AUDIO_HEADERS = {
    "mp3": b"ID3\x04\x00\x00\x00\x00\x00\x0f" + b"\xff\xfb\x90\x64" * 64,
    "mp3-frame": b"\xff\xfb\x90\x64" + bytes(412),
    "wav": b"RIFF" + struct.pack("<I", 4092) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16),
    "flac": b"fLaC\x00\x00\x00\x22" + bytes(34),
    "ogg": b"OggS\x00\x02" + bytes(22) + b"\x01\x1eOpusHead",
    "m4a": b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A isommp42",
    "webm": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x84webm",
    "amr": b"#!AMR\n" + bytes(32),
}


def audio_bytes(container: str, size: int = 4096) -> bytes:
    """A file of `size` bytes that starts like `container`."""
    head = AUDIO_HEADERS[container]
    return head + bytes(max(0, size - len(head)))


def s3_event(bucket: str, uploaded: Uploaded) -> dict[str, Any]:
    """The S3 ObjectCreated notification for an upload (key form-encoded, as S3 sends it)."""
    from urllib.parse import quote_plus

    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": REGION,
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {
                        "key": quote_plus(uploaded.key, safe="/"),
                        "size": uploaded.size,
                        "eTag": uploaded.etag,
                        "versionId": uploaded.version_id,
                        "sequencer": uploaded.sequencer,
                    },
                },
            }
        ]
    }


def sqs_batch(*bodies: dict[str, Any]) -> dict[str, Any]:
    """An event source mapping's batch: each body (an S3 event) in one SQS message."""
    return {
        "Records": [
            {
                "messageId": f"message-{index}",
                "receiptHandle": f"handle-{index}",
                "body": json.dumps(body),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:queue",
                "awsRegion": REGION,
            }
            for index, body in enumerate(bodies)
        ]
    }


def load_event(name: str) -> dict[str, Any]:
    """A committed event from tests/events/."""
    return json.loads((EVENTS_DIR / name).read_text(encoding="utf-8"))


def tiny_png(width: int = 2, height: int = 2) -> bytes:
    """A valid greyscale PNG, built with the standard library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([(x * 97 + y * 31) % 256 for x in range(width)]) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def endpoint_response(png: bytes, **overrides: Any) -> dict[str, Any]:
    """A stubbed InvokeEndpoint response whose JSON body follows docs/CONTRACTS.md."""
    document = {
        "images": [base64.b64encode(png).decode("ascii")],
        "parameters": {"num_inference_steps": 25, "guidance_scale": 7.5, "height": 512, "width": 512, "seed": 7},
        "nsfw_content_detected": [False],
        "prompt_truncated": False,
        "timings": {"inference_s": 1.25},
        "model": {"name": "stable-diffusion-v1-4"},
    } | overrides
    body = json.dumps(document).encode("utf-8")
    return {
        "Body": StreamingBody(io.BytesIO(body), len(body)),
        "ContentType": "application/json",
        "InvokedProductionVariant": "AllTraffic",
    }


@dataclass
class FakeLambdaContext:
    """The attributes of the Lambda runtime's context object that code may read."""

    function_name: str = "transcribe-trigger"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:transcribe-trigger"
    memory_limit_in_mb: int = 256
    aws_request_id: str = "6f6c1b5e-2c49-4b8e-9d1e-6a1f0e2f3a4b"
    log_group_name: str = "/aws/lambda/transcribe-trigger"
    log_stream_name: str = "2024/05/01/[$LATEST]0123456789abcdef"
    remaining_ms: int = 60_000

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the (pretend) timeout."""
        return self.remaining_ms


def create_ledger_table(dynamodb: Any, table: str = LEDGER_TABLE) -> None:
    """The ledger table as InfraStack defines it (key schema and the pending index), in moto."""
    from infra.pipeline import ledger_table_schema

    dynamodb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST", **ledger_table_schema())


@dataclass(frozen=True)
class Uploaded:
    """An upload as its S3 event describes it."""

    key: str
    etag: str
    version_id: str
    sequencer: str
    size: int


@dataclass
class Aws:
    """moto-backed clients, plus the StartTranscriptionJob requests the code under test made."""

    s3: Any
    transcribe: Any
    dynamodb: Any = None
    transcribe_calls: list[dict[str, Any]] = field(default_factory=list)
    sequence: int = 0

    def put_upload(self, key: str, body: bytes) -> str:
        """Upload to the input bucket; returns the bare ETag as an S3 event carries it."""
        return self.upload(key, body).etag

    def upload(self, key: str, body: bytes) -> Uploaded:
        """Upload to the (versioned) input bucket; returns what its S3 event carries, with a growing sequencer."""
        response = self.s3.put_object(Bucket=INPUT_BUCKET, Key=key, Body=body)
        self.sequence += 1
        return Uploaded(
            key=key,
            etag=response["ETag"].strip('"'),
            version_id=response["VersionId"],
            sequencer=f"{self.sequence:016X}",
            size=len(body),
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """All keys in a bucket under a prefix."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read_json(self, bucket: str, key: str) -> Any:
        """Parse a JSON object from S3."""
        return json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def job_names(self) -> list[str]:
        """Names of all Transcribe jobs moto knows."""
        return sorted(
            job["TranscriptionJobName"]
            for job in self.transcribe.list_transcription_jobs()["TranscriptionJobSummaries"]
        )


def access_denied(operation: str) -> ClientError:
    """The error S3 gives when the role may not do `operation`."""
    return ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}, "ResponseMetadata": {"HTTPStatusCode": 403}},
        operation,
    )


class FailingS3:
    """An S3 client whose chosen operations fail with AccessDenied for keys under `prefix`; the rest pass through."""

    def __init__(self, client: Any, *operations: str, prefix: str = "") -> None:
        self.client = client
        self.operations = set(operations)
        self.prefix = prefix
        self.refused: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if name not in self.operations:
            return method

        def refuse(**params: Any) -> Any:
            key = str(params.get("Key", ""))
            if key.startswith(self.prefix):
                self.refused.append((name, key))
                raise access_denied("".join(part.title() for part in name.split("_")))
            return method(**params)

        return refuse
