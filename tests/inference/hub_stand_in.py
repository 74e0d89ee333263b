"""A local folder standing in for the Hugging Face Hub behind huggingface_hub's two calls the hub source makes."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path
from typing import Any

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
