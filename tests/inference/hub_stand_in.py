"""A local folder standing in for the Hugging Face Hub: behind huggingface_hub's two calls, or behind its HTTP API."""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import huggingface_hub
import huggingface_hub.utils


class LocalHub:
    """huggingface_hub.list_repo_files / snapshot_download over a local folder; records every download."""

    def __init__(self, root: Path, repo_id: str, revision: str) -> None:
        self.root = root
        self.repo_id = repo_id
        self.revision = revision
        self.downloaded: list[str] = []
        self.tokens: list[str | None] = []
        self.calls = 0
        # Whether huggingface_hub's own progress bars were on at each download (what a person watching sees).
        self.progress_bars: list[bool] = []

    def install(self, monkeypatch: Any) -> LocalHub:
        """Answer huggingface_hub's calls (restored when the test ends)."""
        monkeypatch.setattr(huggingface_hub, "list_repo_files", self.list_repo_files)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)
        return self

    def _check(self, repo_id: str, revision: str | None) -> None:
        self.calls += 1
        if (repo_id, revision) != (self.repo_id, self.revision):
            raise huggingface_hub.errors.RevisionNotFoundError(f"{repo_id}@{revision} is not on this stand-in Hub")

    def list_repo_files(self, repo_id: str, *, revision: str | None = None, token: str | None = None, **_: object):
        self._check(repo_id, revision)
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def snapshot_download(self, repo_id: str, *, revision=None, allow_patterns=None, local_dir=None, token=None, **_):
        self._check(repo_id, revision)
        self.tokens.append(token)
        self.progress_bars.append(not huggingface_hub.utils.are_progress_bars_disabled())
        for name in sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()):
            if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.root / name, Path(local_dir) / name)
                self.downloaded.append(name)
        return str(local_dir)


def unreachable_hub(monkeypatch: Any) -> None:
    """Every Hub call fails as it does with no network (the stand-in, if any, is replaced)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise huggingface_hub.errors.OfflineModeIsEnabled("the Hub cannot be reached (a test with no network)")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


@contextlib.contextmanager
def hub_http_api(root: Path, repo_id: str, commit: str) -> Iterator[tuple[str, list[str]]]:
    """The Hub's HTTP API over a local folder on loopback: (HF_ENDPOINT, the paths requested).

    Just what huggingface_hub 0.36 asks for the hub source: the file tree, the model's info at a revision, and
    HEAD/GET of `/<repo>/resolve/<revision>/<file>` with the commit and ETag headers it checks.
    """
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    requested: list[str] = []

    def size(name: str) -> int:
        return (root / name).stat().st_size

    def oid(name: str) -> str:
        """The file's git blob id, as the Hub lists it."""
        data = (root / name).read_bytes()
        return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()

    class Api(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def do_HEAD(self) -> None:
            self._file(head=True)

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            if path.startswith(f"/api/models/{repo_id}/revision/"):
                self._json({"id": repo_id, "sha": commit, "siblings": [{"rfilename": name} for name in files]})
            elif path.startswith(f"/api/models/{repo_id}/tree/"):
                self._json([{"type": "file", "path": name, "size": size(name), "oid": oid(name)} for name in files])
            else:
                self._file(head=False)

        def _json(self, document: Any) -> None:
            requested.append(self.path)
            self._send(json.dumps(document).encode(), {"Content-Type": "application/json"}, head=False)

        def _file(self, *, head: bool) -> None:
            requested.append(self.path)
            prefix = f"/{repo_id}/resolve/"
            path = unquote(urlsplit(self.path).path)
            name = path[len(prefix) :].partition("/")[2] if path.startswith(prefix) else ""
            if name not in files:
                self.send_error(404)
                return
            data = (root / name).read_bytes()
            headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
            self._send(data, headers, head=head)

        def _send(self, body: bytes, headers: dict[str, str], *, head: bool) -> None:
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="stand-in-hub-api")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
