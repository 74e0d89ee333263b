"""`--model PATH_OR_HUB_ID`: a diffusers folder, or a Hugging Face Hub model the local endpoint downloads itself.

A folder is served as `model_dir`, as the deployed endpoint serves an S3 archive. A Hub id (`org/name`, optionally
`org/name@revision`) is served the way `modelSource=hub` is on AWS: the endpoint gets only `code/` and the SD_HUB_*
variables, and `model_fn` downloads exactly the files it loads into `.cache/hub` (SD_HUB_CACHE_DIR, in the
endpoint's own layout: code/sd_hub_cache.py; with huggingface_hub's progress bars). Before that, the id and revision
are resolved to a commit here, so a typo, a gated model or a machine without internet is a clear error before
anything starts. Offline, a commit with a complete download in the cache is served; a branch or tag is not guessed
(it may have moved since): the error names the cached commits to pass instead.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sd_tools.endpoint_code import CODE_DIR, standalone

REPO_ROOT = Path(__file__).resolve().parents[1]
HUB_CACHE_DIR = REPO_ROOT / ".cache" / "hub"
# `org/name` or `org/name@revision` (a branch, tag or commit); a path has more slashes or starts with '.', '/', '~'.
HUB_ID_RE = re.compile(r"^(?P<id>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w.-]+))?$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_REVISION = "main"


class ModelSourceError(ValueError):
    """`--model` names nothing that can be served; the message says what to do."""


def parse_model(value: str) -> Path | tuple[str, str]:
    """A folder (existing path) or a Hub `(id, revision)`; `ModelSourceError` for anything else."""
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSourceError(f"--model {value}: not a folder; pass a diffusers model folder or a Hub id")
        return path
    match = HUB_ID_RE.match(value)
    if match is None or value.startswith((".", "/", "~")):
        raise ModelSourceError(
            f"--model {value}: no such folder, and not a Hugging Face Hub id (org/name, or org/name@revision "
            "such as stabilityai/sd-turbo@main)"
        )
    return match["id"], match["revision"] or DEFAULT_REVISION


def resolve_revision(
    model_id: str, revision: str, *, cache_dir: Path = HUB_CACHE_DIR, model_info: Callable[..., Any] | None = None
) -> str:
    """The commit to serve: asked of the Hub, or found in the local cache when the Hub cannot be reached."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if COMMIT_RE.match(revision) and cached_commit(model_id, revision, cache_dir) is not None:
        return revision  # a commit never changes: a complete download of it needs no Hub
    if model_info is None:
        from huggingface_hub import HfApi

        model_info = HfApi().model_info
    try:
        return str(model_info(model_id, revision=revision, timeout=20).sha)
    except GatedRepoError:
        raise ModelSourceError(
            f"--model {model_id}: a gated model; accept its licence on https://huggingface.co/{model_id} and give "
            "a token (`huggingface-cli login`, or HF_TOKEN=... in the environment)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelSourceError(
            f"--model {model_id}: no such model on the Hugging Face Hub (or a private one: log in with "
            "`huggingface-cli login`); check the spelling, org/name"
        ) from None
    except RevisionNotFoundError:
        raise ModelSourceError(
            f"--model {model_id}@{revision}: the model has no such revision; give a branch, tag or commit from "
            f"https://huggingface.co/{model_id}/commits/main"
        ) from None
    except HfHubHTTPError as error:
        raise ModelSourceError(f"--model {model_id}: the Hugging Face Hub answered {error}; try again later") from None
    except OSError as error:  # no network, DNS, a proxy, or HF_HUB_OFFLINE (OfflineModeIsEnabled)
        cached = hub_cache().complete_revisions(cache_dir, model_id)
        if cached and not COMMIT_RE.match(revision):
            commits = " or ".join(f"--model {model_id}@{commit}" for commit in cached)
            raise ModelSourceError(
                f"--model {model_id}@{revision}: cannot reach the Hugging Face Hub to learn which commit "
                f"{revision} is now ({error}). {cache_dir} holds a complete download of {len(cached)} commit(s): "
                f"pass one to use it offline: {commits}"
            ) from None
        raise ModelSourceError(
            f"--model {model_id}@{revision}: cannot reach the Hugging Face Hub to download it ({error}) and "
            f"{cache_dir} holds no complete copy. Run once with internet access (the download is kept in "
            f"{cache_dir}), or download it elsewhere (`huggingface-cli download {model_id} --revision {revision} "
            "--local-dir DIR`) and pass the folder: --model DIR"
        ) from None


def cached_commit(model_id: str, revision: str, cache_dir: Path) -> str | None:
    """`revision` when it is a commit whose download in `cache_dir` (the endpoint's layout) is complete, else None."""
    if not COMMIT_RE.match(revision):
        return None  # the endpoint's cache is keyed by commit: a branch or tag may have moved since
    cache = hub_cache()
    return revision if cache.complete_files(cache.hub_folder(cache_dir, model_id, revision)) is not None else None


def hub_cache() -> Any:
    """code/sd_hub_cache.py, the endpoint's own cache layout (standard library only, loaded on its own)."""
    return standalone("sd_hub_cache")


def code_only_dir(target: Path, code_dir: Path = CODE_DIR) -> Path:
    """Lay out `target` like a code-only model archive (`package_model --code-only`): just `code/`."""
    shutil.copytree(code_dir, target / "code", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target
