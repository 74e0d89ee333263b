"""The web API's work as plain functions over injected clients: ask for an upload, read one, list a person's."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline_common.ledger import DynamoLedger
from pipeline_common.media_types import EXTENSION_MIME, extension_for
from web_api.settings import Settings
from web_api.views import UploadObject, upload_view

# `<UTC time to the millisecond>-<8 hex>`: ids sort by the time they were asked for; the suffix keeps two apart.
UPLOAD_ID_RE = re.compile(r"^\d{8}T\d{9}Z-[0-9a-f]{8}$")
# Cognito subs are UUIDs; local mode's caller is "local". Anything else must not shape a key.
SUB_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 200


class WebApiError(Exception):
    """A request the API refuses: the HTTP status, a short code, what went wrong and what to do."""

    def __init__(self, status: int, code: str, reason: str, action: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.action = action

    def body(self) -> dict[str, str]:
        """The JSON body of the error response."""
        return {"error": self.code, "reason": self.reason, "action": self.action}


@dataclass(frozen=True)
class WebApi:
    """One caller-independent API instance: settings, clients and a clock."""

    settings: Settings
    s3: Any
    dynamodb: Any
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    @property
    def ledger(self) -> DynamoLedger:
        """The upload ledger."""
        return DynamoLedger(self.dynamodb, self.settings.ledger_table)

    def user_prefix(self, sub: str) -> str:
        """Where `sub`'s uploads live in the input bucket."""
        return f"{self.settings.upload_prefix}{check_sub(sub)}/"

    # -- POST /uploads ----------------------------------------------------------------------------

    def create_upload(self, sub: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """A presigned POST for one recording under the caller's prefix; `WebApiError` (400) for a bad request."""
        prefix = self.user_prefix(sub)
        content_type, size, file_name = _upload_request(request)
        settings = self.settings
        extension = extension_for(content_type, file_name)
        if extension is None or extension not in settings.media_formats:
            shown = content_type or "a file of unknown type"
            raise WebApiError(
                400,
                "unsupported-type",
                f"{shown} is not a recording this pipeline accepts",
                f"record in the page, or pick an audio file ({', '.join(settings.media_formats)})",
            )
        if size > settings.max_upload_bytes:
            raise WebApiError(
                400,
                "too-large",
                f"the file is {size} bytes; the limit is {settings.max_upload_bytes} bytes",
                "pick a shorter recording or compress it (for example to mp3)",
            )
        upload_id = new_upload_id(self.clock())
        key = f"{prefix}{upload_id}.{extension}"
        stored_type = EXTENSION_MIME[extension]
        post = self.s3.generate_presigned_post(
            Bucket=settings.input_bucket,
            Key=key,
            Fields={"Content-Type": stored_type},
            Conditions=[{"Content-Type": stored_type}, ["content-length-range", 1, settings.max_upload_bytes]],
            ExpiresIn=settings.url_ttl_seconds,
        )
        return {
            "id": upload_id,
            "key": key,
            "contentType": stored_type,
            "maxBytes": settings.max_upload_bytes,
            "expiresIn": settings.url_ttl_seconds,
            # The form: every field in this order, then the file as the LAST field named "file".
            "upload": {"url": post["url"], "fields": post["fields"]},
        }

    # -- GET /uploads/{id} ------------------------------------------------------------------------

    def get_upload(self, sub: str, upload_id: str) -> dict[str, Any]:
        """One of the caller's uploads with its stage and, once final, its result; 404 for anyone else's."""
        prefix = self.user_prefix(sub)
        if not UPLOAD_ID_RE.fullmatch(upload_id):
            raise _not_found(upload_id)
        response = self.s3.list_objects_v2(Bucket=self.settings.input_bucket, Prefix=f"{prefix}{upload_id}.")
        found = [item for item in map(self._upload_object, response.get("Contents", [])) if item]
        if not found:
            raise _not_found(upload_id)
        upload = found[0]
        entry = self.ledger.get(upload.key)
        return upload_view(upload, entry, self.settings, self.s3, now=self.clock(), detail=True)

    # -- GET /uploads -----------------------------------------------------------------------------

    def list_uploads(self, sub: str, limit: int = DEFAULT_LIST_LIMIT) -> dict[str, Any]:
        """The caller's uploads, newest first, each with its stage and (once done) a thumbnail link."""
        prefix = self.user_prefix(sub)
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise WebApiError(400, "bad-request", f"limit={limit} is out of range", f"ask for 1 to {MAX_LIST_LIMIT}")
        uploads: list[UploadObject] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.settings.input_bucket, Prefix=prefix):
            uploads += [item for item in map(self._upload_object, page.get("Contents", [])) if item]
        # Upload ids start with the time they were asked for, so key order is time order.
        uploads = sorted(uploads, key=lambda item: item.key, reverse=True)[:limit]
        entries = self.ledger.get_many([item.key for item in uploads])
        now = self.clock()
        return {
            "uploads": [
                upload_view(item, entries.get(item.key), self.settings, self.s3, now=now, detail=False)
                for item in uploads
            ]
        }

    def _upload_object(self, listed: Mapping[str, Any]) -> UploadObject | None:
        """A listed input object as an upload of this API, or None for anything else under the prefix."""
        key = str(listed["Key"])
        name = key.rsplit("/", 1)[-1]
        upload_id, _, extension = name.partition(".")
        if not UPLOAD_ID_RE.fullmatch(upload_id) or extension not in EXTENSION_MIME:
            return None
        return UploadObject(key=key, upload_id=upload_id, uploaded_at=listed["LastModified"], size=listed["Size"])


def new_upload_id(now: datetime) -> str:
    """A fresh upload id: the UTC time to the millisecond and 32 random bits."""
    stamp = now.astimezone(UTC)
    return f"{stamp:%Y%m%dT%H%M%S}{stamp.microsecond // 1000:03d}Z-{secrets.token_hex(4)}"


def check_sub(sub: str | None) -> str:
    """The caller's id, fit to be a key segment; 401 when there is none (no authorizer) or it is unusable."""
    if not sub or not SUB_RE.fullmatch(sub):
        raise WebApiError(401, "unauthorized", "the request carries no usable caller identity", "sign in again")
    return sub


def _upload_request(request: Mapping[str, Any]) -> tuple[str, int, str]:
    """`contentType`, `size` and the optional `fileName` of a POST /uploads body; 400 when malformed."""
    if not isinstance(request, Mapping):
        raise _bad_request("the body must be a JSON object")
    content_type = request.get("contentType", "")
    size = request.get("size")
    file_name = request.get("fileName", "")
    if not isinstance(content_type, str) or not isinstance(file_name, str):
        raise _bad_request("contentType and fileName must be strings")
    # bool is an int in Python; a size of `true` is not a size.
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise WebApiError(
            400,
            "empty-file" if size == 0 else "bad-request",
            f"size {size!r} is not a file size",
            "pick a file that is not empty",
        )
    return content_type, size, file_name


def _bad_request(reason: str) -> WebApiError:
    return WebApiError(
        400, "bad-request", reason, 'send {"contentType": "<the recording\'s MIME type>", "size": <bytes>}'
    )


def _not_found(upload_id: str) -> WebApiError:
    return WebApiError(
        404, "not-found", f"you have no upload {upload_id!r}", "check the link, or pick the upload from your history"
    )
