"""Send the events waiting in the pipeline's dead-letter queues through the pipeline again.

Use it after fixing what made the functions fail (e.g. the endpoint was down). Each message is either
a Lambda on-failure destination record (the event is its `requestPayload`) or an EventBridge target
dead letter (the message body is the event, the `TARGET_ARN` attribute names the function); see
"Dead-letter records" in docs/CONTRACTS.md. A message is deleted only once its event was handed to
the function again; anything that cannot be replayed stays in the queue and is reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError, ProfileNotFound

log = logging.getLogger(__name__)

DEFAULT_STACK = "InfraStack"
OUTPUT_SUFFIX = "DeadLetterQueueUrl"
# Hides a received message while its event is sent again; an Event invoke returns in well under a second,
# so this only has to outlast botocore's own retries. A run that takes longer is still safe: a message that
# reappears is recognised by its id and not replayed twice.
VISIBILITY_TIMEOUT_S = 120
# SQS hands out at most 10 messages per ReceiveMessage and takes at most 10 entries per batch call.
SQS_BATCH = 10
# Long polling (any wait above 0) asks every SQS server, so an empty answer means an empty queue; short
# polling samples some servers and may answer empty while messages wait.
RECEIVE_WAIT_S = 1
# Longer error texts are cut: the report prints one line per message.
MAX_ERROR_CHARS = 300

FUNCTION_ARN = re.compile(
    r"^(?P<function>arn:[\w-]+:lambda:[\w-]+:\d{12}:function:[\w-]+)(?::(?P<qualifier>[\w$.-]+))?$",
    re.ASCII,
)
EVENTBRIDGE_ATTRIBUTES = ("RULE_ARN", "TARGET_ARN", "ERROR_CODE", "ERROR_MESSAGE")
QUEUE_MISSING_CODES = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}

NO_CREDENTIALS = "no AWS credentials: configure them (aws configure / AWS_PROFILE) and retry"
NO_REGION = "no AWS region: pass --region or set AWS_REGION (or a region in aws configure)"


class DeadLetterError(ValueError):
    """A message this tool cannot replay; the message says why."""


class StackNotFoundError(LookupError):
    """The CloudFormation stack that should name the dead-letter queues does not exist."""


@dataclass(frozen=True)
class DeadLetter:
    """One failed event read from a dead-letter queue."""

    message_id: str
    receipt_handle: str
    function_arn: str  # without a version qualifier such as :$LATEST
    payload: dict[str, Any]  # the original event to send again
    condition: str | None  # RetriesExhausted / EventAgeExceeded, or the EventBridge ERROR_CODE
    error: str | None  # short text of the last error

    @property
    def function_name(self) -> str:
        """The function's name, the last part of its ARN."""
        return self.function_arn.split(":")[6]


