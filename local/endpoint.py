"""A local SageMaker runtime: `POST /endpoints/{name}/invocations` on loopback, served by the DLC's code path.

Handlers reach it through `AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`, so invoke_sd's boto3 client talks to it
exactly as it talks to SageMaker. Requests go through `sd_tools.toolkit_harness.ToolkitEndpoint`, the
Hugging Face inference toolkit's handler service running `code/inference.py`. Errors are shaped like
SageMaker's: an unknown endpoint is a 400 `ValidationError`, a model's own error status becomes a
424 `ModelError` carrying `OriginalStatusCode` and `OriginalMessage`, and a model that takes longer
than the 60 s real-time limit is cut off with SageMaker's "invocation timed out" `ModelError` (the
model goes on working, as a container does). Injected faults (`local.faults`, target "endpoint")
make it answer 503, a model error, or slowly. `POST /endpoints/{name}/async-invocations` (InvokeEndpointAsync)
goes to `async_endpoint`, local.async_endpoint's queue and worker, which runs the same model call.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from local.async_endpoint import DEFAULT_INVOCATION_TIMEOUT_S, DEFAULT_TTL_S, AsyncEndpoint, AsyncRequest
from local.aws import patched_environ
from local.faults import Faults
from local.tracking import EndpointCall

# Each handler process reaches the endpoint under its own path prefix (`/_caller/<id>`, in its
# AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME): local mode tells which invocation, and so which upload, a call is for.
INVOCATIONS_PATH = re.compile(r"^(?:/_caller/([^/]+))?/endpoints/([^/]+)/(invocations|async-invocations)$")
# SageMaker real-time inference limits: 6 MB payloads, 60 s per invocation.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
REALTIME_LIMIT_S = 60.0
# What SageMaker answers when the container has not responded within the real-time limit.
TIMEOUT_MESSAGE = (
    "Your invocation timed out while waiting for a response from container primary. Review the latency "
    "metrics for each container in Amazon CloudWatch, resolve the issue, and try again."
)


class SageMakerRuntimeServer:
    """One named endpoint on a free loopback port; the model is loaded by `load` (possibly in a thread)."""

    def __init__(
        self,
        endpoint_name: str,
        account: str,
        region: str,
        on_call: Callable[[EndpointCall], None] | None = None,
        on_received: Callable[[EndpointCall, dict[str, Any]], None] | None = None,
        on_queued: Callable[[EndpointCall, str], None] | None = None,
        faults: Faults | None = None,
        limit_s: float = REALTIME_LIMIT_S,
    ) -> None:
        self.endpoint_name = endpoint_name
        self.faults = faults or Faults()
        # SageMaker's real-time limit; tests shorten it rather than wait a minute.
        self.limit_s = limit_s
        self.account = account
        self.region = region
        self.load_s = 0.0
        self.model: Any = None
        self._on_call = on_call
        self._on_received = on_received
        self._on_queued = on_queued
        # Serves InvokeEndpointAsync when set (endpointMode=async); None: the endpoint is real-time only.
        self.async_endpoint: AsyncEndpoint | None = None
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The endpoint URL for `AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`."""
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def load(self, model_dir: Path | None, environment: Mapping[str, str] | None = None) -> None:
        """Load the model through the toolkit (None: no endpoint deployed, every call is "not found").

        `environment` is the container's (the SD_* variables model_fn reads, infra.model_config); it is set
        while model_fn runs, as the DLC sets it for the whole container.
        """
        try:
            if model_dir is not None:
                _quiet_model_loading()
                from sd_tools.toolkit_harness import ToolkitEndpoint

                started = time.perf_counter()
                with container_environment(environment or {}):
                    self.model = ToolkitEndpoint(model_dir)
                self.load_s = time.perf_counter() - started
        except BaseException as error:
            self._load_error = error
            raise
        finally:
            self._loaded.set()

    def start(self) -> None:
        """Serve on 127.0.0.1 at a free port."""
        server = self

        class Handler(_InvocationHandler):
            """The request handler bound to this server."""

            runtime = server

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="local-sagemaker-runtime")
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the model's temporary files."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.model is not None and hasattr(self.model, "close"):
            self.model.close()
        self.model = None

    def log_stream_arn(self) -> str:
        """Where SageMaker would have logged (its ModelError points there)."""
        return f"arn:aws:logs:{self.region}:{self.account}:log-group:/aws/sagemaker/Endpoints/{self.endpoint_name}"

    def invoke(
        self, name: str, body: bytes, content_type: str, accept: str, caller: str = ""
    ) -> tuple[int, dict[str, str], bytes]:
        """Answer one InvokeEndpoint request: status, headers and body, as SageMaker sends them."""
        self._loaded.wait()
        if name != self.endpoint_name or self.model is None:
            return _error(400, "ValidationError", f"Endpoint {name} of account {self.account} not found.")
        if len(body) > MAX_PAYLOAD_BYTES:
            return _error(400, "ValidationError", f"Request payload of {len(body)} bytes is over the 6 MB limit.")
        fault = self.faults.take("endpoint")
        if fault is not None and fault.kind == "unavailable":
            return _error(503, "ServiceUnavailable", "The service is unavailable (a fault injected by local mode).")
        call = EndpointCall(endpoint_name=name, received_at=time.time(), caller=caller)
        result = self.run_model(call, body, content_type, accept, fault, self.limit_s)
        if result is None:
            return self._model_error(0, TIMEOUT_MESSAGE, "server")
        if 200 <= result.status < 300:
            headers = {"Content-Type": result.content_type, "x-Amzn-Invoked-Production-Variant": "AllTraffic"}
            return 200, headers, result.body
        original = result.body.decode("utf-8", errors="replace")
        return self._model_error(result.status, original, "client" if 400 <= result.status < 500 else "server")

    def invoke_async(self, name: str, headers: Any, caller: str = "") -> tuple[int, dict[str, str], bytes]:
        """Answer one InvokeEndpointAsync request: queue it and say where its output and failure will be."""
        self._loaded.wait()
        if name != self.endpoint_name or self.model is None or self.async_endpoint is None:
            return _error(400, "ValidationError", f"Endpoint {name} of account {self.account} not found.")
        location = headers.get("X-Amzn-SageMaker-InputLocation") or ""
        if not location.startswith("s3://"):
            return _error(400, "ValidationError", f"InputLocation must be an s3:// URI, not {location!r}.")
        fault = self.faults.take("endpoint", kinds=("unavailable",))
        if fault is not None:
            return _error(503, "ServiceUnavailable", "The service is unavailable (a fault injected by local mode).")
        inference_id = headers.get("X-Amzn-SageMaker-Inference-Id") or uuid.uuid4().hex
        try:
            ttl_s = int(headers.get("X-Amzn-SageMaker-RequestTTLSeconds") or DEFAULT_TTL_S)
            timeout_s = int(headers.get("X-Amzn-SageMaker-InvocationTimeoutSeconds") or DEFAULT_INVOCATION_TIMEOUT_S)
        except ValueError:
            return _error(400, "ValidationError", "RequestTTLSeconds and InvocationTimeoutSeconds must be integers.")
        if not 60 <= ttl_s <= 21600 or not 1 <= timeout_s <= 3600:
            return _error(
                400, "ValidationError", "RequestTTLSeconds must be 60-21600, InvocationTimeoutSeconds 1-3600."
            )
        call = EndpointCall(endpoint_name=name, received_at=time.time(), caller=caller, inference_id=inference_id)
        if self._on_queued is not None:
            self._on_queued(call, location)
        output, failure = self.async_endpoint.locations(inference_id)
        request = AsyncRequest(
            endpoint_name=name,
            inference_id=inference_id,
            input_location=location,
            content_type=headers.get("X-Amzn-SageMaker-Content-Type") or "application/json",
            accept=headers.get("X-Amzn-SageMaker-Accept") or "application/json",
            ttl_s=ttl_s,
            timeout_s=timeout_s,
            call=call,
            output_location=output,
            failure_location=failure,
        )
        return self.async_endpoint.submit(request)

    def run_model(
        self, call: EndpointCall, body: bytes, content_type: str, accept: str, fault: Any, limit_s: float
    ) -> Any:
        """One model call, reported to the observer: the toolkit's answer, or None past `limit_s`."""
        call.started_at = time.time()
        if self._on_received is not None:
            self._on_received(call, _summary(body, content_type))
        result = self._run_model(body, content_type, accept, fault, limit_s)
        call.finished_at = time.time()
        call.status = result.status if result is not None else 0
        if result is not None and 200 <= result.status < 300:
            try:
                call.inference_s = float(json.loads(result.body).get("timings", {}).get("inference_s", 0.0))
            except (ValueError, AttributeError):
                call.inference_s = 0.0
        if self._on_call is not None:
            self._on_call(call)
        return result

    def _run_model(self, body: bytes, content_type: str, accept: str, fault: Any, limit_s: float) -> Any:
        """The model's answer, or None when it did not come within the real-time limit."""
        from sd_tools.toolkit_harness import InvocationResult, mms_error_body

        if fault is not None and fault.kind == "error":
            status = int(fault.options.get("status", 500))
            error_body = mms_error_body(status, "the model failed (a fault injected by local mode)")
            return InvocationResult(status, "application/json", error_body)
        delay = float(fault.options.get("seconds", 0.0)) if fault is not None and fault.kind == "slow" else 0.0
        answer: list[Any] = []

        def run() -> None:
            """Invoke the model (after the injected delay); keep its answer."""
            time.sleep(delay)
            answer.append(self.model.invoke(body, content_type=content_type, accept=accept))

        worker = threading.Thread(target=run, daemon=True, name="local-sagemaker-model")
        worker.start()
        worker.join(timeout=limit_s)
        return answer[0] if answer else None

    def _model_error(self, original_status: int, original: str, kind: str) -> tuple[int, dict[str, str], bytes]:
        message = (
            f'Received {kind} error ({original_status}) from primary with message "{original}". '
            f"See {self.log_stream_arn()} in account {self.account} for more information."
        )
        status, headers, payload = _error(424, "ModelError", message)
        document = json.loads(payload)
        document.update(
            {
                "OriginalStatusCode": original_status,
                "OriginalMessage": original,
                "LogStreamArn": self.log_stream_arn(),
                "ErrorCode": f"{kind.upper()}_ERROR_FROM_MODEL",
            }
        )
        return status, headers, json.dumps(document).encode("utf-8")


