"""`make replay`: send the events waiting in the pipeline's dead-letter queues through the pipeline again.

Use it after fixing what made the functions fail (e.g. the endpoint was down). The stack's outputs name
each stage's dead-letter queue (`<Stage>DeadLetterQueueUrl`) and, for the stages S3 notifies, its source
queue (`<Stage>QueueUrl`): a function's failed event goes back to the function, a raw S3 event that SQS
moved out of the source queue goes back to that queue. Reading messages is `ops.dead_letters`, the replay
loop `ops.replay`; this module is the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError, ProfileNotFound

from ops.dead_letters import DeadLetter, DeadLetterError, parse_dead_letter
from ops.replay import RECEIVE_WAIT_S, ReplayReport, lambda_invoker, replay_dead_letters

# The names other code imports from here (local mode runs the same replay loop).
__all__ = [
    "DeadLetter",
    "DeadLetterError",
    "ReplayReport",
    "StackNotFoundError",
    "StageQueues",
    "lambda_invoker",
    "main",
    "parse_dead_letter",
    "replay_dead_letters",
    "stack_queues",
]

DEFAULT_STACK = "InfraStack"
OUTPUT_SUFFIX = "DeadLetterQueueUrl"
# `<Stage>QueueUrl`: the queue S3 notifies for that stage (note `<Stage>DeadLetterQueueUrl` ends the same way).
SOURCE_SUFFIX = "QueueUrl"
QUEUE_MISSING_CODES = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}

NO_CREDENTIALS = "no AWS credentials: configure them (aws configure / AWS_PROFILE) and retry"
NO_REGION = "no AWS region: pass --region or set AWS_REGION (or a region in aws configure)"


class StackNotFoundError(LookupError):
    """The CloudFormation stack that should name the dead-letter queues does not exist."""


class QueueNotFoundError(LookupError):
    """A queue URL (given or from the stack) names no queue in this account and region."""


def _raise_if_missing(exc: ClientError, url: str) -> None:
    """Turn SQS's "no such queue" into QueueNotFoundError naming the URL."""
    if exc.response.get("Error", {}).get("Code") in QUEUE_MISSING_CODES:
        raise QueueNotFoundError(url) from exc


@dataclass(frozen=True)
class StageQueues:
    """One stage's dead-letter queue and, for a stage S3 notifies, the source queue its S3 events go back to."""

    label: str  # the output name, or the URL given with --queue-url
    dead_letter_url: str
    source_url: str | None


def stack_queues(cloudformation: Any, stack_name: str) -> list[StageQueues]:
    """Each `<Stage>DeadLetterQueueUrl` output of the stack, paired with its `<Stage>QueueUrl` output if any."""
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
    outputs = {output["OutputKey"]: output["OutputValue"] for output in stacks[0].get("Outputs", [])}
    return [
        StageQueues(name, url, outputs.get(name.removesuffix(OUTPUT_SUFFIX) + SOURCE_SUFFIX))
        for name, url in sorted(outputs.items())
        if name.endswith(OUTPUT_SUFFIX)
    ]


def source_queue_of(sqs: Any, dead_letter_url: str) -> str | None:
    """The one queue whose redrive policy names this dead-letter queue (for --queue-url), or None."""
    urls = sqs.list_dead_letter_source_queues(QueueUrl=dead_letter_url).get("queueUrls", [])
    return urls[0] if len(urls) == 1 else None


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
            "retries, or after SQS handed an S3 event out too often), the event waits in that stage's\n"
            "dead-letter queue, and the upload's error record says so. After fixing the cause (e.g. the endpoint\n"
            "was down), send the failed events through the pipeline again: a function's event goes back to the\n"
            "function, an S3 event back to the stage's queue; replayed events that fail again return to the queue.\n"
            "Replaying is safe: the pipeline recognises work it already finished, and an upload replaced since\n"
            "then is skipped."
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
        help="replay this dead-letter queue instead of the stack's (repeat for several); its S3 events go back "
        "to the queue whose redrive policy names it",
    )
    parser.add_argument("--dry-run", action="store_true", help="only list the messages; delete and send nothing")
    parser.add_argument("--limit", type=_positive, metavar="N", help="handle at most N messages in all")
    parser.add_argument("--region", help="AWS region (default: your AWS configuration)")
    return parser


