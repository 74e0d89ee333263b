"""What S3 checks on a browser's presigned POST, done locally: moto stores any POST, whatever its policy says.

`check_post` verifies the form the way S3 documents it (SigV4 signature over the base64 policy, expiry, every
condition, every field covered by a condition) and says what it refused in S3's own error codes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ALGORITHM = "AWS4-HMAC-SHA256"
# Fields S3 never asks a condition for (the signature cannot sign itself; `file` is the content).
_UNCONDITIONED = {"x-amz-signature", "file", "policy"}


class PostRefused(Exception):
    """S3 would refuse this POST: the HTTP status, S3's error code and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def xml(self) -> bytes:
        """The error document S3 answers with."""
        return (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{self.code}</Code>'
            f"<Message>{_xml_escape(self.message)}</Message></Error>"
        ).encode()


@dataclass(frozen=True)
class CheckedPost:
    """A POST that S3 would accept: where the object goes and how it is stored."""

    key: str
    content_type: str | None


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """SigV4's derived key for one day, region and service."""
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def check_post(
    fields: Mapping[str, str], size: int, *, bucket: str, access_key: str, secret: str, now: datetime | None = None
) -> CheckedPost:
    """Accept the form fields and file size of a POST to `bucket`, or raise `PostRefused` as S3 would."""
    form = {name.lower(): value for name, value in fields.items()}
    for name in ("key", "policy", "x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature"):
        if not form.get(name):
            raise PostRefused(400, "InvalidArgument", f"Bucket POST must contain a field named '{name}'")
    if form["x-amz-algorithm"] != ALGORITHM:
        raise PostRefused(400, "InvalidArgument", f"only {ALGORITHM} is supported")
    _check_signature(form, access_key=access_key, secret=secret)
    try:
        policy = json.loads(base64.b64decode(form["policy"], validate=True))
        expiration = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
        conditions = list(policy["conditions"])
    except (ValueError, KeyError, TypeError):
        raise PostRefused(400, "InvalidPolicyDocument", "Invalid Policy: the policy is not a policy document") from None
    if (now or datetime.now(UTC)) >= expiration:
        raise PostRefused(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
    covered = _check_conditions(conditions, {**form, "bucket": bucket}, size)
    uncovered = sorted(
        name for name in form if name not in covered and name not in _UNCONDITIONED and not name.startswith("x-ignore-")
    )
    if uncovered:
        raise PostRefused(
            403, "AccessDenied", f"Invalid according to Policy: Extra input fields: {', '.join(uncovered)}"
        )
    return CheckedPost(key=form["key"], content_type=form.get("content-type"))


def _check_signature(form: Mapping[str, str], *, access_key: str, secret: str) -> None:
    try:
        key_id, date, region, service, terminal = form["x-amz-credential"].split("/")
    except ValueError:
        raise PostRefused(
            400, "InvalidArgument", "x-amz-credential is not <key>/<date>/<region>/<service>/aws4_request"
        ) from None
    if key_id != access_key or terminal != "aws4_request" or service != "s3":
        raise PostRefused(
            403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."
        )
    expected = hmac.new(signing_key(secret, date, region, service), form["policy"].encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, form["x-amz-signature"].lower()):
        raise PostRefused(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )


def _check_conditions(conditions: list[Any], form: Mapping[str, str], size: int) -> set[str]:
    """Check every condition; the (lower-case) field names they cover."""
    covered: set[str] = set()
    for condition in conditions:
        if isinstance(condition, dict) and len(condition) == 1:
            ((name, value),) = condition.items()
            operator, name = "eq", name.lower()
        elif isinstance(condition, list) and len(condition) == 3 and condition[0] == "content-length-range":
            low, high = int(condition[1]), int(condition[2])
            if size > high:
                raise PostRefused(
                    400, "EntityTooLarge", f"Your proposed upload exceeds the maximum allowed size ({size} > {high})"
                )
            if size < low:
                raise PostRefused(
                    400,
                    "EntityTooSmall",
                    f"Your proposed upload is smaller than the minimum allowed size ({size} < {low})",
                )
            continue
        elif isinstance(condition, list) and len(condition) == 3 and condition[0] in ("eq", "starts-with"):
            operator, name, value = condition[0], str(condition[1]).lower().lstrip("$"), condition[2]
        else:
            raise PostRefused(400, "InvalidPolicyDocument", f"Invalid Policy: unknown condition {condition!r}")
        actual = form.get(name, "")
        holds = actual == value if operator == "eq" else actual.startswith(str(value))
        if not holds:
            raise PostRefused(
                403,
                "AccessDenied",
                f'Invalid according to Policy: Policy Condition failed: ["{operator}", "${name}", "{value}"]',
            )
        covered.add(name)
    return covered


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
