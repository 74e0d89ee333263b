"""Each handler's Settings read every variable infra/pipeline.py gives that handler, and need no other."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

import infra.pipeline as pipeline
from async_result.settings import Settings as AsyncResultSettings
from infra.config import PipelineConfig
from infra.pipeline import (
    ASYNC_REQUEST_PREFIX,
    JOB_NAME_PREFIX,
    METRICS_NAMESPACE,
    BucketRole,
    Handler,
    handler_environment,
)
from invoke_sd.endpoint import derive_seed, request_parameters
from invoke_sd.settings import Settings as InvokeSdSettings
from pipeline_common import ledger
from pipeline_common.metrics import DEFAULT_NAMESPACE
from sweeper.core import Settings as SweeperSettings
from tests.lambdas.support import BUCKETS, LEDGER_TABLE
from transcribe_failed.core import Settings as TranscribeFailedSettings
from transcribe_trigger.core import Settings as TranscribeTriggerSettings

SETTINGS: dict[Handler, Any] = {
    Handler.TRANSCRIBE_TRIGGER: TranscribeTriggerSettings,
    Handler.INVOKE_SD: InvokeSdSettings,
    Handler.TRANSCRIBE_FAILED: TranscribeFailedSettings,
    Handler.SWEEPER: SweeperSettings,
    Handler.ASYNC_RESULT: AsyncResultSettings,
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
    given = handler_environment(handler, PipelineConfig(), BUCKETS, LEDGER_TABLE)
    environ = RecordingEnviron(given)

    SETTINGS[handler].from_env(environ)

    unread = set(given) - environ.read
    assert not unread, f"{handler.value} ignores {sorted(unread)}"


@pytest.mark.parametrize("handler", list(Handler))
def test_every_handler_gets_the_common_block(handler: Handler) -> None:
    settings = SETTINGS[handler].from_env(handler_environment(handler, PipelineConfig(), BUCKETS, LEDGER_TABLE))

    assert settings.output_bucket == BUCKETS[BucketRole.OUTPUT]
    assert settings.input_bucket == BUCKETS[BucketRole.INPUT]
    assert settings.job_name_prefix == JOB_NAME_PREFIX
    assert settings.ledger_table == LEDGER_TABLE
    assert settings.metrics_namespace == METRICS_NAMESPACE


def test_sweeper_gets_its_deadline_and_the_pending_index() -> None:
    config = PipelineConfig(stuck_after_minutes=45)
    given = handler_environment(Handler.SWEEPER, config, BUCKETS, LEDGER_TABLE)

    assert given["LEDGER_PENDING_INDEX"] == ledger.PENDING_INDEX
    assert SweeperSettings.from_env(given).stuck_after_minutes == 45
    # Only the sweeper queries the index or needs a deadline.
    for handler in set(Handler) - {Handler.SWEEPER}:
        environment = handler_environment(handler, config, BUCKETS, LEDGER_TABLE)
        assert not {"LEDGER_PENDING_INDEX", "STUCK_AFTER_MINUTES"} & set(environment)


@pytest.mark.parametrize("mode", ["async", "realtime"])
def test_invoke_sd_and_async_result_agree_on_the_async_requests(mode: str) -> None:
    config = PipelineConfig(endpoint_mode=mode, request_ttl_minutes=30)
    invoke = InvokeSdSettings.from_env(handler_environment(Handler.INVOKE_SD, config, BUCKETS, LEDGER_TABLE))
    result = AsyncResultSettings.from_env(handler_environment(Handler.ASYNC_RESULT, config, BUCKETS, LEDGER_TABLE))

    assert invoke.endpoint_mode == result.endpoint_mode == mode
    assert invoke.request_ttl_seconds == 30 * 60
    # The async InvocationTimeoutSeconds invoke_sd sends is the limit the endpoint budgets against.
    assert invoke.invocation_timeout_seconds == config.time_limit_seconds == (900 if mode == "async" else 60)
    # The stage that reads the notifications looks for requests where invoke_sd stages them.
    assert invoke.transcript_bucket == result.transcript_bucket == BUCKETS[BucketRole.TRANSCRIPTS]
    assert invoke.async_request_prefix == result.async_request_prefix == ASYNC_REQUEST_PREFIX
    assert invoke.endpoint_name == result.endpoint_name


def test_ledger_attribute_names_match_the_table_infra_defines() -> None:
    # The handlers write these attributes; InfraStack keys the table and its sparse index on them.
    assert (ledger.PARTITION_KEY, ledger.PENDING, ledger.UPDATED_AT, ledger.PENDING_INDEX) == (
        pipeline.LEDGER_PARTITION_KEY,
        pipeline.LEDGER_PENDING,
        pipeline.LEDGER_UPDATED_AT,
        pipeline.LEDGER_PENDING_INDEX,
    )


def test_metrics_namespace_default_matches_infra() -> None:
    # A handler run without METRICS_NAMESPACE (local mode, a replay) still feeds the dashboard's namespace.
    assert DEFAULT_NAMESPACE == METRICS_NAMESPACE
    environment = handler_environment(Handler.INVOKE_SD, PipelineConfig(), BUCKETS, LEDGER_TABLE)
    del environment["METRICS_NAMESPACE"]
    assert InvokeSdSettings.from_env(environment).metrics_namespace == METRICS_NAMESPACE


def test_recording_environ_notices_reads() -> None:
    # The check above relies on `get` going through __getitem__ (as Mapping.get does).
    environ = RecordingEnviron({"A": "1"})
    assert (environ.get("A"), environ.get("B", "x")) == ("1", "x")
    assert environ.read == {"A", "B"}


def test_by_default_a_request_carries_only_the_seed_so_the_model_familys_defaults_apply() -> None:
    # cdk.json configures no imageParameters: size, steps and guidance come from the endpoint's family defaults
    # (SDXL 1024x1024, turbo 1-4 steps at guidance 0), and only the upload's own seed is sent.
    invoke = InvokeSdSettings.from_env(handler_environment(Handler.INVOKE_SD, PipelineConfig(), BUCKETS, LEDGER_TABLE))
    assert invoke.image_parameters == {}
    assert request_parameters(invoke.image_parameters, "notes/idea.mp3") == {"seed": derive_seed("notes/idea.mp3")}
