"""Drive the real SageMaker Hugging Face toolkit handler in-process, as the DLC's model server does.

`ToolkitEndpoint` loads `code/inference.py` through `HuggingFaceHandlerService` (the class the
DLC's Multi Model Server runs) and answers invocations with the status, content type and body
the container would send back: a success is 200 with the handler's bytes; any exception raised
in the handler becomes the toolkit's `PredictionException(str(error), 400)`, which the MMS
frontend sends as HTTP 400 with `{"code": 400, "type": "InternalServerException", "message": ...}`
(checked against multi-model-server 1.1.11 serving the same folder over HTTP).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sd_tools.endpoint_code import CODE_DIR as DEFAULT_CODE_DIR

MMS_VERSION = "1.1.11"
MODEL_NAME = "model"  # the name the DLC registers its single model under
USER_MODULE = "inference"
# Loading touches process-wide state (sys.modules["inference"], sys.path): one load at a time.
_LOAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class InvocationResult:
    """What the model container answers to one invocation."""

    status: int  # HTTP status the DLC would return (200, 400, ...)
    content_type: str
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def mms_error_body(status: int, message: str) -> bytes:
    """The JSON the MMS frontend sends for a failed prediction (its ErrorResponse class)."""
    return json.dumps({"code": status, "type": "InternalServerException", "message": message}, indent=2).encode()


def error_message(result: InvocationResult) -> str:
    """The handler's error text from a failed invocation (`{"error": ...}` unwrapped when present)."""
    message = json.loads(result.body).get("message", "")
    try:
        inner = json.loads(message)
    except ValueError:
        return message
    return inner.get("error", message) if isinstance(inner, dict) else message


def assemble_serving_dir(model_dir: Path, code_dir: Path, target: Path) -> Path:
    """Lay out `target` like an extracted model.tar.gz: model files (symlinked) plus a copy of code/."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(model_dir.iterdir()):
        if entry.name == "code":
            continue
        (target / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    shutil.copytree(code_dir, target / "code", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    info = target / "code" / "model_info.json"
    if not info.exists():
        info.write_text(json.dumps({"name": model_dir.name}), encoding="utf-8")
    return target


class ToolkitEndpoint:
    """One model loaded by the real toolkit handler; `invoke` is thread-safe (serialised, like one MMS worker)."""

    def __init__(self, model_dir: Path, code_dir: Path | None = None) -> None:
        # Imported here: the toolkit pulls in transformers, which callers may not need until now.
        from mms.context import Context
        from sagemaker_huggingface_inference_toolkit.handler_service import HuggingFaceHandlerService

        model_dir = Path(model_dir).resolve()
        code_only = (model_dir / "code" / "inference.py").is_file()  # e.g. a hub-mode archive, extracted
        if not (model_dir / "model_index.json").is_file() and not code_only:
            raise FileNotFoundError(f"{model_dir} has no model_index.json: pass a diffusers model folder")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if code_dir is None and (model_dir / "code" / "inference.py").is_file():
            serving_dir = model_dir  # already in the tarball layout (e.g. an extracted model.tar.gz)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="sd-serving-")
            source = Path(code_dir).resolve() if code_dir is not None else DEFAULT_CODE_DIR
            serving_dir = assemble_serving_dir(model_dir, source, Path(self._tmp.name) / "model")
        self.serving_dir = serving_dir
        self._lock = threading.Lock()
        gpu_id = _gpu_id()
        self._context = Context(MODEL_NAME, str(serving_dir), None, 1, gpu_id, MMS_VERSION)
        self._service = HuggingFaceHandlerService()
        code_path = str(serving_dir / "code")
        # inference.py imports its sibling modules in code/ (the toolkit puts code/ first on sys.path).
        own_modules = [USER_MODULE, *sorted(path.stem for path in (serving_dir / "code").glob("*.py"))]
        with _LOAD_LOCK:
            # A previous endpoint's modules would be reused by importlib: each endpoint imports its own.
            _forget(own_modules)
            started = time.perf_counter()
            try:
                self._service.initialize(self._context)  # imports code/inference.py and runs model_fn
            finally:
                _forget(own_modules)
                # initialize() prepends code/ to sys.path for good; undo it so endpoints do not leak.
                while code_path in sys.path:
                    sys.path.remove(code_path)
            self._load_seconds = time.perf_counter() - started

    @property
    def model(self) -> Any:
        """What model_fn returned (for tests and debugging; requests go through invoke)."""
        return self._service.model

    @property
    def load_seconds(self) -> float:
        """Seconds model_fn took (import of inference.py included)."""
        return self._load_seconds

    def invoke(
        self, body: bytes, content_type: str = "application/json", accept: str = "application/json"
    ) -> InvocationResult:
        """Run one request through the toolkit's handle(), as MMS's Service.predict does."""
        from mms.context import RequestProcessor
        from mms.metrics.metrics_store import MetricsStore
        from mms.service import PredictionException

        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if accept:
            headers["Accept"] = accept
        request_ids = {0: uuid.uuid4().hex}
        with self._lock:
            context = self._context
            context.request_ids = request_ids
            context.request_processor = [RequestProcessor(headers)]
            context.metrics = MetricsStore(request_ids, MODEL_NAME)
            try:
                response = self._service.handle([{"body": body}], context)
            except PredictionException as error:
                return InvocationResult(
                    error.error_code, "application/json", mms_error_body(error.error_code, error.message)
                )
            except MemoryError:
                return InvocationResult(507, "application/json", mms_error_body(507, "Out of resources"))
            except Exception:  # MMS answers 503 for anything the handler did not turn into a PredictionException
                return InvocationResult(503, "application/json", mms_error_body(503, "Prediction failed"))
            status = context.get_response_status(0)[0] or 200
            response_type = context.get_response_content_type(0) or "application/json"
        payload = response[0]
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        return InvocationResult(status, response_type, bytes(payload))

    def close(self) -> None:
        """Remove the assembled serving folder, if one was made."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ToolkitEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _forget(modules: list[str]) -> None:
    for name in modules:
        sys.modules.pop(name, None)


def _gpu_id() -> int | None:
    # The toolkit reads gpu_id from the context only when CUDA is available (as MMS sets it).
    try:
        import torch
    except ImportError:
        return None
    return 0 if torch.cuda.is_available() else None
