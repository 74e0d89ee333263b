"""A Lambda-like execution environment for one handler: one process, its own environment, warm between calls.

`local.functions.LocalFunction` starts this file as a child process (by path, with `-P`, so only the
Lambda asset root on PYTHONPATH is importable, as in Lambda) with exactly the function's environment.
It imports the handler once (the init phase), then reads one JSON request per line on stdin and answers
one JSON line on the original stdout. Handler prints go to stderr, which is the function's log.
Standard library only: this runs before anything else is importable.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
import traceback
from typing import Any


class LambdaContext:
    """The attributes and method of the Lambda Python runtime's context object that handlers use."""

    def __init__(self, request_id: str, deadline_ms: int) -> None:
        self.function_name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = os.environ["AWS_LAMBDA_FUNCTION_VERSION"]
        self.memory_limit_in_mb = int(os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"])
        self.log_group_name = os.environ["AWS_LAMBDA_LOG_GROUP_NAME"]
        self.log_stream_name = os.environ["AWS_LAMBDA_LOG_STREAM_NAME"]
        self.invoked_function_arn = os.environ["LOCAL_LAMBDA_FUNCTION_ARN"]
        self.aws_request_id = request_id
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function's timeout, as Lambda reports it."""
        return max(0, self._deadline_ms - int(time.time() * 1000))


class _RequestIdFilter(logging.Filter):
    """Adds the current request id to log records, like the Lambda runtime's log format."""

    request_id = ""

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp the record with the request id."""
        record.aws_request_id = self.request_id
        return True


def _error_payload(error: BaseException) -> dict[str, Any]:
    # The shape Lambda returns for an unhandled exception.
    return {
        "errorMessage": str(error),
        "errorType": type(error).__name__,
        "stackTrace": traceback.format_exception(type(error), error, error.__traceback__),
    }


def main() -> int:
    """Import the handler given as argv[1] (`module.function`), then serve invocations until stdin closes."""
    # The protocol owns the real stdout; anything the handler prints goes to the log (stderr).
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    request_filter = _RequestIdFilter()
    log_handler = logging.StreamHandler(sys.stderr)
    log_handler.setFormatter(logging.Formatter("[%(levelname)s]\t%(asctime)s\t%(aws_request_id)s\t%(message)s"))
    log_handler.addFilter(request_filter)
    root = logging.getLogger()
    root.addHandler(log_handler)
    # INFO rather than Lambda's WARNING default: the log file is where a local run is debugged.
    root.setLevel(logging.INFO)

    def send(message: dict[str, Any]) -> None:
        """One JSON line on the protocol stream."""
        protocol.write(json.dumps(message, default=str) + "\n")
        protocol.flush()

    module_name, _, function_name = sys.argv[1].rpartition(".")
    started = time.perf_counter()
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
    except BaseException as error:
        traceback.print_exc()
        send({"ready": False, "error": _error_payload(error)})
        return 1
    send({"ready": True, "init_s": time.perf_counter() - started})

    # readline, not iteration: one request at a time, with no read-ahead that could wait for more.
    while line := sys.stdin.readline():
        request = json.loads(line)
        if request.get("op") == "environment":
            send({"id": request["id"], "ok": True, "result": dict(os.environ)})
            continue
        request_filter.request_id = request["request_id"]
        context = LambdaContext(request["request_id"], request["deadline_ms"])
        print(f"START RequestId: {context.aws_request_id} Version: {context.function_version}", file=sys.stderr)
        started = time.perf_counter()
        try:
            result = handler(request["event"], context)
            reply = {"id": request["id"], "ok": True, "result": result}
        except Exception as error:
            traceback.print_exc()
            reply = {"id": request["id"], "ok": False, "error": _error_payload(error)}
        duration_ms = (time.perf_counter() - started) * 1000
        print(f"END RequestId: {context.aws_request_id}", file=sys.stderr)
        print(f"REPORT RequestId: {context.aws_request_id}\tDuration: {duration_ms:.2f} ms", file=sys.stderr)
        sys.stderr.flush()
        reply["duration_s"] = duration_ms / 1000
        send(reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
