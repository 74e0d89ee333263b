"""The ledger protocol on moto DynamoDB: ordering, repeats, leases, the writer lock, the pending index."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pipeline_common.ledger import (
    DONE,
    GENERATING,
    RECEIVED,
    TRANSCRIBING,
    DynamoLedger,
    LedgerError,
    Upload,
    normalise_sequencer,
)
from tests.lambdas.support import LEDGER_TABLE, Aws

KEY = "notes/idea.mp3"
NOW = "2026-12-02T10:00:00.000Z"


class Recording:
    """A DynamoDB client that keeps every request's parameters."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.requests: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        def call(**params: Any) -> Any:
            self.requests.append(params)
            return method(**params)

        return call


@pytest.fixture
def client(aws: Aws) -> Recording:
    """The moto client, recording requests."""
    return Recording(aws.dynamodb)


@pytest.fixture
def ledger(client: Recording) -> DynamoLedger:
    """The ledger on moto's table."""
    return DynamoLedger(client, LEDGER_TABLE)


def upload(version: str, sequencer: int) -> Upload:
    """An upload of KEY."""
    return Upload(KEY, version, normalise_sequencer(f"{sequencer:X}"), etag=f"etag-{version}")


def test_sequencers_compare_as_s3_documents_after_left_padding() -> None:
    """Different lengths: pad with zeros on the left, then compare as strings."""
    assert "FF" > "100"  # why the padding matters: raw strings compare wrongly
    assert normalise_sequencer("100") > normalise_sequencer("FF")
    assert normalise_sequencer("0062e9e3a4e1f7a2b1") == normalise_sequencer("62E9E3A4E1F7A2B1")
    with pytest.raises(ValueError, match="not an S3 sequencer"):
        normalise_sequencer("xyz")


def test_a_newer_upload_takes_the_key_and_an_older_event_never_does(ledger: DynamoLedger) -> None:
    """Claims follow the S3 sequencer, whatever order the events arrive in."""
    assert ledger.claim(upload("b", 2), NOW).outcome == "new"
    late = ledger.claim(upload("a", 1), NOW)
    assert late.outcome == "stale" and late.entry.upload_id == "b"
    assert ledger.claim(upload("b", 2), NOW).outcome == "repeat"
    newer = ledger.claim(upload("c", 3), NOW)
    assert newer.outcome == "new" and newer.entry.stage == RECEIVED
    assert ledger.get(KEY).upload_id == "c"  # type: ignore[union-attr]


def test_a_claim_clears_the_previous_uploads_progress_but_not_its_writer_lock(ledger: DynamoLedger) -> None:
    """The new upload starts clean; a writer of the old one may still be undoing and keeps the lock."""
    ledger.claim(upload("a", 1), NOW)
    ledger.advance(KEY, "a", to=TRANSCRIBING, expect=(RECEIVED,), now=NOW, job_name="s2i-a")
    ledger.acquire_writer(KEY, "a", token="t", until=2e9, clock=1e9)
    entry = ledger.claim(upload("b", 2), NOW).entry
    assert entry.job_name is None and entry.stage == RECEIVED
    assert entry.writer_token == "t"
    with pytest.raises(LedgerError):
        ledger.acquire_writer(KEY, "b", token="u", until=2e9, clock=1e9)
    # Once the lock runs out, the new upload's writer gets it.
    assert ledger.acquire_writer(KEY, "b", token="u", until=4e9, clock=3e9).writer_token == "u"


def test_advance_holds_only_from_the_expected_stages_of_the_current_upload(ledger: DynamoLedger) -> None:
    """A stale or out-of-order step is refused, with the item as it is."""
    ledger.claim(upload("a", 1), NOW)
    with pytest.raises(LedgerError) as refused:
        ledger.advance(KEY, "other", to=TRANSCRIBING, expect=(RECEIVED,), now=NOW)
    assert refused.value.entry is not None and refused.value.entry.upload_id == "a"
    with pytest.raises(LedgerError):
        ledger.advance(KEY, "a", to=TRANSCRIBING, expect=(GENERATING,), now=NOW)
    assert ledger.advance(KEY, "a", to=TRANSCRIBING, expect=(RECEIVED,), now=NOW).stage == TRANSCRIBING


