"""`python -m local serve`'s HTTP server: the page (web/), the web API, and S3's presigned POST, on 127.0.0.1.

- `GET /`, `/app.js`, ...: the files of web/; `GET /config.json`: the local settings (auth off).
- `/api/...`: API Gateway's part. The request becomes an HTTP API payload 2.0 event, signed in as the one local
  user (`sub` "local"), and `lambdas/web_api/handler.py` answers it in its own process with exactly its
  environment, like the pipeline's handlers (`local.functions`).
- `POST /s3/<bucket>`: S3's part. moto stores any POST whatever its policy says, so the form is checked here as
  S3 checks it (`local.post_policy`) and only then put into the moto bucket, whose event starts the pipeline.
  The API's presigned POST names moto's URL; this server points it here instead.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import logging
import mimetypes
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from local.post_policy import PostRefused, check_post

log = logging.getLogger(__name__)

LOCAL_SUB = "local"
API_PREFIX = "/api"
UPLOAD_PREFIX = "/s3/"
# The form's other fields and multipart framing: a body this much over the size limit is refused unread.
FORM_OVERHEAD_BYTES = 64 * 1024
MAX_API_BODY_BYTES = 64 * 1024
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}


@dataclass(frozen=True)
class WebServerConfig:
    """What the server serves and enforces."""

    web_dir: Path
    page_config: dict[str, Any]
    input_bucket: str
    max_upload_bytes: int
    access_key: str
    secret_key: str


@dataclass(frozen=True)
class Form:
    """A multipart form: its fields before the file, and the file."""

    fields: dict[str, str]
    file: bytes | None


def parse_form(content_type: str, body: bytes) -> Form:
    """Split a multipart/form-data body; fields after the file are ignored, as S3 ignores them."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body
    )
    if not message.is_multipart():
        raise PostRefused(
            400, "MalformedPOSTRequest", "The body of your POST request is not well-formed multipart/form-data."
        )
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "file":
            return Form(fields, payload)
        if name:
            fields[str(name)] = payload.decode("utf-8")
    return Form(fields, None)


class LocalWebServer(ThreadingHTTPServer):
    """The page, the API and the upload target, on one loopback port."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        config: WebServerConfig,
        *,
        invoke_api: Callable[[dict[str, Any]], dict[str, Any]],
        put_object: Callable[[str, bytes, str | None], None],
    ) -> None:
        """Serve `config`; `invoke_api` runs the web API on an event, `put_object` stores an accepted upload."""
        super().__init__(address, _RequestHandler)
        self.config = config
        self.invoke_api = invoke_api
        self.put_object = put_object
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's URL."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A browser that went away mid-answer (a closed tab, a cancelled poll) is not an error worth a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("client %s went away: %s", client_address, error)
            return
        super().handle_error(request, client_address)

    def start(self) -> LocalWebServer:
        """Serve on a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="local-web", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.server_close()


def api_event(method: str, target: str, headers: dict[str, str], body: bytes, host: str) -> dict[str, Any]:
    """The HTTP API payload 2.0 event API Gateway would send for this request, as the local user."""
    parts = urlsplit(target)
    path = parts.path[len(API_PREFIX) :] or "/"
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": parts.query,
        "headers": {name.lower(): value for name, value in headers.items()},
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            # What the Cognito JWT authorizer passes on AWS: here there is one user and no sign-in.
            "authorizer": {"jwt": {"claims": {"sub": LOCAL_SUB}, "scopes": None}},
            "domainName": host,
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": ""},
            "requestId": uuid.uuid4().hex,
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": body.decode("utf-8", errors="replace") if body else None,
        "isBase64Encoded": False,
    }
    if parts.query:
        event["queryStringParameters"] = dict(parse_qsl(parts.query, keep_blank_values=True))
    return event


