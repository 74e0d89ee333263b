"""Shared helpers for the local-mode tests (imported explicitly; tests/local has no conftest of its own)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
AUDIO = REPO / "tests" / "fixtures" / "audio"
MANIFEST: dict[str, Any] = json.loads((AUDIO / "manifest.json").read_text(encoding="utf-8"))

# Nothing in these tests may reach the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# A handler that records what it was given, so the dispatcher's delivery can be checked from outside:
# the event, its environment and its context go to the output bucket under probe/<function>/<request id>.
PROBE_HANDLER = """
import json
import os
import time

import boto3


def s3_keys(event):
    keys = []
    for record in event.get("Records", []):
        if record.get("eventSource") == "aws:sqs":
            body = json.loads(record["body"])
            keys += [(record["messageId"], item["s3"]["object"]["key"]) for item in body.get("Records", [])]
        elif "s3" in record:
            keys.append((None, record["s3"]["object"]["key"]))
    return keys


def handler(event, context):
    keys = s3_keys(event)
    s3 = boto3.client("s3")
    s3.put_object(
        Bucket=os.environ["OUTPUT_BUCKET"],
        Key=f"probe/{context.function_name}/{context.aws_request_id}.json",
        Body=json.dumps(
            {
                "event": event,
                "environ": dict(os.environ),
                "context": {
                    "function_name": context.function_name,
                    "invoked_function_arn": context.invoked_function_arn,
                    "aws_request_id": context.aws_request_id,
                    "memory_limit_in_mb": context.memory_limit_in_mb,
                    "remaining_ms": context.get_remaining_time_in_millis(),
                },
            }
        ),
    )
    if any("slow" in key for _, key in keys):
        time.sleep(1.5)
    if any("crash" in key for _, key in keys):
        os._exit(3)  # the process dies mid-invocation, as a segfault or an out-of-memory kill would
    if any("fail" in key for _, key in keys):
        raise RuntimeError(f"probe asked to fail for {[key for _, key in keys]}")
    # ReportBatchItemFailures: only the messages about a "partial" key go back to the queue.
    failures = [{"itemIdentifier": message} for message, key in keys if "partial" in key and message]
    return {"keys": [key for _, key in keys], "batchItemFailures": failures}
"""


def s3_records(event: dict[str, Any]) -> list[dict[str, Any]]:
    """The S3 records of a delivered event: inside an SQS batch's message bodies, or straight."""
    records: list[dict[str, Any]] = []
    for record in event.get("Records", []):
        if record.get("eventSource") == "aws:sqs":
            records += json.loads(record["body"]).get("Records", [])
        elif "s3" in record:
            records.append(record)
    return records


def write_probe_lambdas(root: Path) -> Path:
    """A `lambdas/` asset root whose handlers are the probe above, under the real handler names."""
    from infra.pipeline import Handler

    for handler in Handler:
        package = root / handler.value
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text("", encoding="utf-8")
        (package / "handler.py").write_text(PROBE_HANDLER, encoding="utf-8")
    return root


def local_threads() -> list[str]:
    """Names of the threads local mode starts (all must be gone after stop())."""
    prefixes = ("local-", "s2i-local-", "load-")
    return sorted(thread.name for thread in threading.enumerate() if thread.name.startswith(prefixes))


def child_processes() -> set[int]:
    """Live child processes of this process (Linux /proc); empty where /proc is not available."""
    children: set[int] = set()
    for task in Path("/proc/self/task").glob("*"):
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        for pid in text.split():
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z":
                children.add(int(pid))
    return children
