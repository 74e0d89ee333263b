"""The upload ledger: one DynamoDB item per input key, naming the upload that is current and how far it got.

Every handler advances an item with conditional writes, so whatever interleaves, the item is the one truth
about which upload of a key is current. `pipeline_common.results` builds "one upload, one result" on it;
docs/CONTRACTS.md has the protocol and its state diagram. The attribute names below are InfraStack's table
schema too (infra/pipeline.py; a test keeps both equal). Low-level client only: the resource layer would
add to every cold start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline_common.aws_errors import error_code
from pipeline_common.ledger_items import (
    condition_values,
    map_attr,
    names_in,
    number_attr,
    placeholders,
    string_attr,
)

logger = logging.getLogger(__name__)

PARTITION_KEY = "upload_key"
PENDING = "pending"
UPDATED_AT = "updated_at"
PENDING_INDEX = "pending-by-age"
# The value of PENDING while an upload is in flight; the attribute is removed once its result is final.
PENDING_VALUE = "1"

RECEIVED = "received"
TRANSCRIBING = "transcribing"
GENERATING = "generating"
# Asynchronous endpoint: the request is queued at SageMaker ("waiting for the GPU") until its notification.
WAITING = "waiting"
DONE = "done"
FAILED = "failed"
STAGES = (RECEIVED, TRANSCRIBING, GENERATING, WAITING, DONE, FAILED)
FINAL_STAGES = (DONE, FAILED)
# S3 sequencers are hex strings of varying length, compared after left-padding with zeros (S3 docs).
SEQUENCER_WIDTH = 64
_CONDITION_FAILED = "ConditionalCheckFailedException"


class LedgerError(RuntimeError):
    """The ledger refused an update; `entry` is the item as it was (None when there is none)."""

    def __init__(self, message: str, entry: Entry | None) -> None:
        super().__init__(message)
        self.entry = entry


def normalise_sequencer(sequencer: str) -> str:
    """An S3 sequencer left-padded with zeros, so that string order is event order for one key."""
    value = sequencer.strip().upper()
    if not value or len(value) > SEQUENCER_WIDTH or any(char not in "0123456789ABCDEF" for char in value):
        raise ValueError(f"{sequencer!r} is not an S3 sequencer (a hex string)")
    return value.rjust(SEQUENCER_WIDTH, "0")


@dataclass(frozen=True)
class Upload:
    """One upload: an object version under a key, ordered among the key's uploads by its S3 sequencer."""

    key: str
    upload_id: str
    sequencer: str
    etag: str | None = None


@dataclass(frozen=True)
class Entry:
    """A ledger item: the current upload of a key and its progress."""

    key: str
    upload_id: str
    sequencer: str
    stage: str
    received_at: str
    updated_at: str
    etag: str | None = None
    job_name: str | None = None
    lease_token: str | None = None
    lease_until: float | None = None
    writer_token: str | None = None
    writer_until: float | None = None
    result: Mapping[str, str] | None = None
    internal_error: Mapping[str, str] | None = None

    @property
    def final(self) -> bool:
        """True once the upload has its result (image set or error record)."""
        return self.stage in FINAL_STAGES

    def is_upload(self, upload_id: str) -> bool:
        """True when this entry is about the upload `upload_id`."""
        return self.upload_id == upload_id


@dataclass(frozen=True)
class Claim:
    """What claiming an upload found: `new` (it is now current), `repeat` (it already was) or `stale`."""

    outcome: str
    entry: Entry


def _from_item(item: Mapping[str, Any]) -> Entry:
    def text(name: str) -> str | None:
        value = item.get(name)
        return value["S"] if value and "S" in value else None

    def number(name: str) -> float | None:
        value = item.get(name)
        return float(value["N"]) if value and "N" in value else None

    def mapping(name: str) -> dict[str, str] | None:
        value = item.get(name)
        return {k: v["S"] for k, v in value["M"].items() if "S" in v} if value and "M" in value else None

    return Entry(
        key=text(PARTITION_KEY) or "",
        upload_id=text("upload_id") or "",
        sequencer=text("sequencer") or "",
        stage=text("stage") or "",
        received_at=text("received_at") or "",
        updated_at=text(UPDATED_AT) or "",
        etag=text("etag"),
        job_name=text("job_name"),
        lease_token=text("lease_token"),
        lease_until=number("lease_until"),
        writer_token=text("writer_token"),
        writer_until=number("writer_until"),
        result=mapping("result"),
        internal_error=mapping("internal_error"),
    )


