"""The local web server over moto with the web API handler in-process: no pipeline, no model (fast tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto import mock_aws

from infra.config import PipelineConfig
from infra.web_config import WebConfig, web_api_environment
from local.web_server import LocalWebServer, WebServerConfig
from tests.lambdas.support import BUCKETS, INPUT_BUCKET, LEDGER_TABLE, REGION, create_ledger_table

REPO = Path(__file__).resolve().parents[2]
KEY_ID, SECRET = "AKIAWEBSERVERTEST000", "web-server-test-secret"


@contextmanager
def moto_web_server(*, max_upload_bytes: int, auth: dict[str, Any] | None = None) -> Iterator[LocalWebServer]:
    """The server on a free port serving web/ with `auth` in its config.json; `.s3` is moto's S3 client."""
    with pytest.MonkeyPatch.context() as patch, mock_aws():
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
        patch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        environment = web_api_environment(PipelineConfig(), WebConfig(), BUCKETS, LEDGER_TABLE)
        for name, value in (environment | {"WEB_MAX_UPLOAD_BYTES": str(max_upload_bytes)}).items():
            patch.setenv(name, value)
        s3 = boto3.client("s3", region_name=REGION, config=Config(signature_version="s3v4"))
        s3.create_bucket(Bucket=INPUT_BUCKET)
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        create_ledger_table(dynamodb)
        from web_api import handler

        handler.SETTINGS.reset()
        handler.CLIENTS.clear()
        handler.CLIENTS.inject(s3=s3, dynamodb=dynamodb)
        config = WebServerConfig(
            web_dir=REPO / "web",
            page_config={
                "apiUrl": "/api",
                "maxRecordingSeconds": 60,
                "maxUploadBytes": max_upload_bytes,
                "auth": auth,
            },
            input_bucket=INPUT_BUCKET,
            max_upload_bytes=max_upload_bytes,
            access_key=KEY_ID,
            secret_key=SECRET,
        )

        def put(key: str, body: bytes, content_type: str | None) -> None:
            s3.put_object(Bucket=INPUT_BUCKET, Key=key, Body=body, ContentType=content_type or "")

        web = LocalWebServer(
            ("127.0.0.1", 0), config, invoke_api=lambda event: handler.handler(event, None), put_object=put
        )
        web.start()
        web.s3 = s3  # type: ignore[attr-defined]
        try:
            yield web
        finally:
            web.stop()
            handler.SETTINGS.reset()
            handler.CLIENTS.clear()
