"""Speech recognition in its own process, with the `Transcriber` interface.

pocketsphinx, the engine before Whisper, held the GIL for a whole decode (0.44 s on a 3 s clip), which froze
moto's server, the dispatcher and the endpoint. faster-whisper does not (measured: the longest pause of a 1 ms
ticker thread during a 3 s clip is 6 ms), but the child process stays for what else it isolates: CTranslate2's
and onnxruntime's native code and thread pools live apart from PyTorch's, a crash in them costs one job
(restarted, retried) instead of the runtime, and the model loads beside Stable Diffusion, not after it.
The child loads `local.transcriber.Transcriber` once and answers one request at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

REPO_ROOT = Path(__file__).resolve().parents[1]
LOAD_TIMEOUT_S = 120


class RemoteTranscriber:
    """`Transcriber().transcribe_bytes` answered by a child process that loaded the recogniser once."""

    def __init__(self, model: str | Path | None = None, log_path: Path | None = None) -> None:
        """Start the child process and wait until it has loaded `model` (None: the bundled tiny.en)."""
        started = time.perf_counter()
        self._lock = threading.Lock()
        self._log: BinaryIO | None = log_path.open("ab") if log_path is not None else None
        command = [sys.executable, "-m", "local.asr_host"]
        if model is not None:
            command += ["--model", str(model)]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log if self._log is not None else subprocess.DEVNULL,
            cwd=REPO_ROOT,
        )
        ready = self._read_reply()
        if not ready.get("ready"):
            self.close()
            raise RuntimeError(f"the speech recogniser did not load: {ready.get('message', 'process exited')}")
        self.model_path = Path(ready["model_path"])
        self.device = str(ready["device"])
        self.multilingual = bool(ready["multilingual"])
        self.load_s = time.perf_counter() - started

    def transcribe_bytes(
        self,
        data: bytes,
        media_format: str,
        language_code: str | None = "en-US",
        language_options: Sequence[str] = (),
    ) -> Any:
        """Recognise the speech in an upload; raises `AudioDecodeError` as the in-process version does."""
        from local.transcriber import AudioDecodeError, TranscriberCrashed, Transcription, Word

        request = {
            "media_format": media_format,
            "language_code": language_code,
            "language_options": [*language_options],
        }
        header = json.dumps(request).encode("utf-8")
        with self._lock:
            stdin = self._process.stdin
            if stdin is None or self._process.poll() is not None:
                raise TranscriberCrashed(f"the speech recogniser process has exited ({self._process.returncode})")
            try:
                stdin.write(struct.pack(">II", len(header), len(data)) + header + data)
                stdin.flush()
            except (BrokenPipeError, OSError) as error:
                raise TranscriberCrashed(f"the speech recogniser process has exited: {error}") from None
            reply = self._read_reply()
        if reply.get("error_type") == "ExitError":
            raise TranscriberCrashed(reply.get("message", "the speech recogniser process exited"))
        if reply.get("ok"):
            fields = dict(reply["transcription"])
            fields["words"] = tuple(Word(**word) for word in fields.get("words", ()))
            fields["language_identification"] = tuple(tuple(pair) for pair in fields["language_identification"])
            return Transcription(**fields)
        if reply.get("error_type") == "AudioDecodeError":
            raise AudioDecodeError(reply.get("message", ""))
        raise RuntimeError(f"speech recognition failed: {reply.get('error_type')}: {reply.get('message')}")

    def kill(self) -> None:
        """Kill the child process at once, as a crash would (local mode's fault injection uses this)."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=5)

    def close(self) -> None:
        """End the child process."""
        process = self._process
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _read_reply(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            return {"ok": False, "error_type": "ExitError", "message": "the speech recogniser process exited"}
        return json.loads(line)


def serve(stdin: BinaryIO, stdout: BinaryIO, model: str | None = None) -> int:
    """The child's loop: a length-prefixed request in, one JSON line out (run by `local.asr_host`)."""
    from local.transcriber import AudioDecodeError, Transcriber

    def reply(message: dict[str, Any]) -> None:
        """One JSON line to the parent."""
        stdout.write(json.dumps(message).encode("utf-8") + b"\n")
        stdout.flush()

    try:
        transcriber = Transcriber(model)
    except Exception as error:
        reply({"ready": False, "message": f"{type(error).__name__}: {error}"})
        return 1
    reply(
        {
            "ready": True,
            "model_path": str(transcriber.model_path),
            "device": transcriber.device,
            "multilingual": transcriber.multilingual,
        }
    )
    while prefix := stdin.read(8):
        header_size, data_size = struct.unpack(">II", prefix)
        header = json.loads(stdin.read(header_size))
        data = stdin.read(data_size)
        try:
            transcription = transcriber.transcribe_bytes(
                data, header["media_format"], header.get("language_code"), header.get("language_options", ())
            )
        except AudioDecodeError as error:
            reply({"ok": False, "error_type": "AudioDecodeError", "message": str(error)})
            continue
        except Exception as error:
            reply({"ok": False, "error_type": type(error).__name__, "message": str(error)})
            continue
        reply({"ok": True, "transcription": dataclasses.asdict(transcription)})
    return 0
