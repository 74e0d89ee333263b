"""Where an asynchronous endpoint request is staged, and how its notification leads back to the upload.

`<ASYNC_REQUEST_PREFIX><escaped source key>/<digest>.json` in the transcripts bucket is the request SageMaker
reads (`{"inputs", "parameters"}`, the real-time body); `<digest>.context.json` beside it is the `ImageRequest`
the result stage renders from. The escaped key (`keys.escape_key`) gives back the source key; the digest,
sha256 of key and upload id, says which upload the request was for, compared against the ledger's current one.
The same digest is the request's InferenceId. docs/CONTRACTS.md has the layout.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any

from pipeline_common.keys import MAX_S3_KEY_BYTES, KeyMappingError, escape_key, unescape_key

# 40 hex digits (160 bits) never collide among a key's uploads, and fit InferenceId's 64 characters.
DIGEST_CHARS = 40
REQUEST_SUFFIX = ".json"
CONTEXT_SUFFIX = ".context.json"
logger = logging.getLogger(__name__)
_NAME = re.compile(rf"([0-9a-f]{{{DIGEST_CHARS}}})(\.context)?\.json")


def upload_digest(source_key: str, upload_id: str) -> str:
    """The upload's digest: `DIGEST_CHARS` hex of sha256(key + "\\n" + upload id); also its InferenceId."""
    return hashlib.sha256(f"{source_key}\n{upload_id}".encode()).hexdigest()[:DIGEST_CHARS]


@dataclass(frozen=True)
class StagedRequest:
    """The objects of one upload's asynchronous request in the transcripts bucket."""

    bucket: str
    request_key: str
    context_key: str
    source_key: str
    digest: str

    @property
    def input_location(self) -> str:
        """The request as InvokeEndpointAsync's InputLocation (and the notification's inputLocation)."""
        return f"s3://{self.bucket}/{self.request_key}"

    @property
    def inference_id(self) -> str:
        """The deterministic InferenceId (1-64 characters): a repeat of the same upload sends the same one."""
        return self.digest

    def is_for(self, upload_id: str) -> bool:
        """True when this request was staged for the upload `upload_id` of its key."""
        return upload_digest(self.source_key, upload_id) == self.digest


def staged_request(bucket: str, prefix: str, source_key: str, upload_id: str) -> StagedRequest:
    """Where the request for this upload goes; `KeyMappingError` when the key leaves no room for it in S3."""
    digest = upload_digest(source_key, upload_id)
    base = f"{prefix}{escape_key(source_key)}/{digest}"
    context_key = f"{base}{CONTEXT_SUFFIX}"
    if len(context_key.encode("utf-8")) > MAX_S3_KEY_BYTES:
        raise KeyMappingError(
            f"the asynchronous request key would be {len(context_key)} characters; S3 allows {MAX_S3_KEY_BYTES}"
        )
    return StagedRequest(bucket, f"{base}{REQUEST_SUFFIX}", context_key, source_key, digest)


def parse_input_location(location: str, *, bucket: str, prefix: str) -> StagedRequest:
    """The staged request an `s3://` inputLocation names; `KeyMappingError` when it is not one of this layout."""
    head = f"s3://{bucket}/{prefix}"
    if not isinstance(location, str) or not location.startswith(head):
        raise KeyMappingError(f"{location!r} is not a request under s3://{bucket}/{prefix}")
    escaped, _, name = location[len(head) :].rpartition("/")
    match = _NAME.fullmatch(name)
    if not escaped or match is None or match.group(2):
        raise KeyMappingError(f"{location!r} is not a request (<escaped key>/<{DIGEST_CHARS} hex>{REQUEST_SUFFIX})")
    base = f"{prefix}{escaped}/{match.group(1)}"
    return StagedRequest(
        bucket, f"{base}{REQUEST_SUFFIX}", f"{base}{CONTEXT_SUFFIX}", unescape_key(escaped), match.group(1)
    )


def remove_staged(s3: Any, staged: StagedRequest, *others: str) -> None:
    """Best effort: delete the staged request, its context and the `s3://` objects in `others`.

    A failure is logged, not raised: the result is already committed, and the transcripts bucket's lifecycle
    rule expires whatever is left.
    """
    targets = [(staged.bucket, staged.request_key), (staged.bucket, staged.context_key)]
    for uri in others:
        location = split_s3_uri(uri)
        if location is not None:
            targets.append(location)
    for bucket, key in targets:
        try:
            s3.delete_object(Bucket=bucket, Key=key)
        except Exception:
            logger.warning(
                "staged object not deleted; the lifecycle rule expires it", exc_info=True, extra={"key": key}
            )


def split_s3_uri(uri: Any) -> tuple[str, str] | None:
    """(bucket, key) of an `s3://bucket/key` URI; None for anything else."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        return None
    bucket, _, key = uri[len("s3://") :].partition("/")
    return (bucket, key) if bucket and key else None
