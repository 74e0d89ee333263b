"""The web API handler against moto: the presigned POST's policy, isolation between people, stages, bad requests."""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
import pytest
from botocore.config import Config

from infra.config import PipelineConfig
from infra.pipeline import ERROR_PREFIX, IMAGE_PREFIX, Handler, handler_environment
from tests.lambdas.support import BUCKETS, INPUT_BUCKET, LEDGER_TABLE, OUTPUT_BUCKET, REGION, Aws, load_event

ALICE = "a1b2c3d4-0000-4000-8000-000000000001"
BOB = "b0b0b0b0-0000-4000-8000-000000000002"
MAX_BYTES = 1_000_000
TTL = 120


@pytest.fixture
def web(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The web_api handler module with the pipeline's common environment, the web limits and moto clients."""
    from web_api import handler

    # The common block and MEDIA_FORMATS, exactly as infra gives them to the pipeline's handlers.
    environment = handler_environment(Handler.TRANSCRIBE_FAILED, PipelineConfig(), BUCKETS, LEDGER_TABLE) | {
        "WEB_MAX_UPLOAD_BYTES": str(MAX_BYTES),
        "WEB_URL_TTL_SECONDS": str(TTL),
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    s3v4 = boto3.client("s3", region_name=REGION, config=Config(signature_version="s3v4"))
    handler.SETTINGS.reset()
    handler.CLIENTS.clear()
    handler.CLIENTS.inject(s3=s3v4, dynamodb=aws.dynamodb)
    try:
        yield handler
    finally:
        handler.SETTINGS.reset()
        handler.CLIENTS.clear()


def request(
    web: Any, method: str, path: str, *, sub: str | None = ALICE, body: Any = None, query: str = ""
) -> tuple[int, dict[str, Any]]:
    """Send one HTTP API (payload 2.0) request as the committed event, changed; the status and JSON body."""
    event = copy.deepcopy(load_event("web_api_post_uploads.json"))
    event["routeKey"] = event["requestContext"]["routeKey"] = f"{method} {path}"
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    event["rawQueryString"] = query
    if query:
        event["queryStringParameters"] = {k: v[0] for k, v in parse_qs(query).items()}
    event["body"] = body if body is None or isinstance(body, str) else json.dumps(body)
    if sub is None:
        del event["requestContext"]["authorizer"]
    else:
        event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = sub
    response = web.handler(event, None)
    assert response["headers"]["Content-Type"] == "application/json"
    return response["statusCode"], json.loads(response["body"])


def ask(web: Any, content_type: str = "audio/webm;codecs=opus", size: int = 48_213, **extra: Any) -> dict[str, Any]:
    status, body = request(web, "POST", "/uploads", body={"contentType": content_type, "size": size, **extra})
    assert status == 201, body
    return body


def policy_of(answer: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(answer["upload"]["fields"]["policy"]))


def input_keys(aws: Aws) -> list[str]:
    return [item["Key"] for item in aws.s3.list_objects_v2(Bucket=INPUT_BUCKET).get("Contents", [])]


def test_the_presigned_post_allows_one_key_one_type_and_the_configured_size(web: Any, aws: Aws) -> None:
    before = datetime.now(UTC)
    answer = ask(web)

    assert re.fullmatch(rf"web/{ALICE}/\d{{8}}T\d{{9}}Z-[0-9a-f]{{8}}\.webm", answer["key"])
    assert answer["key"] == f"web/{ALICE}/{answer['id']}.webm"
    assert answer["contentType"] == "audio/webm"
    fields = answer["upload"]["fields"]
    assert fields["key"] == answer["key"]
    assert fields["Content-Type"] == "audio/webm"
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    policy = policy_of(answer)
    conditions = policy["conditions"]
    assert {"bucket": INPUT_BUCKET} in conditions
    assert {"key": answer["key"]} in conditions
    assert {"Content-Type": "audio/webm"} in conditions
    assert ["content-length-range", 1, MAX_BYTES] in conditions
    # No starts-with: the browser cannot choose another key or type.
    assert not [item for item in conditions if isinstance(item, list) and item[0] == "starts-with"]
    expires = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    assert before + timedelta(seconds=TTL - 5) <= expires <= datetime.now(UTC) + timedelta(seconds=TTL + 5)
    assert urlparse(answer["upload"]["url"]).netloc.startswith(INPUT_BUCKET) or INPUT_BUCKET in answer["upload"]["url"]


@pytest.mark.parametrize(
    ("content_type", "file_name", "extension", "stored"),
    [
        ("audio/webm;codecs=opus", "", "webm", "audio/webm"),
        ("audio/ogg; codecs=opus", "", "ogg", "audio/ogg"),
        ("audio/mp4", "", "mp4", "audio/mp4"),
        ("audio/x-m4a", "memo.m4a", "m4a", "audio/mp4"),
        ("audio/x-wav", "", "wav", "audio/wav"),
        ("audio/mpeg", "", "mp3", "audio/mpeg"),
        ("audio/flac", "", "flac", "audio/flac"),
        ("", "lake.flac", "flac", "audio/flac"),
        ("application/octet-stream", "robot.AMR", "amr", "audio/amr"),
    ],
)
def test_recorder_and_file_types_map_to_an_extension_transcribe_accepts(
    web: Any, content_type: str, file_name: str, extension: str, stored: str
) -> None:
    answer = ask(web, content_type, fileName=file_name)
    assert answer["key"].endswith(f".{extension}")
    assert {"Content-Type": stored} in policy_of(answer)["conditions"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"contentType": "text/plain", "size": 10, "fileName": "notes.txt"}, "unsupported-type"),
        ({"contentType": "image/png", "size": 10}, "unsupported-type"),
        ({"contentType": "", "size": 10, "fileName": "notes.txt"}, "unsupported-type"),
        ({"contentType": "audio/webm", "size": MAX_BYTES + 1}, "too-large"),
        ({"contentType": "audio/webm", "size": 0}, "empty-file"),
        ({"contentType": "audio/webm", "size": "12"}, "bad-request"),
        ({"contentType": "audio/webm", "size": True}, "bad-request"),
        ({"contentType": "audio/webm"}, "bad-request"),
        ({"contentType": 5, "size": 10}, "bad-request"),
        ("not json", "bad-request"),
        ([1, 2], "bad-request"),
    ],
)
def test_bad_upload_requests_are_400_with_what_to_do_and_nothing_is_uploaded(
    web: Any, aws: Aws, body: Any, code: str
) -> None:
    status, answer = request(web, "POST", "/uploads", body=body)
    assert (status, answer["error"]) == (400, code)
    assert answer["reason"] and answer["action"]
    assert "upload" not in answer
    assert input_keys(aws) == []