def _print_report(label: str, report: ReplayReport, out: TextIO) -> None:
    """One line per message."""
    print(f"{label}:", file=out)
    if not report.handled:
        print("  empty", file=out)
    for letter in report.replayed:
        done = "would replay (dry run)" if report.dry_run else "replayed"
        print(f"  {_letter_line(letter)} -> {done}", file=out)
    for letter, why in report.failed:
        print(f"  {_letter_line(letter)} -> FAILED, left in the queue: {why}", file=out)
    for message_id, why in report.unreadable:
        print(f"  message {message_id} -> UNREADABLE, left in the queue: {why}", file=out)


def _letter_line(letter: DeadLetter) -> str:
    """Function name (or the S3 objects of a redriven event), condition and last error of one dead letter."""
    return f"{letter.label} [{letter.condition or 'no condition'}] {letter.error or 'no error text'}"


def _summary(reports: list[ReplayReport], dry_run: bool) -> str:
    """The totals line."""
    replayed = sum(len(report.replayed) for report in reports)
    failed = sum(len(report.failed) for report in reports)
    unreadable = sum(len(report.unreadable) for report in reports)
    if dry_run:
        cannot = f", cannot replay {failed}" if failed else ""
        return f"dry run: would replay {replayed}{cannot}, unreadable {unreadable}; nothing was changed"
    return f"replayed {replayed}, failed {failed}, unreadable {unreadable}"


def _queues(session: Any, args: argparse.Namespace) -> list[StageQueues]:
    """The queues to replay: those given with --queue-url, or every stage's in the stack's outputs."""
    if args.queue_url:
        sqs = session.client("sqs")
        queues = []
        for url in args.queue_url:
            try:
                queues.append(StageQueues(url, url, source_queue_of(sqs, url)))
            except ClientError as exc:
                _raise_if_missing(exc, url)
                raise
        return queues
    return stack_queues(session.client("cloudformation"), args.stack)


def _replay_all(session: Any, queues: list[StageQueues], args: argparse.Namespace, out: TextIO) -> list[ReplayReport]:
    """Replay each queue in turn, printing its report; `--limit` counts across all of them."""
    sqs = session.client("sqs")
    invoke = lambda_invoker(session.client("lambda"))
    reports: list[ReplayReport] = []
    remaining = args.limit
    for queue in queues:
        if remaining == 0:
            break
        try:
            report = replay_dead_letters(
                sqs,
                queue.dead_letter_url,
                invoke,
                source_queue_url=queue.source_url,
                dry_run=args.dry_run,
                limit=remaining,
                wait_s=RECEIVE_WAIT_S,
            )
        except ClientError as exc:
            _raise_if_missing(exc, queue.dead_letter_url)
            raise
        reports.append(report)
        label = queue.label if queue.label == queue.dead_letter_url else f"{queue.label} ({queue.dead_letter_url})"
        _print_report(label, report, out)
        if remaining is not None:
            remaining -= report.handled
    return reports


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: 0 when every message was replayed, 1 when some were not, 2 on usage problems."""
    args = _parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    region = args.region
    try:
        session = _session(args.region)
        region = session.region_name or region
        queues = _queues(session, args)
        if not queues:
            print(
                f"error: stack {args.stack} in {region} has no *{OUTPUT_SUFFIX} outputs: "
                "is it this project's InfraStack? Pass --stack NAME or --queue-url URL.",
                file=err,
            )
            return 2
        reports = _replay_all(session, queues, args, out)
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
    except QueueNotFoundError as exc:
        print(f"error: no such queue in {region}: {exc} (check --queue-url / --region)", file=err)
        return 2
    except (BotoCoreError, ClientError) as exc:
        print(f"error: {exc}", file=err)
        return 1
    print(_summary(reports, args.dry_run), file=out)
    return 0 if all(report.ok for report in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
