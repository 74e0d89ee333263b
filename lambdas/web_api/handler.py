"""Lambda entry point for the web API (HTTP API payload 2.0): route, find the caller, hand over to `uploads`."""

from __future__ import annotations

import json
import logging
from typing import Any

import boto3
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from botocore.config import Config

from pipeline_common.clients import ClientCache
from pipeline_common.settings import LazySettings
from web_api.settings import Settings
from web_api.uploads import DEFAULT_LIST_LIMIT, WebApi, WebApiError, check_sub

logger = logging.getLogger(__name__)

SETTINGS: LazySettings[Settings] = LazySettings(Settings.from_env)
CLIENTS = ClientCache(
    # Presigned POSTs need SigV4 fields (without it boto3 signs SigV2-style); "standard" retries a throttled read.
    s3=lambda: boto3.client("s3", config=Config(signature_version="s3v4", retries={"mode": "standard"})),
    dynamodb=lambda: boto3.client("dynamodb", config=Config(retries={"mode": "standard"})),
)

app = APIGatewayHttpResolver()


def api() -> WebApi:
    """The API over this function's settings and clients."""
    return WebApi(SETTINGS.get(), CLIENTS.get("s3"), CLIENTS.get("dynamodb"))


def caller(event: dict[str, Any]) -> str:
    """The Cognito user's `sub` from the JWT authorizer's claims; 401 without one."""
    claims = (((event.get("requestContext") or {}).get("authorizer") or {}).get("jwt") or {}).get("claims") or {}
    return check_sub(claims.get("sub"))


@app.post("/uploads")
def create_upload() -> Response:
    """Ask for an upload: a presigned POST for one recording."""
    sub = caller(app.current_event.raw_event)
    try:
        request = json.loads(app.current_event.decoded_body or "")
    except (TypeError, ValueError):
        raise WebApiError(
            400, "bad-request", "the body is not JSON", 'send {"contentType": "<MIME type>", "size": <bytes>}'
        ) from None
    return _json(201, api().create_upload(sub, request))


@app.get("/uploads/<upload_id>")
def get_upload(upload_id: str) -> Response:
    """One upload's stage and result."""
    return _json(200, api().get_upload(caller(app.current_event.raw_event), upload_id))


@app.get("/uploads")
def list_uploads() -> Response:
    """The caller's uploads, newest first."""
    sub = caller(app.current_event.raw_event)
    text = app.current_event.get_query_string_value("limit", str(DEFAULT_LIST_LIMIT)) or str(DEFAULT_LIST_LIMIT)
    if not text.isdigit():
        raise WebApiError(400, "bad-request", f"limit={text!r} is not a whole number", "ask for 1 to 200 uploads")
    return _json(200, api().list_uploads(sub, int(text)))


@app.exception_handler(WebApiError)
def refused(error: WebApiError) -> Response:
    """A refused request: its status and `{"error", "reason", "action"}`."""
    logger.info("request refused", extra={"status": error.status, "error_code": error.code})
    return _json(error.status, error.body())


@app.not_found
def no_route(_: Exception) -> Response:
    """Any other path or method."""
    return _json(404, {"error": "no-route", "reason": "no such API route", "action": "see docs/API.md"})


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Answer one HTTP API request."""
    return app.resolve(event, context)


def _json(status: int, body: dict[str, Any]) -> Response:
    # Links are presigned for one person: no shared cache may keep them.
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps(body, ensure_ascii=False, default=str),
        headers={"Cache-Control": "no-store"},
    )
