"""`local serve`'s HTTP server with the real web API handler over moto: S3's POST rules are enforced locally.

moto stores any POST whatever its policy says, so the server checks the form itself: these tests send what a
page (or someone bypassing it) could send and look in the bucket afterwards.
"""

from __future__ import annotations

import base64
import http.client
import json
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest

from infra.web_config import WebConfig, web_api_environment
from local.web_server import LocalWebServer, parse_form
from tests.lambdas.support import BUCKETS, INPUT_BUCKET, LEDGER_TABLE
from tests.local.web_support import moto_web_server

MAX_BYTES = 50_000


@pytest.fixture(scope="module")
def server() -> Iterator[LocalWebServer]:
    """The server on a free port, the web API handler in-process, moto behind both."""
    with moto_web_server(max_upload_bytes=MAX_BYTES) as web:
        yield web


def send(
    server: LocalWebServer, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(str(host), int(port), timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


def ask(server: LocalWebServer, content_type: str = "audio/webm", size: int = 1000) -> dict[str, Any]:
    body = json.dumps({"contentType": content_type, "size": size}).encode()
    status, answer, _ = send(server, "POST", "/api/uploads", body, {"Content-Type": "application/json"})
    assert status == 201, answer
    return json.loads(answer)


def multipart(fields: dict[str, str], file: bytes | None, file_type: str = "audio/webm") -> tuple[bytes, str]:
    """A browser's multipart form: the fields in order, then the file."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    if file is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="rec.webm"\r\n'
            f"Content-Type: {file_type}\r\n\r\n".encode()
            + file
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_form(
    server: LocalWebServer, answer: dict[str, Any], fields: dict[str, str], file: bytes | None
) -> tuple[int, bytes]:
    body, content_type = multipart(fields, file)
    path = urlsplit(answer["upload"]["url"]).path
    status, payload, _ = send(server, "POST", path, body, {"Content-Type": content_type})
    return status, payload


def stored(server: LocalWebServer) -> list[str]:
    return [item["Key"] for item in server.s3.list_objects_v2(Bucket=INPUT_BUCKET).get("Contents", [])]  # type: ignore[attr-defined]


AUDIO = b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 3 + b"\r\n--not-a-boundary\r\n"


def test_the_page_and_its_local_config_are_served(server: LocalWebServer) -> None:
    status, page, headers = send(server, "GET", "/")
    assert status == 200 and b'data-testid="record"' in page and headers["Content-Type"].startswith("text/html")
    status, script, headers = send(server, "GET", "/app.js")
    assert b"import" in script
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    status, config, _ = send(server, "GET", "/config.json")
    assert json.loads(config) == {
        "apiUrl": "/api",
        "maxRecordingSeconds": 60,
        "maxUploadBytes": MAX_BYTES,
        "auth": None,
    }
    assert send(server, "GET", "/../README.md")[0] == 404


def test_a_valid_post_is_stored_byte_for_byte_under_the_policy_key(server: LocalWebServer) -> None:
    answer = ask(server, size=len(AUDIO))
    assert answer["upload"]["url"].endswith(f"/s3/{INPUT_BUCKET}")
    assert answer["key"].startswith("web/local/")
    status, _ = post_form(server, answer, answer["upload"]["fields"], AUDIO)
    assert status == 204
    stored_object = server.s3.get_object(Bucket=INPUT_BUCKET, Key=answer["key"])  # type: ignore[attr-defined]
    assert stored_object["Body"].read() == AUDIO
    assert stored_object["ContentType"] == "audio/webm"


def test_the_api_refuses_a_wrong_type_or_size_before_any_upload(server: LocalWebServer) -> None:
    before = stored(server)
    for content_type, size, code in (
        ("text/plain", 10, "unsupported-type"),
        ("audio/webm", MAX_BYTES + 1, "too-large"),
    ):
        body = json.dumps({"contentType": content_type, "size": size}).encode()
        status, answer, _ = send(server, "POST", "/api/uploads", body, {"Content-Type": "application/json"})
        assert (status, json.loads(answer)["error"]) == (400, code)
    assert stored(server) == before


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ("oversized", 400, b"EntityTooLarge"),
        ("oversized-unread", 400, b"EntityTooLarge"),
        ("empty", 400, b"EntityTooSmall"),
        ("other-key", 403, b"SignatureDoesNotMatch"),
        ("other-type", 403, b"AccessDenied"),
        ("tampered-policy", 403, b"SignatureDoesNotMatch"),
        ("extra-field", 403, b"AccessDenied"),
        ("no-signature", 400, b"InvalidArgument"),
        ("no-file", 400, b"InvalidArgument"),
    ],
)
def test_a_post_that_breaks_its_policy_never_reaches_the_bucket(
    server: LocalWebServer, change: str, status: int, code: bytes
) -> None:
    answer = ask(server)
    fields = dict(answer["upload"]["fields"])
    file: bytes | None = AUDIO
    if change == "oversized":
        file = bytes(MAX_BYTES + 1)
    elif change == "oversized-unread":
        file = bytes(MAX_BYTES * 3)
    elif change == "empty":
        file = b""
    elif change == "other-key":
        # The key is in the signed policy: changing both key and policy breaks the signature.
        fields["key"] = "web/someone-else/20261202T000000000Z-00000000.webm"
        policy = json.loads(base64.b64decode(fields["policy"]))
        policy["conditions"] = [
            c if not (isinstance(c, dict) and "key" in c) else {"key": fields["key"]} for c in policy["conditions"]
        ]
        fields["policy"] = base64.b64encode(json.dumps(policy).encode()).decode()
    elif change == "other-type":
        fields["Content-Type"] = "text/html"
    elif change == "tampered-policy":
        policy = json.loads(base64.b64decode(fields["policy"]))
        policy["conditions"] = [
            c for c in policy["conditions"] if not (isinstance(c, list) and c[0] == "content-length-range")
        ]
        fields["policy"] = base64.b64encode(json.dumps(policy).encode()).decode()
    elif change == "extra-field":
        fields["x-amz-meta-owner"] = "mallory"
    elif change == "no-signature":
        del fields["x-amz-signature"]
    elif change == "no-file":
        file = None
    before = stored(server)
    answer_status, payload = post_form(server, answer, fields, file)
    assert answer_status == status, payload
    assert code in payload
    assert stored(server) == before


def test_a_key_outside_the_callers_policy_is_refused(server: LocalWebServer) -> None:
    answer = ask(server)
    fields = dict(answer["upload"]["fields"], key="web/local/other.webm")
    assert post_form(server, answer, fields, AUDIO)[0] == 403
    assert "web/local/other.webm" not in stored(server)


def test_parse_form_keeps_binary_files_exact_and_ignores_fields_after_the_file() -> None:
    body, content_type = multipart({"key": "k", "policy": "p"}, AUDIO)
    boundary = content_type.split("boundary=")[1]
    late = f'--{boundary}\r\nContent-Disposition: form-data; name="late"\r\n\r\nx\r\n--{boundary}--\r\n'
    extra = body.replace(f"--{boundary}--\r\n".encode(), late.encode())
    assert b'name="late"' in extra
    form = parse_form(content_type, extra)
    assert form.fields == {"key": "k", "policy": "p"}
    assert form.file == AUDIO


def test_the_api_answers_as_the_one_local_user(server: LocalWebServer) -> None:
    answer = ask(server)
    post_form(server, answer, answer["upload"]["fields"], AUDIO)
    status, body, _ = send(server, "GET", f"/api/uploads/{answer['id']}")
    assert status == 200 and json.loads(body)["stage"] == "uploaded"
    listed = json.loads(send(server, "GET", "/api/uploads")[1])["uploads"]
    assert answer["id"] in [item["id"] for item in listed]


@pytest.mark.parametrize(
    ("argv", "message"), [(["--port", "70000"], "--port"), (["--max-seconds", "0"], "--max-seconds")]
)
def test_serve_says_what_is_wrong_with_its_arguments(argv: list[str], message: str) -> None:
    import io

    from local.cli import EXIT_USAGE, main

    stderr = io.StringIO()
    assert main(["serve", *argv], stdout=io.StringIO(), stderr=stderr) == EXIT_USAGE
    assert message in stderr.getvalue()


def test_a_request_under_another_host_name_is_refused(server: LocalWebServer) -> None:
    # A page on another site reaching 127.0.0.1 through DNS rebinding sends its own host name.
    status, _, _ = send(server, "GET", "/api/uploads", headers={"Host": "attacker.example:80"})
    assert status == 421


def test_local_serve_gives_the_api_and_the_page_the_deployed_limits_from_cdk_json() -> None:
    from local.serve import WebFrontend
    from local.settings import CDK_JSON, load_config, load_web_config

    context = json.loads(CDK_JSON.read_text(encoding="utf-8"))["context"]
    config = load_config()
    runtime = SimpleNamespace(config=config, bucket_names=BUCKETS, aws=SimpleNamespace(ledger_table=LEDGER_TABLE))
    web = WebFrontend(runtime, port=0)
    environment = web.environment()
    # The deployed function's variables (WebStack passes web_api_environment the same context): one home.
    assert environment == web_api_environment(
        config, WebConfig.from_context(context.get, config), BUCKETS, LEDGER_TABLE
    )
    assert environment["WEB_MAX_UPLOAD_BYTES"] == str(context["webMaxUploadMb"] * 1024 * 1024)
    assert environment["WEB_MAX_RECORDING_SECONDS"] == str(context["webMaxRecordingSeconds"])
    assert environment["WEB_URL_TTL_SECONDS"] == str(context["webUrlTtlSeconds"])
    page = web.page_config()
    assert (page["maxUploadBytes"], page["maxRecordingSeconds"]) == (
        int(environment["WEB_MAX_UPLOAD_BYTES"]),
        int(environment["WEB_MAX_RECORDING_SECONDS"]),
    ), "the page stops and refuses where the API does"
    # --max-seconds replaces webMaxRecordingSeconds for both, under the same rules.
    shorter = WebFrontend(runtime, port=0, web=load_web_config(config, max_recording_seconds=30))
    assert (
        shorter.environment()["WEB_MAX_RECORDING_SECONDS"] == "30"
        and shorter.page_config()["maxRecordingSeconds"] == 30
    )