def test_one_generation_lease_at_a_time_until_it_runs_out_or_is_given_back(ledger: DynamoLedger) -> None:
    """A second attempt is refused while the lease holds; it may take over an expired one."""
    ledger.claim(upload("a", 1), NOW)
    ledger.begin_generation(KEY, "a", token="one", until=100.0, now=NOW, clock=50.0)
    with pytest.raises(LedgerError):
        ledger.begin_generation(KEY, "a", token="two", until=160.0, now=NOW, clock=60.0)
    assert ledger.begin_generation(KEY, "a", token="two", until=300.0, now=NOW, clock=200.0).lease_token == "two"
    assert ledger.end_generation(KEY, "a", token="one") is False
    assert ledger.end_generation(KEY, "a", token="two") is True
    assert ledger.get(KEY).stage == TRANSCRIBING  # type: ignore[union-attr]


def test_commit_needs_the_lock_and_the_same_upload_and_finishes_the_item(ledger: DynamoLedger) -> None:
    """A final result leaves the pending index and the lock; later writers see `done`."""
    ledger.claim(upload("a", 1), NOW)
    ledger.acquire_writer(KEY, "a", token="t", until=2e9, clock=1e9)
    with pytest.raises(LedgerError):
        ledger.commit(KEY, "a", token="not-mine", stage=DONE, result={"kind": "image", "key": "k"}, now=NOW)
    entry = ledger.commit(KEY, "a", token="t", stage=DONE, result={"kind": "image", "key": "k"}, now=NOW)
    assert entry.final and entry.result == {"kind": "image", "key": "k"} and entry.writer_token is None
    with pytest.raises(LedgerError) as refused:
        ledger.acquire_writer(KEY, "a", token="u", until=2e9, clock=1e9)
    assert refused.value.entry is not None and refused.value.entry.final
    with pytest.raises(ValueError, match="stage"):
        ledger.commit(KEY, "a", token="t", stage=TRANSCRIBING, result={}, now=NOW)


def test_the_pending_index_lists_unfinished_uploads_older_than_the_cutoff(aws: Aws, ledger: DynamoLedger) -> None:
    """Oldest first; finished uploads are not in the sparse index."""
    for index, when in enumerate(("2026-12-02T08:00:00.000Z", "2026-12-02T09:00:00.000Z", "2026-12-02T11:00:00.000Z")):
        ledger.claim(Upload(f"k{index}.mp3", f"v{index}", normalise_sequencer("1")), when)
    ledger.acquire_writer("k1.mp3", "v1", token="t", until=2e9, clock=1e9)
    ledger.commit("k1.mp3", "v1", token="t", stage=DONE, result={"kind": "image", "key": "x"}, now=NOW)
    assert [entry.key for entry in ledger.pending_before(NOW)] == ["k0.mp3"]


def test_every_request_uses_each_name_and_value_it_declares(ledger: DynamoLedger, client: Recording) -> None:
    """Real DynamoDB rejects unused ExpressionAttributeNames/Values (moto accepts them): check it here."""
    ledger.claim(upload("a", 1), NOW)
    ledger.claim(Upload("no-etag.mp3", "v", normalise_sequencer("1")), NOW)
    ledger.advance(KEY, "a", to=TRANSCRIBING, expect=(RECEIVED,), now=NOW, job_name="s2i-a")
    ledger.begin_generation(KEY, "a", token="g", until=2e9, now=NOW, clock=1e9)
    ledger.end_generation(KEY, "a", token="g")
    ledger.acquire_writer(KEY, "a", token="t", until=2e9, clock=1e9, expect_updated_at=NOW)
    ledger.note_internal_error(KEY, "a", token="t", note={"key": "errors/x.json"})
    ledger.acquire_writer(KEY, "a", token="t2", until=2e9, clock=1e9)
    ledger.release_writer(KEY, token="t2")
    ledger.acquire_writer(KEY, "a", token="t3", until=2e9, clock=1e9)
    ledger.commit(KEY, "a", token="t3", stage=DONE, result={"kind": "image", "key": "k"}, now=NOW)
    list(ledger.pending_before(NOW))
    assert len(client.requests) >= 10
    for params in client.requests:
        text = " ".join(
            params.get(name, "") for name in ("UpdateExpression", "ConditionExpression", "KeyConditionExpression")
        )
        used = set(re.findall(r"[#:][A-Za-z0-9_]+", text))
        declared = set(params.get("ExpressionAttributeNames", {})) | set(params.get("ExpressionAttributeValues", {}))
        assert declared == used & declared and declared >= {token for token in used}, params
