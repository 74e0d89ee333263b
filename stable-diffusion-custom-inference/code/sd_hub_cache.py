"""Where a Hub download lives and when it is complete: the one home of the hub source's cache layout.

`<cache_dir>/<org>--<name>/<commit>/` holds exactly the files the pipeline loads, and `.complete.json` (listing
them) is written only after every one arrived. The endpoint (sd_source) downloads into it; local mode
(local/model_source.py) finds earlier downloads in it. Standard library only, so local mode can load this file
on its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MARKER = ".complete.json"


def hub_folder(cache_dir: Path, repo_id: str, revision: str) -> Path:
    """The folder a download of `repo_id` at `revision` goes to."""
    return Path(cache_dir) / repo_id.replace("/", "--") / revision


def complete_files(folder: Path) -> list[str] | None:
    """The files of a complete download in `folder`; None when it is missing, partial or its marker is unreadable."""
    try:
        files = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(files, list) or not files or not all(isinstance(name, str) for name in files):
        return None
    return files if all((Path(folder) / name).is_file() for name in files) else None


def mark_complete(folder: Path, repo_id: str, revision: str, files: list[str]) -> None:
    """Record that every one of `files` is in `folder` (call only after the last one arrived)."""
    scratch = Path(folder) / f"{MARKER}.tmp"
    scratch.write_text(json.dumps({"repo_id": repo_id, "revision": revision, "files": files}), encoding="utf-8")
    os.replace(scratch, Path(folder) / MARKER)  # atomic: a reader sees no marker or a whole one


def forget_complete(folder: Path) -> None:
    """Drop the marker before a (re)download, so an interrupted one is never taken for complete."""
    (Path(folder) / MARKER).unlink(missing_ok=True)


def complete_revisions(cache_dir: Path, repo_id: str) -> list[str]:
    """The revisions of `repo_id` with a complete download under `cache_dir`, sorted."""
    repo = Path(cache_dir) / repo_id.replace("/", "--")
    if not repo.is_dir():
        return []
    return sorted(child.name for child in repo.iterdir() if complete_files(child) is not None)
