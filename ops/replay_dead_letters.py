"""`make replay`: send the events waiting in the pipeline's dead-letter queues through the pipeline again.

Use it after fixing what made the functions fail (e.g. the endpoint was down). This module is the command
line only: reading messages is `ops.dead_letters`, the replay loop `ops.replay`, finding the queues
`ops.queues`, the session and the stack's outputs `ops.stack`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from botocore.exceptions import ClientError

from ops.dead_letters import DeadLetter
from ops.queues import OUTPUT_SUFFIX, QueueNotFoundError, StageQueues, given_queues, raise_if_missing, stack_queues
from ops.replay import RECEIVE_WAIT_S, ReplayReport, lambda_invoker, replay_dead_letters
from ops.stack import EXIT_USAGE, run_command
from ops.stack import session as _session

DEFAULT_STACK = "InfraStack"


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
        return given_queues(session.client("sqs"), args.queue_url)
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
            raise_if_missing(exc, queue.dead_letter_url)
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

    def replay(session: Any) -> int:
        region = session.region_name or args.region
        try:
            queues = _queues(session, args)
            if not queues:
                print(
                    f"error: stack {args.stack} in {region} has no *{OUTPUT_SUFFIX} outputs: "
                    "is it this project's InfraStack? Pass --stack NAME or --queue-url URL.",
                    file=err,
                )
                return EXIT_USAGE
            reports = _replay_all(session, queues, args, out)
        except QueueNotFoundError as exc:
            print(f"error: no such queue in {region}: {exc} (check --queue-url / --region)", file=err)
            return EXIT_USAGE
        print(_summary(reports, args.dry_run), file=out)
        return 0 if all(report.ok for report in reports) else 1

    # `_session` is looked up at call time, so tests can hand in their own.
    return run_command(
        replay, make_session=lambda region: _session(region), region=args.region, stack_name=args.stack, err=err
    )


if __name__ == "__main__":
    raise SystemExit(main())
