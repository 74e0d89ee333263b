"""Local Lambda functions: each handler runs warm in its own child process with exactly its environment.

A separate process per execution environment is what Lambda gives each function: its own `os.environ`, its
own module state (lazily created clients and settings are not shared between handlers or with local mode)
and a crash that cannot take the pipeline down. One process runs one invocation at a time, as one Lambda
execution environment does; a `FunctionPool` holds a function's environments, so a route with
`max_concurrency` N runs up to N invocations at once.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from infra.pipeline import Handler

HOST_SCRIPT = Path(__file__).with_name("lambda_host.py")
# Lambda's maximum; local mode enforces a deadline only so that a stuck handler cannot hang a run.
DEFAULT_TIMEOUT_S = 900
DEFAULT_MEMORY_MB = 1024
# Starting Python and importing boto3 takes about a second on a small machine.
INIT_TIMEOUT_S = 60


class FunctionInitError(RuntimeError):
    """A handler could not be imported: its module is missing or raised on import."""


@dataclass
class Invocation:
    """The outcome of one invocation, in the shape Lambda reports it."""

    ok: bool
    result: Any = None
    error: dict[str, Any] | None = None
    started_at: float = 0.0
    ended_at: float = 0.0
    request_id: str = ""
    attempt: int = 1

    @property
    def error_summary(self) -> str:
        """`ErrorType: message` for an error, else an empty string."""
        if not self.error:
            return ""
        return f"{self.error.get('errorType', 'Error')}: {self.error.get('errorMessage', '')}"


@dataclass
class LocalFunction:
    """One handler in a warm child process; `invoke` sends it an event, like an async Lambda invocation."""

    handler: Handler
    # The function's own variables: exactly `infra.pipeline.handler_environment(...)`.
    environment: dict[str, str]
    # What Lambda and local mode add: reserved AWS_* variables, credentials, endpoints.
    runtime_environment: dict[str, str]
    lambdas_dir: Path
    log_path: Path
    account: str
    region: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB
    # Which execution environment of the function this is (0: the one started with local mode).
    instance: int = 0
    init_s: float = 0.0
    _process: subprocess.Popen[str] | None = field(default=None, repr=False)
    _replies: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue, repr=False)
    _reader: threading.Thread | None = field(default=None, repr=False)
    _old_readers: list[threading.Thread] = field(default_factory=list, repr=False)
    _log: TextIO | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        """The local function name (Lambda allows letters, digits, hyphens and underscores)."""
        return f"s2i-local-{self.handler.value}"

    @property
    def arn(self) -> str:
        """The function's ARN in the emulated account."""
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{self.name}"

    def full_environment(self) -> dict[str, str]:
        """Everything the child process gets: nothing is inherited except what Python needs to run."""
        inherited = {
            name: os.environ[name] for name in ("PATH", "HOME", "LANG", "LC_ALL", "SYSTEMROOT") if name in os.environ
        }
        lambda_reserved = {
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"local/{self.instance}/{uuid.uuid4().hex}",
            "LAMBDA_TASK_ROOT": str(self.lambdas_dir),
            "LOCAL_LAMBDA_FUNCTION_ARN": self.arn,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "TZ": "UTC",
            # The asset root is the only import root, as in Lambda (plus the runtime's packages).
            "PYTHONPATH": str(self.lambdas_dir),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        return inherited | lambda_reserved | self.runtime_environment | self.environment

    def start(self) -> None:
        """Start the child process (the Lambda init phase runs there); `wait_ready` waits for it."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self._log = self.log_path.open("a", encoding="utf-8")
        self._replies = queue.Queue()
        if self._reader is not None:
            self._old_readers.append(self._reader)  # of a process that crashed or timed out; ends at its EOF
        self._process = subprocess.Popen(
            [sys.executable, "-P", "-s", str(HOST_SCRIPT), self.handler.entry_point],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=self.full_environment(),
            cwd=self.lambdas_dir,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        # Each process gets its own reply queue: a dead process's reader must not feed the next one's.
        self._reader = threading.Thread(
            target=self._read_replies, args=(self._process, self._replies), daemon=True, name=f"{self.name}-reader"
        )
        self._reader.start()

    def wait_ready(self) -> None:
        """Wait for the handler module to be imported; raise `FunctionInitError` if it could not be."""
        try:
            message = self._replies.get(timeout=INIT_TIMEOUT_S)
        except queue.Empty:
            self._kill()
            raise FunctionInitError(
                f"{self.name}: the handler did not load within {INIT_TIMEOUT_S} s (log: {self.log_path})"
            ) from None
        if message is None or not message.get("ready"):
            error = (message or {}).get("error") or {}
            self._kill()
            module = self.lambdas_dir / self.handler.value / "handler.py"
            hint = f"{module} does not exist" if not module.exists() else f"see the traceback in {self.log_path}"
            raise FunctionInitError(
                f"{self.name}: cannot load handler {self.handler.entry_point!r}: "
                f"{error.get('errorType', 'process exited')}: {error.get('errorMessage', '')} ({hint})"
            )
        self.init_s = float(message.get("init_s", 0.0))

    def invoke(self, event: dict[str, Any], *, attempt: int = 1) -> Invocation:
        """Run the handler on one event and return its result or its unhandled error."""
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                # Lambda starts a fresh execution environment after a crash or a timeout.
                self.start()
                self.wait_ready()
            request_id = str(uuid.uuid4())
            started = time.time()
            request = {
                "id": request_id,
                "request_id": request_id,
                "event": event,
                "deadline_ms": int((started + self.timeout_s) * 1000),
            }
            reply = self._exchange(request, self.timeout_s)
            ended = time.time()
            # A dead process or a timeout is reported the way Lambda reports them: as the function's error.
            if reply is None:
                reply = {
                    "ok": False,
                    "error": {
                        "errorType": "Runtime.ExitError",
                        "errorMessage": f"the handler process exited (log: {self.log_path})",
                    },
                }
            elif reply == "timeout":
                reply = {
                    "ok": False,
                    "error": {
                        "errorType": "Sandbox.Timedout",
                        "errorMessage": f"Task timed out after {self.timeout_s:.2f} seconds",
                    },
                }
            return Invocation(
                ok=bool(reply.get("ok")),
                result=reply.get("result"),
                error=reply.get("error"),
                started_at=started,
                ended_at=ended,
                request_id=request_id,
                attempt=attempt,
            )

    def read_environment(self) -> dict[str, str]:
        """The `os.environ` the handler process actually runs with (for parity checks)."""
        with self._lock:
            reply = self._exchange({"op": "environment", "id": str(uuid.uuid4())}, INIT_TIMEOUT_S)
        if not isinstance(reply, dict):
            raise RuntimeError(f"{self.name}: the handler process did not answer (log: {self.log_path})")
        return dict(reply["result"])

    def stop(self) -> None:
        """End the child process: closing stdin ends its loop; kill it if it does not exit."""
        process, self._process = self._process, None
        if process is not None:
            try:
                if process.stdin:
                    process.stdin.close()
                process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait(timeout=5)
            if process.stdout:
                process.stdout.close()
        for reader in [*self._old_readers, self._reader]:
            if reader is not None:
                reader.join(timeout=5)
        self._reader = None
        self._old_readers.clear()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _exchange(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any] | str | None:
        assert self._process is not None and self._process.stdin is not None
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            self._kill()
            return None
        while True:
            try:
                reply = self._replies.get(timeout=timeout_s)
            except queue.Empty:
                self._kill()
                return "timeout"
            if reply is None:
                self._kill()
                return None
            if reply.get("id") == request["id"]:
                return reply

    @staticmethod
    def _read_replies(process: subprocess.Popen[str], replies: queue.Queue[dict[str, Any] | None]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                replies.put(json.loads(line))
            except json.JSONDecodeError:
                continue
        replies.put(None)

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=5)


class FunctionPool:
    """The execution environments of one function, one per concurrent invocation.

    The first starts with local mode (so a handler that cannot load fails the start); the others start
    when concurrent invocations first need them, as Lambda scales a function up, cold start included.
    """

    def __init__(self, make: Callable[[int], LocalFunction]) -> None:
        """`make(index)` builds the (unstarted) environment number `index`."""
        self._make = make
        self._lock = threading.Lock()
        self._instances: dict[int, LocalFunction] = {}

    def start(self) -> LocalFunction:
        """Start the first environment; `wait_ready` on it is the caller's."""
        function = self._make(0)
        function.start()
        with self._lock:
            self._instances[0] = function
        return function

    @property
    def primary(self) -> LocalFunction:
        """The first environment: its name, ARN and environment are the function's."""
        return self._instances[0]

    def instance(self, index: int) -> LocalFunction:
        """Environment `index`, started now if it never ran (each index is used by one poller only)."""
        with self._lock:
            function = self._instances.get(index)
        if function is None:
            function = self._make(index)
            function.start()
            function.wait_ready()
            with self._lock:
                self._instances[index] = function
        return function

    def all(self) -> list[LocalFunction]:
        """Every environment started so far."""
        with self._lock:
            return list(self._instances.values())

    def stop(self) -> None:
        """Stop every environment."""
        for function in self.all():
            function.stop()
        with self._lock:
            self._instances.clear()
