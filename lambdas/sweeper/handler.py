"""Lambda entry point for the sweeper, run on a schedule: record every stuck upload."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from pipeline_common.clients import ClientCache
from pipeline_common.results import Results
from pipeline_common.settings import LazySettings
from sweeper.core import FUNCTION, Settings, sweep

_AWS_CONFIG = Config(retries={"mode": "standard"})

SETTINGS: LazySettings[Settings] = LazySettings(Settings.from_env)
CLIENTS = ClientCache(
    s3=lambda: boto3.client("s3", config=_AWS_CONFIG),
    dynamodb=lambda: boto3.client("dynamodb", config=_AWS_CONFIG),
)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Sweep the ledger once (the scheduled event's content does not matter)."""
    settings = SETTINGS.get()
    results = Results.for_invocation(
        FUNCTION, settings, s3=CLIENTS.get("s3"), dynamodb=CLIENTS.get("dynamodb"), context=context
    )
    return {"results": [result.as_dict() for result in sweep(settings=settings, results=results)]}