def test_a_format_left_out_of_media_formats_is_refused(web: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIA_FORMATS", "mp3,wav")
    web.SETTINGS.reset()
    status, answer = request(web, "POST", "/uploads", body={"contentType": "audio/webm", "size": 10})
    assert (status, answer["error"]) == (400, "unsupported-type")
    assert "mp3, wav" in answer["action"]


@pytest.mark.parametrize("sub", [None, "", "../bob", "a/b"])
def test_every_route_needs_a_caller(web: Any, sub: str | None) -> None:
    for method, path in (("POST", "/uploads"), ("GET", "/uploads"), ("GET", "/uploads/20261202T071100000Z-0a1b2c3d")):
        status, answer = request(web, method, path, sub=sub, body={"contentType": "audio/webm", "size": 10})
        assert (status, answer["error"]) == (401, "unauthorized")


def put_upload(aws: Aws, answer: dict[str, Any], body: bytes = b"\x1a\x45\xdf\xa3 audio") -> None:
    """What the browser's POST does: the object at the policy's key."""
    aws.s3.put_object(Bucket=INPUT_BUCKET, Key=answer["key"], Body=body, ContentType=answer["contentType"])


def test_another_persons_upload_is_404_and_never_listed(web: Any, aws: Aws) -> None:
    answer = ask(web)
    put_upload(aws, answer)

    assert request(web, "GET", f"/uploads/{answer['id']}")[0] == 200
    status, body = request(web, "GET", f"/uploads/{answer['id']}", sub=BOB)
    assert (status, body["error"]) == (404, "not-found")
    assert request(web, "GET", "/uploads", sub=BOB) == (200, {"uploads": []})
    assert [item["id"] for item in request(web, "GET", "/uploads")[1]["uploads"]] == [answer["id"]]


@pytest.mark.parametrize("upload_id", ["20261202T071100000Z-0a1b2c3d", "nonsense", "..%2F..%2Fother"])
def test_an_unknown_or_malformed_id_is_404(web: Any, upload_id: str) -> None:
    status, body = request(web, "GET", f"/uploads/{upload_id}")
    assert (status, body["error"]) == (404, "not-found")


def ledger_item(key: str, stage: str, *, result: dict[str, str] | None = None, **extra: str) -> None:
    """A ledger item as the pipeline leaves it at `stage` (attributes of docs/CONTRACTS.md)."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    item: dict[str, Any] = {
        "upload_key": {"S": key},
        "upload_id": {"S": "version-1"},
        "sequencer": {"S": "0" * 63 + "1"},
        "stage": {"S": stage},
        "received_at": {"S": now},
        "updated_at": {"S": extra.get("updated_at", now)},
    }
    if result:
        item["result"] = {"M": {name: {"S": value} for name, value in result.items()}}
    if "internal_error" in extra:
        item["internal_error"] = {"M": {"code": {"S": extra["internal_error"]}}}
    boto3.client("dynamodb", region_name=REGION).put_item(TableName=LEDGER_TABLE, Item=item)


@pytest.mark.parametrize(
    ("ledger_stage", "stage", "label"),
    [
        (None, "uploaded", "Uploaded"),
        ("received", "uploaded", "Uploaded"),
        ("transcribing", "transcribing", "Transcribing"),
        ("waiting", "waiting", "Waiting for the GPU"),
        ("generating", "generating", "Generating the picture"),
    ],
)
def test_the_ledger_stage_is_shown_in_plain_words(
    web: Any, aws: Aws, ledger_stage: str | None, stage: str, label: str
) -> None:
    answer = ask(web)
    put_upload(aws, answer)
    if ledger_stage:
        ledger_item(answer["key"], ledger_stage)
    status, body = request(web, "GET", f"/uploads/{answer['id']}")
    assert status == 200
    assert (body["stage"], body["stageLabel"], body["final"]) == (stage, label, False)
    assert 0 <= body["elapsedSeconds"] < 60
    assert "links" not in body and "error" not in body


def test_a_retried_step_is_reported(web: Any, aws: Aws) -> None:
    answer = ask(web)
    put_upload(aws, answer)
    ledger_item(answer["key"], "transcribing", internal_error="internal-error")
    assert request(web, "GET", f"/uploads/{answer['id']}")[1]["retrying"] is True


def finish(aws: Aws, answer: dict[str, Any], transcript: str = "a red apple on a wooden table") -> str:
    """The image set of an upload and its ledger item, as invoke_sd leaves them; the PNG's key."""
    base = f"{IMAGE_PREFIX}{answer['key']}"
    aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key=f"{base}.png", Body=b"\x89PNG")
    aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key=f"{base}.html", Body=b"<html></html>")
    metadata = {"transcript": transcript, "prompt": transcript, "parameters": {"seed": 7, "width": 64}, "notices": []}
    aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key=f"{base}.json", Body=json.dumps(metadata).encode())
    ledger_item(answer["key"], "done", result={"kind": "image", "key": f"{base}.png"})
    return f"{base}.png"