class DynamoLedger:
    """The ledger in a DynamoDB table (InfraStack's `UploadLedger`), through a low-level client."""

    def __init__(self, client: Any, table: str) -> None:
        """Use `client` (a boto3 DynamoDB client) on `table`."""
        self.client = client
        self.table = table

    def get(self, key: str) -> Entry | None:
        """The key's entry, read consistently; None when the ledger has never seen the key."""
        item = self.client.get_item(
            TableName=self.table, Key={PARTITION_KEY: string_attr(key)}, ConsistentRead=True
        ).get("Item")
        return _from_item(item) if item else None

    def get_many(self, keys: list[str]) -> dict[str, Entry]:
        """The entries of `keys` that the ledger has (BatchGetItem, 100 keys a request), by key."""
        found: dict[str, Entry] = {}
        for start in range(0, len(keys), 100):
            request: dict[str, Any] = {
                self.table: {
                    "Keys": [{PARTITION_KEY: string_attr(key)} for key in dict.fromkeys(keys[start : start + 100])]
                }
            }
            # DynamoDB may leave keys unprocessed under load; they come back to be asked for again.
            while request:
                response = self.client.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.table, []):
                    entry = _from_item(item)
                    found[entry.key] = entry
                request = response.get("UnprocessedKeys") or {}
        return found

    def claim(self, upload: Upload, now: str) -> Claim:
        """Make `upload` the key's current upload unless the ledger already has it or a later one."""
        try:
            entry = self._update(
                upload.key,
                sets={
                    "upload_id": string_attr(upload.upload_id),
                    "sequencer": string_attr(upload.sequencer),
                    "stage": string_attr(RECEIVED),
                    "received_at": string_attr(now),
                    UPDATED_AT: string_attr(now),
                    PENDING: string_attr(PENDING_VALUE),
                    **({"etag": string_attr(upload.etag)} if upload.etag else {}),
                },
                # A new upload starts clean: its predecessor's job, result and leases are not its own. The
                # writer lock stays: a writer of the predecessor may still be undoing its result.
                removes=("job_name", "result", "internal_error", "lease_token", "lease_until"),
                condition="attribute_not_exists(#upload_key) OR #sequencer < :c_sequencer",
                values={":c_sequencer": string_attr(upload.sequencer)},
            )
            return Claim("new", entry)
        except LedgerError as refused:
            current = refused.entry
            if current is None:
                raise
            return Claim("repeat" if current.is_upload(upload.upload_id) else "stale", current)

    def advance(
        self,
        key: str,
        upload_id: str,
        *,
        to: str,
        expect: tuple[str, ...],
        now: str,
        job_name: str | None = None,
    ) -> Entry:
        """Move the upload from one of the `expect` stages to `to`; `LedgerError` when that no longer holds."""
        return self._update(
            key,
            sets={
                "stage": string_attr(to),
                UPDATED_AT: string_attr(now),
                **({"job_name": string_attr(job_name)} if job_name else {}),
            },
            condition=f"#upload_id = :c_upload AND #stage IN ({placeholders('expect', expect)})",
            values={":c_upload": string_attr(upload_id), **condition_values("expect", expect)},
        )

    def begin_generation(
        self, key: str, upload_id: str, *, token: str, until: float, now: str, clock: float, stage: str = GENERATING
    ) -> Entry:
        """Take the generation lease: no other attempt for this upload is generating, or its lease ran out.

        `stage` is GENERATING for a real-time call, WAITING for a request queued at an asynchronous endpoint.
        """
        if stage not in (GENERATING, WAITING):
            raise ValueError(f"a generation lease is taken for {GENERATING!r} or {WAITING!r}, not {stage!r}")
        return self._update(
            key,
            sets={
                "stage": string_attr(stage),
                "lease_token": string_attr(token),
                "lease_until": number_attr(until),
                UPDATED_AT: string_attr(now),
            },
            condition=(
                "#upload_id = :c_upload AND (#stage IN (:c_received, :c_transcribing) OR "
                "(#stage IN (:c_generating, :c_waiting) AND "
                "(attribute_not_exists(#lease_until) OR #lease_until < :c_clock)))"
            ),
            values={
                ":c_upload": string_attr(upload_id),
                ":c_received": string_attr(RECEIVED),
                ":c_transcribing": string_attr(TRANSCRIBING),
                ":c_generating": string_attr(GENERATING),
                ":c_waiting": string_attr(WAITING),
                ":c_clock": number_attr(clock),
            },
        )

    def end_generation(self, key: str, upload_id: str, *, token: str) -> bool:
        """Give the lease back after a transient failure, so a retry need not wait for it to run out."""
        try:
            self._update(
                key,
                sets={"stage": string_attr(TRANSCRIBING)},
                removes=("lease_token", "lease_until"),
                condition="#upload_id = :c_upload AND #lease_token = :c_token",
                values={":c_upload": string_attr(upload_id), ":c_token": string_attr(token)},
            )
        except LedgerError:
            return False
        return True

    def acquire_writer(
        self,
        key: str,
        upload_id: str,
        *,
        token: str,
        until: float,
        clock: float,
        expect_updated_at: str | None = None,
    ) -> Entry:
        """Lock the key's results for one writer of the current, unfinished upload.

        `expect_updated_at` (the sweeper) also requires that the upload has not moved since it was read.
        """
        condition = (
            "#upload_id = :c_upload AND NOT #stage IN (:c_done, :c_failed) AND "
            "(attribute_not_exists(#writer_token) OR #writer_until < :c_clock)"
        )
        values = {
            ":c_upload": string_attr(upload_id),
            ":c_done": string_attr(DONE),
            ":c_failed": string_attr(FAILED),
            ":c_clock": number_attr(clock),
        }
        if expect_updated_at is not None:
            condition += f" AND #{UPDATED_AT} = :c_updated"
            values[":c_updated"] = string_attr(expect_updated_at)
        return self._update(
            key,
            sets={"writer_token": string_attr(token), "writer_until": number_attr(until)},
            condition=condition,
            values=values,
        )

    def commit(self, key: str, upload_id: str, *, token: str, stage: str, result: Mapping[str, str], now: str) -> Entry:
        """Record the upload's final result and unlock; `LedgerError` when the upload is no longer current."""
        if stage not in FINAL_STAGES:
            raise ValueError(f"a result's stage is one of {FINAL_STAGES}, not {stage!r}")
        return self._update(
            key,
            sets={"stage": string_attr(stage), "result": map_attr(result), UPDATED_AT: string_attr(now)},
            removes=("writer_token", "writer_until", PENDING, "lease_token", "lease_until", "internal_error"),
            condition="#upload_id = :c_upload AND #writer_token = :c_token",
            values={":c_upload": string_attr(upload_id), ":c_token": string_attr(token)},
        )

    def note_internal_error(self, key: str, upload_id: str, *, token: str, note: Mapping[str, str]) -> Entry:
        """Mark the current upload as having an `internal-error` record and unlock; its stage stays."""
        return self._update(
            key,
            sets={"internal_error": map_attr(note)},
            removes=("writer_token", "writer_until"),
            condition="#upload_id = :c_upload AND #writer_token = :c_token",
            values={":c_upload": string_attr(upload_id), ":c_token": string_attr(token)},
        )

    def release_writer(self, key: str, *, token: str) -> bool:
        """Unlock if `token` still holds the lock; False when it does not (expired and taken, or released)."""
        try:
            self._update(
                key,
                sets={},
                removes=("writer_token", "writer_until"),
                condition="#writer_token = :c_token",
                values={":c_token": string_attr(token)},
            )
        except LedgerError:
            return False
        return True

    def pending_before(self, cutoff: str, *, index: str = PENDING_INDEX) -> Iterator[Entry]:
        """Every in-flight upload whose stage last moved before `cutoff` (ISO-8601 UTC), oldest first."""
        arguments: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": index,
            "KeyConditionExpression": "#pending = :pending AND #updated_at < :cutoff",
            "ExpressionAttributeNames": {"#pending": PENDING, "#updated_at": UPDATED_AT},
            "ExpressionAttributeValues": {":pending": string_attr(PENDING_VALUE), ":cutoff": string_attr(cutoff)},
        }
        while True:
            response = self.client.query(**arguments)
            for item in response.get("Items", []):
                yield _from_item(item)
            if "LastEvaluatedKey" not in response:
                return
            arguments["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _update(
        self,
        key: str,
        *,
        sets: Mapping[str, dict[str, Any]],
        condition: str,
        values: Mapping[str, dict[str, Any]],
        removes: tuple[str, ...] = (),
    ) -> Entry:
        """One conditional UpdateItem; `LedgerError` (with the item as it was) when the condition fails."""
        names = {f"#{name}": name for name in (*sets, *removes)}
        # Only names the expressions use: DynamoDB rejects unused ExpressionAttributeNames/Values.
        names |= {f"#{name}": name for name in names_in(condition)}
        expression = ""
        if sets:
            expression += "SET " + ", ".join(f"#{name} = :v_{index}" for index, name in enumerate(sets))
        if removes:
            expression += " REMOVE " + ", ".join(f"#{name}" for name in removes)
        arguments: dict[str, Any] = {
            "TableName": self.table,
            "Key": {PARTITION_KEY: string_attr(key)},
            "UpdateExpression": expression.strip(),
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ReturnValues": "ALL_NEW",
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        all_values = {f":v_{index}": value for index, value in enumerate(sets.values())} | dict(values)
        if all_values:
            arguments["ExpressionAttributeValues"] = all_values
        try:
            response = self.client.update_item(**arguments)
        except Exception as error:
            if error_code(error) != _CONDITION_FAILED:
                raise
            item = getattr(error, "response", {}).get("Item")
            entry = _from_item(item) if item else None
            raise LedgerError(f"ledger condition failed for {key!r}: {condition}", entry) from None
        return _from_item(response["Attributes"])
