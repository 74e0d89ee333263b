"""Handler settings from environment variables: read once, on first use, and checked loudly."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pipeline_common.keys import check_job_name_prefix

T = TypeVar("T")

# Amazon Transcribe's MediaFormat values (infra/config.py TRANSCRIBE_MEDIA_FORMATS; a test keeps them equal).
TRANSCRIBE_MEDIA_FORMATS = ("mp3", "mp4", "m4a", "wav", "flac", "ogg", "webm", "amr")

# Where the variables are defined, so an error message tells the reader where to look.
_SOURCE = "infra/pipeline.py handler_environment()"


class SettingsError(RuntimeError):
    """An environment variable is missing or invalid; the message names it."""


def require(environ: Mapping[str, str], name: str) -> str:
    """A variable that must be set to a non-empty value."""
    value = environ.get(name, "").strip()
    if not value:
        raise SettingsError(f"environment variable {name} is not set; it is required (defined in {_SOURCE})")
    return value


def optional(environ: Mapping[str, str], name: str, default: str) -> str:
    """A variable with a default for when it is unset or empty."""
    return environ.get(name, "").strip() or default


def as_int(name: str, value: str, *, minimum: int) -> int:
    """Parse a whole number of at least `minimum`, naming the variable when it is not one."""
    try:
        number = int(value, 10)
    except ValueError:
        raise SettingsError(f"environment variable {name}={value!r} is not a whole number") from None
    if number < minimum:
        raise SettingsError(f"environment variable {name}={value!r} must be at least {minimum}")
    return number


def as_float(name: str, value: str, *, minimum: float, maximum: float) -> float:
    """Parse a number between `minimum` and `maximum`, naming the variable when it is not one."""
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(f"environment variable {name}={value!r} is not a number") from None
    # `not (a <= x <= b)` also refuses NaN.
    if not minimum <= number <= maximum:
        raise SettingsError(f"environment variable {name}={value!r} must be between {minimum} and {maximum}")
    return number


def as_job_name_prefix(name: str, value: str) -> str:
    """Check a Transcribe job name prefix, naming the variable when it cannot start a job name."""
    try:
        return check_job_name_prefix(value)
    except ValueError as error:
        raise SettingsError(f"environment variable {name}: {error}") from None


def as_media_formats(name: str, value: str) -> tuple[str, ...]:
    """Parse a comma-separated list of Transcribe media formats (lower case, no dots)."""
    formats = tuple(item.lower().lstrip(".") for item in as_list(value))
    unknown = [item for item in formats if item not in TRANSCRIBE_MEDIA_FORMATS]
    if unknown or not formats:
        raise SettingsError(
            f"environment variable {name} has {unknown or 'no formats'}; "
            f"Amazon Transcribe accepts {list(TRANSCRIBE_MEDIA_FORMATS)}"
        )
    return formats


def as_list(value: str) -> tuple[str, ...]:
    """Split a comma-separated value, dropping blanks."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def as_json_object(name: str, value: str) -> dict[str, Any]:
    """Parse a JSON object, naming the variable when it is not one."""
    try:
        data = json.loads(value)
    except json.JSONDecodeError as error:
        raise SettingsError(f"environment variable {name} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"environment variable {name} must be a JSON object, got {type(data).__name__}")
    return data


class LazySettings(Generic[T]):
    """Settings loaded from `os.environ` on first `get()` and cached.

    Not at import time: a local runtime imports the handlers before it sets their environment.
    """

    def __init__(self, load: Callable[[Mapping[str, str]], T]) -> None:
        """Remember how to load; nothing is read yet."""
        self._load = load
        self._value: T | None = None

    def get(self) -> T:
        """The settings, loaded on the first call."""
        if self._value is None:
            self._value = self._load(os.environ)
        return self._value

    def reset(self) -> None:
        """Forget the cached settings so the next `get()` reads the environment again."""
        self._value = None


@dataclass(frozen=True)
class CommonSettings:
    """What every handler reads: where uploads and results live, the ledger, the metrics namespace."""

    input_bucket: str
    output_bucket: str
    image_prefix: str
    error_prefix: str
    job_name_prefix: str
    ledger_table: str
    metrics_namespace: str

    @staticmethod
    def common_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
        """The common block of infra/pipeline.py handler_environment(), checked, as constructor arguments."""
        return {
            "input_bucket": require(environ, "INPUT_BUCKET"),
            "output_bucket": require(environ, "OUTPUT_BUCKET"),
            "image_prefix": require(environ, "IMAGE_PREFIX"),
            "error_prefix": require(environ, "ERROR_PREFIX"),
            "job_name_prefix": as_job_name_prefix("JOB_NAME_PREFIX", require(environ, "JOB_NAME_PREFIX")),
            "ledger_table": require(environ, "LEDGER_TABLE"),
            "metrics_namespace": optional(environ, "METRICS_NAMESPACE", "SpeechToImage"),
        }


REALTIME = "realtime"
ASYNC = "async"
ENDPOINT_MODES = (REALTIME, ASYNC)


def as_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """One of `choices`, naming the variable when it is not."""
    if value not in choices:
        raise SettingsError(f"environment variable {name}={value!r} must be one of {list(choices)}")
    return value


def endpoint_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The endpoint block of handler_environment() (invoke_sd, async_result), checked, as constructor arguments.

    Without ENDPOINT_MODE the endpoint is real-time, as it was before asynchronous inference existed.
    """
    endpoint_mode = as_choice("ENDPOINT_MODE", optional(environ, "ENDPOINT_MODE", REALTIME), ENDPOINT_MODES)
    return {
        "endpoint_name": require(environ, "ENDPOINT_NAME"),
        "endpoint_mode": endpoint_mode,
        "image_parameters": as_json_object("IMAGE_PARAMETERS", optional(environ, "IMAGE_PARAMETERS", "{}")),
        # Where asynchronous requests are staged; a real-time endpoint never reads them.
        "transcript_bucket": (require if endpoint_mode == ASYNC else _or_empty)(environ, "TRANSCRIPT_BUCKET"),
        "async_request_prefix": optional(environ, "ASYNC_REQUEST_PREFIX", "async/requests/"),
    }


def _or_empty(environ: Mapping[str, str], name: str) -> str:
    return optional(environ, name, "")