def container_environment(environment: Mapping[str, str]) -> contextlib.AbstractContextManager[None]:
    """Set the container's variables for the duration (and unset HF_HUB_OFFLINE unless it is one of them)."""
    # The hub source must reach the Hub (the deployed container has no HF_HUB_OFFLINE either).
    return patched_environ({"HF_HUB_OFFLINE": None, **environment})


def _quiet_model_loading() -> None:
    """Keep diffusers' loading bar and its `accelerate` hint out of the progress output a person reads."""
    try:
        from diffusers.utils import logging as diffusers_logging
    except ImportError:
        return
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    # botocore's REST-JSON parser takes the code from x-amzn-ErrorType, the message from the body.
    headers = {"Content-Type": "application/json", "x-amzn-ErrorType": code}
    return status, headers, json.dumps({"__type": code, "message": message, "Message": message}).encode("utf-8")


def _summary(body: bytes, content_type: str) -> dict[str, Any]:
    """The prompt and parameters of a JSON request, for progress output."""
    if "json" not in content_type:
        return {}
    try:
        document = json.loads(body)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


class _InvocationHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, so botocore reuses its connection between invocations."""

    protocol_version = "HTTP/1.1"
    runtime: SageMakerRuntimeServer

    def do_POST(self) -> None:
        """InvokeEndpoint and InvokeEndpointAsync."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        match = INVOCATIONS_PATH.match(self.path.split("?", 1)[0])
        if match is None:
            self._send(*_error(404, "UnknownOperationException", f"no SageMaker runtime operation at {self.path}"))
            return
        content_type = self.headers.get("Content-Type") or "application/json"
        accept = self.headers.get("Accept") or "application/json"
        try:
            caller = unquote(match.group(1) or "")
            name = unquote(match.group(2))
            if match.group(3) == "async-invocations":
                self._send(*self.runtime.invoke_async(name, self.headers, caller))
            else:
                self._send(*self.runtime.invoke(name, body, content_type, accept, caller))
        except Exception as error:
            self._send(*_error(500, "InternalFailure", f"local endpoint failed: {type(error).__name__}: {error}"))

    def do_GET(self) -> None:
        """SageMaker runtime has no GET operations."""
        self._send(*_error(404, "UnknownOperationException", f"no SageMaker runtime operation at GET {self.path}"))

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: progress output is the runtime's job."""

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("x-amzn-RequestId", f"local-{time.time_ns():x}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
