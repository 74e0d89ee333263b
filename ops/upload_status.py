"""Where one upload is in the deployed pipeline: its ledger item, read as a person would say it.

The ledger item (keyed by the upload's key) names the upload that is current for the key and its stage;
until transcribe_trigger claims the upload, the item is absent or still about an earlier upload of the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from infra.pipeline import LEDGER_PARTITION_KEY

# The ledger's stages (lambdas/pipeline_common/ledger.py, docs/CONTRACTS.md) in the words `local run` and the
# web page use; "uploaded" is the time before the pipeline has claimed the upload.
STAGE_WORDS = {
    "uploaded": "uploaded",
    "received": "received",
    "transcribing": "transcribing",
    "waiting": "waiting for the GPU",
    "generating": "generating",
    "done": "done",
    "failed": "failed",
}
FINAL_STAGES = ("done", "failed", "superseded")


class TrackedUpload(Protocol):
    """The upload being followed: its key and the version (or ETag) the put returned."""

    key: str
    version_id: str | None
    etag: str


@dataclass(frozen=True)
class UploadStatus:
    """An upload's stage; once final, what its result is (`image`/`error` and the result's key)."""

    stage: str
    kind: str | None = None
    result_key: str = ""
    # Set when the command itself must explain the outcome (the key was taken by a newer upload).
    local_error: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        """True when nothing more will happen to this upload."""
        return self.stage in FINAL_STAGES


def read_status(dynamodb: Any, s3: Any, table: str, input_bucket: str, upload: TrackedUpload) -> UploadStatus:
    """The upload's status now: its ledger item if it is about this upload, else whether it is still pending."""
    item = dynamodb.get_item(TableName=table, Key={LEDGER_PARTITION_KEY: {"S": upload.key}}, ConsistentRead=True).get(
        "Item"
    )
    if item is not None and _is_about(item, upload):
        stage = _text(item, "stage")
        result = {name: value.get("S", "") for name, value in item.get("result", {}).get("M", {}).items()}
        if stage in ("done", "failed"):
            return UploadStatus(stage, kind=result.get("kind"), result_key=result.get("key", ""))
        return UploadStatus(stage or "received")
    # Not claimed yet, unless someone uploaded the same key again since: then this upload never gets a result.
    current = s3.head_object(Bucket=input_bucket, Key=upload.key).get("VersionId")
    if upload.version_id and current and current != upload.version_id:
        return UploadStatus(
            "superseded",
            kind="superseded",
            local_error={
                "status": "error",
                "stage": "upload",
                "error": "superseded",
                "reason": f"a newer upload of {upload.key} replaced this one before it had a result; the pipeline "
                "makes one result per key, for its newest upload",
                "action": "give different recordings different file names, or wait for one result before uploading "
                "the same name again",
            },
        )
    return UploadStatus("uploaded")


def starting_from_zero(sagemaker: Any, endpoint_name: str | None) -> bool:
    """True when the async endpoint has no instance running (its first request waits for one to start)."""
    if sagemaker is None or not endpoint_name:
        return False
    try:
        variants = sagemaker.describe_endpoint(EndpointName=endpoint_name).get("ProductionVariants", [])
    except (BotoCoreError, ClientError):
        return False  # only a nicer word is lost: no permission, or no endpoint yet
    return bool(variants) and all(variant.get("CurrentInstanceCount", 1) == 0 for variant in variants)


def _is_about(item: dict[str, Any], upload: TrackedUpload) -> bool:
    """Whether the ledger item is about this upload (its version id; its ETag in an unversioned bucket)."""
    if upload.version_id:
        return _text(item, "upload_id") == upload.version_id
    return _text(item, "etag").strip('"') == upload.etag


def _text(item: dict[str, Any], name: str) -> str:
    return str(item.get(name, {}).get("S", ""))