class _RequestHandler(BaseHTTPRequestHandler):
    server: LocalWebServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _local_host(self) -> bool:
        """Only this machine's names for the server: a page elsewhere cannot reach it by DNS rebinding."""
        port = self.server.server_address[1]
        if self.headers.get("Host") in (f"127.0.0.1:{port}", f"localhost:{port}"):
            return True
        self._send(421, b"use http://127.0.0.1 to reach this server", "text/plain")
        return False

    def do_GET(self) -> None:
        if not self._local_host():
            return
        path = urlsplit(self.path).path
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            self._api(b"")
        elif path == "/config.json":
            self._send(200, json.dumps(self.server.config.page_config).encode(), "application/json")
        else:
            self._static(path)

    def do_POST(self) -> None:
        if not self._local_host():
            return
        path = urlsplit(self.path).path
        if path.startswith(API_PREFIX + "/"):
            length = self._length()
            if length is None or length > MAX_API_BODY_BYTES:
                self._send(413, b'{"message":"Request Entity Too Large"}', "application/json")
                return
            self._api(self.rfile.read(length))
        elif path.startswith(UPLOAD_PREFIX):
            self._upload(path[len(UPLOAD_PREFIX) :])
        else:
            self._send(404, b"not found", "text/plain")

    def _api(self, body: bytes) -> None:
        host = self.headers["Host"]
        response = self.server.invoke_api(api_event(self.command, self.path, dict(self.headers), body, host))
        status = int(response.get("statusCode", 500))
        payload = response.get("body") or ""
        if status == 201 and urlsplit(self.path).path == f"{API_PREFIX}/uploads":
            payload = self._post_here(payload, host)
        headers = {
            name: value for name, value in (response.get("headers") or {}).items() if name.lower() != "content-length"
        }
        self._send(status, payload.encode("utf-8"), headers.pop("Content-Type", "application/json"), headers)

    def _post_here(self, payload: str, host: str) -> str:
        """Point the presigned POST at this server, which checks it as S3 would (moto would not).

        Under the name the page used (127.0.0.1 or localhost): the upload stays on the page's own origin.
        """
        document = json.loads(payload)
        document["upload"]["url"] = f"http://{host}{UPLOAD_PREFIX}{self.server.config.input_bucket}"
        return json.dumps(document)

    def _upload(self, bucket: str) -> None:
        config = self.server.config
        try:
            if bucket != config.input_bucket:
                raise PostRefused(404, "NoSuchBucket", f"The specified bucket does not exist: {bucket}")
            length = self._length()
            if length is None:
                raise PostRefused(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
            if length > config.max_upload_bytes + FORM_OVERHEAD_BYTES:
                # Refused unread, and the connection closed: the bytes never reach the bucket.
                self.close_connection = True
                raise PostRefused(
                    400,
                    "EntityTooLarge",
                    f"Your proposed upload exceeds the maximum allowed size ({config.max_upload_bytes})",
                )
            form = parse_form(self.headers.get("Content-Type", ""), self.rfile.read(length))
            if form.file is None:
                raise PostRefused(400, "InvalidArgument", "POST requires exactly one file upload per request.")
            checked = check_post(
                form.fields, len(form.file), bucket=bucket, access_key=config.access_key, secret=config.secret_key
            )
        except PostRefused as refused:
            log.info("upload refused: %s %s", refused.code, refused.message)
            self._send(refused.status, refused.xml(), "application/xml")
            return
        self.server.put_object(checked.key, form.file, checked.content_type)
        # S3's default answer to a successful POST.
        self._send(204, b"", "text/plain")

    def _static(self, path: str) -> None:
        web_dir = self.server.config.web_dir.resolve()
        target = (web_dir / (path.lstrip("/") or "index.html")).resolve()
        if not target.is_relative_to(web_dir) or not target.is_file():
            self._send(404, b"not found", "text/plain")
            return
        kind = STATIC_TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self._send(200, target.read_bytes(), kind)

    def _length(self) -> int | None:
        try:
            return int(self.headers.get("Content-Length", ""))
        except ValueError:
            return None

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            if name.lower() != "cache-control":
                self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
