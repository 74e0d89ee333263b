"""Each handler's Settings read every variable infra/pipeline.py gives that handler, and need no other."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from infra.config import PipelineConfig
from infra.pipeline import JOB_NAME_PREFIX, BucketRole, Handler, handler_environment
from invoke_sd.core import Settings as InvokeSdSettings
from tests.lambdas.support import BUCKETS
from transcribe_failed.core import Settings as TranscribeFailedSettings
from transcribe_trigger.core import Settings as TranscribeTriggerSettings

SETTINGS: dict[Handler, Any] = {
    Handler.TRANSCRIBE_TRIGGER: TranscribeTriggerSettings,
    Handler.INVOKE_SD: InvokeSdSettings,
    Handler.TRANSCRIBE_FAILED: TranscribeFailedSettings,
}


class RecordingEnviron(Mapping[str, str]):
    """An environment that remembers which variables were looked up."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return self.values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def test_every_handler_has_settings() -> None:
    assert set(SETTINGS) == set(Handler)


@pytest.mark.parametrize("handler", list(Handler))
def test_settings_read_every_variable_the_handler_is_given(handler: Handler) -> None:
    given = handler_environment(handler, PipelineConfig(), BUCKETS)
    environ = RecordingEnviron(given)

    settings = SETTINGS[handler].from_env(environ)

    unread = set(given) - environ.read
    assert not unread, f"{handler.value} ignores {sorted(unread)}"
    assert settings.output_bucket == BUCKETS[BucketRole.OUTPUT]
    assert settings.input_bucket == BUCKETS[BucketRole.INPUT]
    assert settings.job_name_prefix == JOB_NAME_PREFIX


def test_recording_environ_notices_reads() -> None:
    # The check above relies on `get` going through __getitem__ (as Mapping.get does).
    environ = RecordingEnviron({"A": "1"})
    assert (environ.get("A"), environ.get("B", "x")) == ("1", "x")
    assert environ.read == {"A", "B"}
