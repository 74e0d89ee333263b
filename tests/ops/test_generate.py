"""`make generate`: upload to the deployed pipeline, follow the ledger, fetch the result (moto S3 and DynamoDB).

The pipeline itself is simulated between polls: each poll's sleep lets it take one step, writing what the
real handlers write (ledger stages, then the image set or the error record, then the final ledger stage).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from infra.pipeline import ERROR_PREFIX, IMAGE_PREFIX, ledger_table_schema
from ops import generate as module
from ops.generate import main
from ops.upload_status import STAGE_WORDS, starting_from_zero
from tests.ops.deployed import DeployedSession, Outputs
from tests.ops.support import REGION

STACK = {
    "InputBucketName": "input-bucket",
    "OutputBucketName": "output-bucket",
    "LedgerTableName": "ledger",
    "EndpointName": "sd",
}
PNG = b"\x89PNG\r\n\x1a\nfake"


@dataclass
class Pipeline:
    """The deployed pipeline as the command sees it: what the handlers write, one step per poll."""

    s3: Any
    dynamodb: Any
    now: float = 0.0
    # Per upload key, the steps still to happen (each writes to the ledger or the output bucket).
    steps: dict[str, list[Callable[[], None]]] = field(default_factory=dict)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        """Time passes, and every upload in flight moves one step."""
        self.now += seconds
        for pending in self.steps.values():
            if pending:
                pending.pop(0)()

    def version(self, key: str) -> str:
        return str(self.s3.head_object(Bucket="input-bucket", Key=key)["VersionId"])

    def ledger(self, key: str, stage: str, result: dict[str, str] | None = None) -> Callable[[], None]:
        def write() -> None:
            item = {"upload_key": {"S": key}, "upload_id": {"S": self.version(key)}, "stage": {"S": stage}}
            if result:
                item["result"] = {"M": {name: {"S": value} for name, value in result.items()}}
            self.dynamodb.put_item(TableName="ledger", Item=item)

        return write

    def succeeds(self, key: str, transcript: str) -> None:
        """The pipeline turns `key` into an image set."""

        def images() -> None:
            base = f"{IMAGE_PREFIX}{key}"
            self.s3.put_object(Bucket="output-bucket", Key=f"{base}.png", Body=PNG)
            self.s3.put_object(Bucket="output-bucket", Key=f"{base}.html", Body=b"<html>page</html>")
            document = {"transcript": transcript, "prompt": transcript, "parameters": {"seed": 1}}
            self.s3.put_object(Bucket="output-bucket", Key=f"{base}.json", Body=json.dumps(document).encode())

        self.steps[key] = [
            self.ledger(key, "received"),
            self.ledger(key, "transcribing"),
            self.ledger(key, "waiting"),
            self.ledger(key, "generating"),
            images,
            self.ledger(key, "done", {"kind": "image", "key": f"{IMAGE_PREFIX}{key}.png"}),
        ]

    def fails(self, key: str) -> None:
        """The pipeline answers `key` with an error record (a file that is not audio)."""
        record = {
            "status": "error",
            "stage": "validate",
            "error": "unsupported-format",
            "reason": "notes.txt is not a recording Amazon Transcribe accepts",
            "action": "upload an mp3, mp4, m4a, wav, flac, ogg, webm or amr file",
        }
        self.steps[key] = [
            self.ledger(key, "received"),
            lambda: self.s3.put_object(
                Bucket="output-bucket", Key=f"{ERROR_PREFIX}{key}.json", Body=json.dumps(record).encode()
            ),
            self.ledger(key, "failed", {"kind": "error", "key": f"{ERROR_PREFIX}{key}.json", "code": "x"}),
        ]


@pytest.fixture
def pipeline(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    """A deployed InfraStack in moto: versioned input bucket, output bucket, ledger table, and its outputs."""
    s3 = boto3.client("s3", region_name=REGION)
    for bucket in ("input-bucket", "output-bucket"):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket="input-bucket", VersioningConfiguration={"Status": "Enabled"})
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.create_table(TableName="ledger", BillingMode="PAY_PER_REQUEST", **ledger_table_schema())
    session = DeployedSession(Outputs({"InfraStack": STACK}))
    monkeypatch.setattr(module, "_session", lambda region: session)
    yield Pipeline(s3=s3, dynamodb=dynamodb)


def recording(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"ID3 not really audio")
    return path


def run(pipeline: Pipeline, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, sleep=pipeline.sleep, clock=pipeline.clock)
    return code, out.getvalue(), err.getvalue()


def test_a_recording_ends_as_an_image_set_in_the_out_folder(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.succeeds("castle.mp3", "a castle at sunset")

    code, out, err = run(pipeline, str(recording(tmp_path, "castle.mp3")), "--out", str(tmp_path / "results"))

    assert code == 0, out + err
    results = tmp_path / "results"
    assert (results / "castle.mp3.png").read_bytes() == PNG
    assert json.loads((results / "castle.mp3.json").read_text())["transcript"] == "a castle at sunset"
    assert (results / "castle.mp3.html").read_text() == "<html>page</html>"
    assert (results / "index.html").is_file()
    assert "transcript: 'a castle at sunset'" in out
    assert "1 of 1 files produced an image" in out
    # The live stages, in order, in the words `local run` and the page use.
    said = [line.split(": ", 1)[1].rsplit(" (", 1)[0] for line in err.splitlines() if "castle.mp3: " in line]
    assert said[1:] == ["received", "transcribing", "waiting for the GPU", "generating", "done"]
    assert said[0].startswith("uploaded to s3://input-bucket/castle.mp3")


def test_a_failed_upload_prints_the_reason_and_what_to_do(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.succeeds("castle.mp3", "a castle")
    pipeline.fails("notes.txt")

    code, out, _ = run(
        pipeline,
        str(recording(tmp_path, "castle.mp3")),
        str(recording(tmp_path, "notes.txt")),
        "--out",
        str(tmp_path / "results"),
    )

    assert code == 1
    assert "notes.txt: error" in out
    assert "error (validate, unsupported-format): notes.txt is not a recording" in out
    assert "what to do: upload an mp3" in out
    record = json.loads((tmp_path / "results" / "notes.txt.error.json").read_text())
    assert record["error"] == "unsupported-format"
    assert "1 of 2 files produced an image" in out


def test_no_result_within_the_timeout_exits_1_and_says_what_to_do(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.succeeds("castle.mp3", "a castle")
    pipeline.steps["castle.mp3"] = pipeline.steps["castle.mp3"][:3]  # the GPU never comes

    code, out, _ = run(
        pipeline, str(recording(tmp_path, "castle.mp3")), "--out", str(tmp_path / "r"), "--timeout", "10"
    )

    assert code == 1
    assert "castle.mp3: still waiting for the GPU when --timeout 10 s ran out" in out
    assert "run again with a larger --timeout" in out
    assert pipeline.now >= 10


def test_an_upload_replaced_by_a_newer_one_of_the_same_name_is_reported(pipeline: Pipeline, tmp_path: Path) -> None:
    path = recording(tmp_path, "castle.mp3")
    pipeline.steps["castle.mp3"] = [
        lambda: pipeline.s3.put_object(Bucket="input-bucket", Key="castle.mp3", Body=b"newer")
    ]

    code, out, _ = run(pipeline, str(path), "--out", str(tmp_path / "r"))

    assert code == 1
    assert "error (upload, superseded): a newer upload of castle.mp3 replaced this one" in out


def test_usage_errors_exit_2(pipeline: Pipeline, tmp_path: Path) -> None:
    code, _, err = run(pipeline, str(tmp_path / "missing.mp3"))
    assert (code, err.strip()) == (2, f"error: {tmp_path / 'missing.mp3'}: no such file")

    code, _, err = run(pipeline, str(recording(tmp_path, "a.mp3")), "--stack", "WebStack")
    assert code == 2
    assert "stack WebStack not found" in err


def test_the_words_cover_every_ledger_stage() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lambdas"))
    try:
        from pipeline_common.ledger import STAGES
    finally:
        sys.path.pop(0)
    assert set(STAGES) <= set(STAGE_WORDS)
    assert STAGE_WORDS["waiting"] == "waiting for the GPU"


@dataclass
class FakeSageMaker:
    """DescribeEndpoint of an async endpoint with `instances` running."""

    instances: int

    def describe_endpoint(self, EndpointName: str) -> dict[str, Any]:
        return {"ProductionVariants": [{"VariantName": "AllTraffic", "CurrentInstanceCount": self.instances}]}


def test_a_gpu_at_zero_instances_is_reported_as_starting(aws: None) -> None:
    assert starting_from_zero(FakeSageMaker(0), "sd")
    assert not starting_from_zero(FakeSageMaker(1), "sd")
    # No endpoint yet (moto knows none) or no permission: only the nicer word is lost.
    assert not starting_from_zero(boto3.client("sagemaker", region_name=REGION), "sd")
    assert not starting_from_zero(FakeSageMaker(0), None)
