"""Is an event still about the object now under its key? The check behind `gone` and `superseded`."""

from __future__ import annotations

from typing import Any

from pipeline_common.keys import job_name, normalise_etag

GONE = "gone"
SUPERSEDED = "superseded"


def current_etag(s3: Any, bucket: str, key: str) -> str | None:
    """The (unquoted) ETag of the object now under `key`, or None when there is none.

    ListObjectsV2 rather than HeadObject: the functions may list the input bucket, not read it.
    `key` itself sorts first among the keys it prefixes, so one result is enough.
    """
    response = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    for item in response.get("Contents") or []:
        if item.get("Key") == key:
            return normalise_etag(str(item["ETag"]))
    return None


def staleness(s3: Any, *, bucket: str, key: str, job: str | None, prefix: str) -> str | None:
    """`gone` when no object is under `key`; `superseded` when `job` belongs to an older one; else None.

    A `job` of None (a transcript without its jobName) can only be checked for `gone`.
    """
    etag = current_etag(s3, bucket, key)
    if etag is None:
        return GONE
    if job is not None and job_name(key, etag, prefix) != job:
        return SUPERSEDED
    return None
