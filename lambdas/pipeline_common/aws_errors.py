"""Small helpers to classify botocore errors by their service error code."""

from __future__ import annotations

from botocore.exceptions import ClientError

# HeadObject reports a missing key as a bare 404 ("NotFound"); GetObject as NoSuchKey.
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
# A service asking us to slow down: normal weather in a burst, retried by the queue without a word to the user.
_THROTTLING_CODES = frozenset(
    {
        "LimitExceededException",
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "SlowDown",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
    }
)
# GetObject reports a failed If-Match as PreconditionFailed; HeadObject (no body) as a bare 412.
_PRECONDITION_CODES = frozenset({"412", "PreconditionFailed"})


def error_code(error: BaseException) -> str | None:
    """The service error code of a `ClientError`, else None."""
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", "")) or None
    return None


def error_message(error: BaseException) -> str:
    """The service's own message for a `ClientError`, else `str(error)`."""
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Message") or error)
    return str(error)


def http_status(error: BaseException) -> int | None:
    """The HTTP status code of a `ClientError`, else None."""
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def is_not_found(error: BaseException) -> bool:
    """True when S3 says the object does not exist."""
    return error_code(error) in _NOT_FOUND_CODES


def is_precondition_failed(error: BaseException) -> bool:
    """True when S3 refused a conditional request (If-Match): the object has changed since."""
    return error_code(error) in _PRECONDITION_CODES


def is_throttling(error: BaseException) -> bool:
    """True when a service refused the call only because of its request rate or a concurrency quota."""
    return error_code(error) in _THROTTLING_CODES