@dataclass
class ReplayReport:
    """What one run over one queue did; in a dry run `replayed` lists what would have been replayed."""

    replayed: list[DeadLetter] = field(default_factory=list)
    failed: list[tuple[DeadLetter, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (message id, why)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        """True when nothing failed and every message could be read."""
        return not self.failed and not self.unreadable


def unqualified_function_arn(arn: str) -> str:
    """The function ARN without a version (`:$LATEST`, `:7`); an alias stays, it is a deliberate route."""
    match = FUNCTION_ARN.match(arn)
    if match is None:
        raise DeadLetterError(f"not a Lambda function ARN: {arn!r}")
    qualifier = match["qualifier"]
    # A replay must reach the fixed code: a recorded version number would run the old code again.
    if qualifier is None or qualifier.startswith("$") or qualifier.isdigit():
        return match["function"]
    return arn


def _short(text: str) -> str:
    """One line, at most MAX_ERROR_CHARS characters."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _error_text(response_payload: Any) -> str | None:
    """`errorType: errorMessage` from a Lambda error payload (either part alone when the other is missing)."""
    if response_payload is None:
        return None
    if isinstance(response_payload, Mapping):
        parts = [response_payload.get("errorType"), response_payload.get("errorMessage")]
        text = ": ".join(str(part) for part in parts if part)
        return _short(text) if text else _short(json.dumps(response_payload))
    return _short(response_payload if isinstance(response_payload, str) else json.dumps(response_payload))


def _attribute(message: Mapping[str, Any], name: str) -> str | None:
    """A string message attribute, or None."""
    value = (message.get("MessageAttributes") or {}).get(name)
    return value.get("StringValue") if isinstance(value, Mapping) else None


def parse_dead_letter(message: Mapping[str, Any]) -> DeadLetter:
    """Read one SQS message (as ReceiveMessage returns it, with MessageAttributes) as a dead letter."""
    message_id = message.get("MessageId")
    receipt_handle = message.get("ReceiptHandle")
    if not message_id or not receipt_handle:
        raise DeadLetterError("not a received SQS message (no MessageId or ReceiptHandle)")
    try:
        body = json.loads(message.get("Body", ""))
    except (TypeError, ValueError) as exc:
        raise DeadLetterError(f"the body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise DeadLetterError(f"the body is JSON {type(body).__name__}, not an object")

    target_arn = _attribute(message, "TARGET_ARN")
    if target_arn is not None:
        # EventBridge could not deliver to its target: the body is the event itself.
        return DeadLetter(
            message_id=message_id,
            receipt_handle=receipt_handle,
            function_arn=unqualified_function_arn(target_arn),
            payload=body,
            condition=_attribute(message, "ERROR_CODE"),
            error=_short(text) if (text := _attribute(message, "ERROR_MESSAGE")) else None,
        )

    context = body.get("requestContext")
    if not isinstance(context, dict) or not isinstance(context.get("functionArn"), str):
        raise DeadLetterError(
            "neither a Lambda on-failure record (no requestContext.functionArn) "
            "nor an EventBridge dead letter (no TARGET_ARN attribute)"
        )
    if "requestPayload" not in body:
        raise DeadLetterError("Lambda on-failure record without requestPayload: the event is not in it")
    payload = body["requestPayload"]
    if not isinstance(payload, dict):
        raise DeadLetterError(f"requestPayload is {type(payload).__name__}, not an event object")
    condition = context.get("condition")
    return DeadLetter(
        message_id=message_id,
        receipt_handle=receipt_handle,
        function_arn=unqualified_function_arn(context["functionArn"]),
        payload=payload,
        condition=condition if isinstance(condition, str) else None,
        error=_error_text(body.get("responsePayload")),
    )


def _describe(exc: BaseException) -> str:
    """An exception as one short line."""
    text = str(exc)
    return _short(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _release(sqs: Any, queue_url: str, held: Mapping[str, str]) -> None:
    """Make the held messages visible again at once, instead of when their visibility timeout ends."""
    handles = list(held.values())
    for start in range(0, len(handles), SQS_BATCH):
        entries = [
            {"Id": str(index), "ReceiptHandle": handle, "VisibilityTimeout": 0}
            for index, handle in enumerate(handles[start : start + SQS_BATCH])
        ]
        try:
            response = sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
        except (BotoCoreError, ClientError) as exc:
            # Nothing is lost: the messages reappear by themselves when their visibility timeout ends.
            log.warning("could not make %d message(s) visible again: %s", len(entries), exc)
            continue
        for failure in response.get("Failed", []):
            log.warning("could not make a message visible again: %s", failure.get("Message", failure))


def replay_dead_letters(
    sqs: Any,
    queue_url: str,
    invoke: Callable[[str, dict[str, Any]], None],
    *,
    dry_run: bool = False,
    limit: int | None = None,
    wait_s: int = RECEIVE_WAIT_S,
) -> ReplayReport:
    """Send each dead-lettered event in the queue to its function again with `invoke`; delete it once sent.

    Receives until the queue gives nothing new (or `limit` messages were handled); no message is sent twice.
    A message whose invoke fails, an unreadable one, and every message of a dry run stay in the queue: they
    are kept invisible until the run ends, so that this run does not receive them again, then made visible.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    report = ReplayReport(dry_run=dry_run)
    held: dict[str, str] = {}  # message id -> newest receipt handle, to make visible again at the end
    sent: dict[str, str] = {}  # message id -> receipt handle, for messages whose event was sent again
    try:
        while limit is None or len(held) + len(sent) < limit:
            wanted = SQS_BATCH if limit is None else min(SQS_BATCH, limit - len(held) - len(sent))
            messages = sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=wanted,
                WaitTimeSeconds=wait_s,
                VisibilityTimeout=VISIBILITY_TIMEOUT_S,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            new = 0
            for message in messages:
                message_id = str(message.get("MessageId", "?"))
                handle = message.get("ReceiptHandle", "")
                if message_id in held:
                    # Its visibility timeout ran out during this run; only the newest receipt handle works.
                    held[message_id] = handle
                elif message_id in sent:
                    # SQS delivers at least once: a second copy of an event already sent again goes too.
                    _delete(sqs, queue_url, handle)
                else:
                    new += 1
                    _replay_one(sqs, queue_url, invoke, message, dry_run, report, held, sent)
            # Only messages this run already handled came back (their visibility timeout ran out during a long
            # run): receiving on would hand out the same ones for ever. Anything left waits for the next run.
            if not new:
                break
    finally:
        _release(sqs, queue_url, held)
    return report


def _delete(sqs: Any, queue_url: str, handle: str) -> str | None:
    """Delete one message; the error text when that failed."""
    try:
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=handle)
    except (BotoCoreError, ClientError) as exc:
        return _describe(exc)
    return None


def _replay_one(
    sqs: Any,
    queue_url: str,
    invoke: Callable[[str, dict[str, Any]], None],
    message: Mapping[str, Any],
    dry_run: bool,
    report: ReplayReport,
    held: dict[str, str],
    sent: dict[str, str],
) -> None:
    """Parse, send again and delete one message, recording the outcome in the report."""
    message_id = str(message.get("MessageId", "?"))
    handle = message.get("ReceiptHandle", "")
    try:
        letter = parse_dead_letter(message)
    except DeadLetterError as exc:
        report.unreadable.append((message_id, str(exc)))
        held[message_id] = handle
        return
    if dry_run:
        report.replayed.append(letter)
        held[message_id] = handle
        return
    try:
        invoke(letter.function_arn, letter.payload)
    except Exception as exc:  # whatever stops this one event, the others still get their turn
        report.failed.append((letter, _describe(exc)))
        held[message_id] = handle
        return
    sent[message_id] = handle
    problem = _delete(sqs, queue_url, handle)
    if problem is None:
        report.replayed.append(letter)
    else:
        # The event went through, but the message comes back: the user must know a later run repeats it.
        report.failed.append(
            (letter, f"sent again, but not deleted from the queue ({problem}); a later replay repeats it")
        )


def lambda_invoker(lambda_client: Any) -> Callable[[str, dict[str, Any]], None]:
    """An `invoke` that sends the event to the function asynchronously, as S3 and EventBridge do."""

    def invoke(function_arn: str, payload: dict[str, Any]) -> None:
        """Queue one asynchronous invocation; raises when Lambda does not accept it."""
        response = lambda_client.invoke(
            FunctionName=function_arn, InvocationType="Event", Payload=json.dumps(payload).encode()
        )
        # An accepted asynchronous invocation is 202; anything else means the event was not queued.
        if response.get("StatusCode") != 202:
            raise RuntimeError(f"Lambda answered {response.get('StatusCode')} instead of 202 Accepted")

    return invoke


def dead_letter_queue_urls(cloudformation: Any, stack_name: str) -> dict[str, str]:
    """The stack's outputs whose name ends in "DeadLetterQueueUrl": output name -> queue URL."""
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        # CloudFormation reports a missing stack as a generic ValidationError; only the text tells.
        if error.get("Code") == "ValidationError" and "does not exist" in error.get("Message", ""):
            raise StackNotFoundError(stack_name) from exc
        raise
    if not stacks:
        raise StackNotFoundError(stack_name)
    outputs = stacks[0].get("Outputs", [])
    return {
        output["OutputKey"]: output["OutputValue"]
        for output in sorted(outputs, key=lambda output: output["OutputKey"])
        if output["OutputKey"].endswith(OUTPUT_SUFFIX)
    }


def _session(region: str | None) -> Any:
    """The boto3 session the command uses (tests replace it).

    botocore reads AWS_DEFAULT_REGION but not AWS_REGION, which the CDK and this README use: honour both.
    """
    return boto3.Session(region_name=region or os.environ.get("AWS_REGION") or None)


def _positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m ops.replay_dead_letters",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Replay the pipeline's dead letters. When a function keeps failing on an event (after Lambda's\n"
            "retries), the event waits in that function's dead-letter queue, and the upload's error record\n"
            "says so. After fixing the cause (e.g. the endpoint was down), send the failed events through the\n"
            "pipeline again; replayed events that fail again return to the queue. Replaying is safe: the\n"
            "pipeline recognises work it already finished, and an upload replaced since then is skipped."
        ),
        epilog=(
            "examples:\n"
            "  python -m ops.replay_dead_letters --dry-run     list what waits, and the last error, changing nothing\n"
            "  python -m ops.replay_dead_letters               replay every dead-letter queue of InfraStack\n"
            "  python -m ops.replay_dead_letters --queue-url URL --limit 1\n"
            "  make replay REPLAY_ARGS=--dry-run               the same, through make\n"
            "\n"
            "exit status: 0 all replayed (or nothing to do), 1 some messages failed or were unreadable\n"
            "(they stay in the queue), 2 usage problem (credentials, stack, queue)."
        ),
    )
    parser.add_argument(
        "--stack",
        default=DEFAULT_STACK,
        help=f"stack whose *{OUTPUT_SUFFIX} outputs name the queues (default: %(default)s)",
    )
    parser.add_argument(
        "--queue-url",
        action="append",
        metavar="URL",
        help="replay this queue instead of the stack's (repeat for several)",
    )
    parser.add_argument("--dry-run", action="store_true", help="only list the messages; delete and send nothing")
    parser.add_argument("--limit", type=_positive, metavar="N", help="handle at most N messages in all")
    parser.add_argument("--region", help="AWS region (default: your AWS configuration)")
    return parser