def test_a_done_upload_has_its_transcript_parameters_and_links(web: Any, aws: Aws) -> None:
    answer = ask(web)
    put_upload(aws, answer)
    png = finish(aws, answer)

    status, body = request(web, "GET", f"/uploads/{answer['id']}")
    assert status == 200
    assert (body["stage"], body["final"]) == ("done", True)
    assert body["transcript"] == "a red apple on a wooden table"
    assert body["parameters"] == {"seed": 7, "width": 64}
    image = urlparse(body["links"]["image"])
    assert image.path.endswith(png.replace("@", "%40")) or png in body["links"]["image"]
    assert parse_qs(image.query)["X-Amz-Expires"] == [str(TTL)]
    assert set(body["links"]) == {"image", "metadata", "html"}
    # The links are real: moto serves the objects they name.
    assert aws.s3.get_object(Bucket=OUTPUT_BUCKET, Key=png)["Body"].read() == b"\x89PNG"


def test_a_failed_upload_has_the_error_records_reason_and_action(web: Any, aws: Aws) -> None:
    answer = ask(web, "audio/wav", fileName="letter.wav")
    put_upload(aws, answer, b"Dear Ada, this is not audio.")
    record = {
        "status": "error",
        "stage": "validate",
        "error": "not-audio",
        "reason": "the content is not audio in a supported container",
        "action": "upload an audio recording; the file may be damaged or only renamed",
    }
    key = f"{ERROR_PREFIX}{answer['key']}.json"
    aws.s3.put_object(Bucket=OUTPUT_BUCKET, Key=key, Body=json.dumps(record).encode())
    ledger_item(answer["key"], "failed", result={"kind": "error", "key": key, "code": "not-audio", "stage": "validate"})

    body = request(web, "GET", f"/uploads/{answer['id']}")[1]
    assert (body["stage"], body["stageLabel"], body["final"]) == ("failed", "Failed", True)
    assert body["error"] == {
        "code": "not-audio",
        "stage": "validate",
        "reason": record["reason"],
        "action": record["action"],
    }
    listed = request(web, "GET", "/uploads")[1]["uploads"][0]
    assert listed["error"] == {"code": "not-audio", "stage": "validate"}


def test_a_failed_upload_whose_record_is_gone_still_says_what_to_do(web: Any, aws: Aws) -> None:
    answer = ask(web)
    put_upload(aws, answer)
    ledger_item(answer["key"], "failed", result={"kind": "error", "key": "errors/x.json", "code": "stuck"})
    error = request(web, "GET", f"/uploads/{answer['id']}")[1]["error"]
    assert error["code"] == "stuck" and error["action"] == "upload the recording again"


def test_history_is_newest_first_with_thumbnails(web: Any, aws: Aws) -> None:
    answers = [ask(web) for _ in range(3)]
    for answer in answers:
        put_upload(aws, answer)
    png = finish(aws, answers[1])
    # Not an upload of this API: never listed.
    aws.s3.put_object(Bucket=INPUT_BUCKET, Key=f"web/{ALICE}/notes.txt", Body=b"x")

    uploads = request(web, "GET", "/uploads")[1]["uploads"]
    assert [item["id"] for item in uploads] == sorted((answer["id"] for answer in answers), reverse=True)
    done = next(item for item in uploads if item["id"] == answers[1]["id"])
    assert set(done["links"]) == {"image"} and png.rsplit("/", 1)[-1] in done["links"]["image"]
    assert "transcript" not in done
    assert request(web, "GET", "/uploads", query="limit=2")[1]["uploads"] == uploads[:2]
    assert request(web, "GET", "/uploads", query="limit=0")[0] == 400
    assert request(web, "GET", "/uploads", query="limit=x")[0] == 400


def test_an_unknown_route_is_404(web: Any) -> None:
    assert request(web, "DELETE", "/uploads")[0] in (404, 405)


class _Recording(dict):
    """An environment that remembers which variables were read."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, name: str, default: Any = None) -> Any:
        self.read.add(name)
        return super().get(name, default)


def test_docs_api_lists_exactly_the_variables_the_handler_reads() -> None:
    from web_api.settings import Settings

    environment = _Recording(handler_environment(Handler.TRANSCRIBE_FAILED, PipelineConfig(), BUCKETS, LEDGER_TABLE))
    Settings.from_env(environment)
    api_md = (Path(__file__).resolve().parents[2] / "docs" / "API.md").read_text(encoding="utf-8")
    deployment = api_md.split("## Deployment", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", deployment, flags=re.MULTILINE))
    assert documented == environment.read


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("WEB_UPLOAD_PREFIX", "web", "must end"),
        ("WEB_UPLOAD_PREFIX", "/web/", "must end (and not start)"),
        ("WEB_MAX_UPLOAD_BYTES", "lots", "not a whole number"),
        ("WEB_URL_TTL_SECONDS", "0", "at least 1"),
        ("WEB_URL_TTL_SECONDS", str(8 * 24 * 3600), "at most"),
        ("MEDIA_FORMATS", "mp3,aiff", "Amazon Transcribe accepts"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str, words: str) -> None:
    from web_api.settings import Settings

    from pipeline_common.settings import SettingsError

    environment = handler_environment(Handler.TRANSCRIBE_FAILED, PipelineConfig(), BUCKETS, LEDGER_TABLE)
    with pytest.raises(SettingsError, match=name) as raised:
        Settings.from_env(environment | {name: value})
    assert words in str(raised.value)


def test_the_ledger_is_read_in_batches_of_a_hundred(aws: Aws) -> None:
    from pipeline_common.ledger import DynamoLedger

    keys = [f"web/{ALICE}/20261202T071100{index:03d}Z-0000000{index % 10}.webm" for index in range(230)]
    for key in keys[:150]:
        ledger_item(key, "transcribing")
    calls: list[int] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        calls.append(len(params["RequestItems"][LEDGER_TABLE]["Keys"]))

    event = "before-parameter-build.dynamodb.BatchGetItem"
    aws.dynamodb.meta.events.register(event, count)
    try:
        found = DynamoLedger(aws.dynamodb, LEDGER_TABLE).get_many(keys)
    finally:
        aws.dynamodb.meta.events.unregister(event, count)
    assert sorted(found) == sorted(keys[:150])
    assert {entry.stage for entry in found.values()} == {"transcribing"}
    assert calls == [100, 100, 30]