def _print_report(label: str, report: ReplayReport, out: TextIO) -> None:
    """One line per message."""
    print(f"{label}:", file=out)
    count = len(report.replayed) + len(report.failed) + len(report.unreadable)
    if not count:
        print("  empty", file=out)
    for letter in report.replayed:
        done = "would replay (dry run)" if report.dry_run else "replayed"
        print(f"  {_letter_line(letter)} -> {done}", file=out)
    for letter, why in report.failed:
        print(f"  {_letter_line(letter)} -> FAILED, left in the queue: {why}", file=out)
    for message_id, why in report.unreadable:
        print(f"  message {message_id} -> UNREADABLE, left in the queue: {why}", file=out)


def _letter_line(letter: DeadLetter) -> str:
    """Function name, condition and last error of one dead letter."""
    return f"{letter.function_name} [{letter.condition or 'no condition'}] {letter.error or 'no error text'}"


def _summary(reports: list[ReplayReport], dry_run: bool) -> str:
    """The totals line."""
    replayed = sum(len(report.replayed) for report in reports)
    failed = sum(len(report.failed) for report in reports)
    unreadable = sum(len(report.unreadable) for report in reports)
    if dry_run:
        return f"dry run: would replay {replayed}, unreadable {unreadable}; nothing was changed"
    return f"replayed {replayed}, failed {failed}, unreadable {unreadable}"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: 0 when every message was replayed, 1 when some were not, 2 on usage problems."""
    args = _parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    region = args.region
    try:
        session = _session(args.region)
        region = session.region_name or region
        if args.queue_url:
            queues = {url: url for url in args.queue_url}
        else:
            queues = dead_letter_queue_urls(session.client("cloudformation"), args.stack)
            if not queues:
                print(
                    f"error: stack {args.stack} in {region} has no *{OUTPUT_SUFFIX} outputs: "
                    "is it this project's InfraStack? Pass --stack NAME or --queue-url URL.",
                    file=err,
                )
                return 2
        sqs = session.client("sqs")
        invoke = lambda_invoker(session.client("lambda"))
        reports: list[ReplayReport] = []
        remaining = args.limit
        for label, url in queues.items():
            if remaining == 0:
                break
            try:
                report = replay_dead_letters(
                    sqs, url, invoke, dry_run=args.dry_run, limit=remaining, wait_s=RECEIVE_WAIT_S
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in QUEUE_MISSING_CODES:
                    print(f"error: no such queue in {region}: {url} (check --queue-url / --region)", file=err)
                    return 2
                print(f"error: {url}: {exc}", file=err)
                return 1
            reports.append(report)
            _print_report(label if label == url else f"{label} ({url})", report, out)
            if remaining is not None:
                remaining -= len(report.replayed) + len(report.failed) + len(report.unreadable)
    except NoCredentialsError:
        print(f"error: {NO_CREDENTIALS}", file=err)
        return 2
    except NoRegionError:
        print(f"error: {NO_REGION}", file=err)
        return 2
    except ProfileNotFound as exc:
        print(f"error: {exc}: check AWS_PROFILE", file=err)
        return 2
    except StackNotFoundError:
        print(
            f"error: stack {args.stack} not found in region {region}: deploy it first (make deploy-infra), "
            "or pass --stack NAME / --region REGION",
            file=err,
        )
        return 2
    except (BotoCoreError, ClientError) as exc:
        print(f"error: {exc}", file=err)
        return 1
    print(_summary(reports, args.dry_run), file=out)
    return 0 if all(report.ok for report in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
