"""Where the weights come from: the extracted model archive (SD_MODEL_SOURCE=s3) or the Hugging Face Hub (hub).

For `hub`, only the files the pipeline loads are downloaded: model_index.json first, then for each component it
lists its config/tokenizer files and ONE set of weights (the fp16 variant when every weighted component has it,
else the default variant; safetensors over .bin; never .ckpt, Flax, ONNX or EMA copies). The toolkit's own
HF_MODEL_ID path downloads several times that and is not used. The Hub client is injectable (tests use a local
folder as the Hub); a gated model's token comes from Secrets Manager and is never logged. The download goes to
`SD_HUB_CACHE_DIR/<org>--<name>/<revision>` (sd_hub_cache, the layout's one home); a complete earlier download
there is used as it is, without the network (local mode keeps one in .cache/hub).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sd_families import FP16, WEIGHT_STEMS, WEIGHTED, components
from sd_hub_cache import complete_files, forget_complete, hub_folder, mark_complete

logger = logging.getLogger("sd_inference")

DEFAULT_CACHE_DIR = "/tmp/sd-hub"  # noqa: S108 - /opt/ml/model is read-only in the DLC; /tmp is the writable disk
SUPPORT_SUFFIXES = (".json", ".txt", ".model")  # configs, tokenizer vocab/merges, sentencepiece models


class ModelSourceError(RuntimeError):
    """The model could not be fetched; the message says what to fix."""


class HubClient(Protocol):
    """The two Hub calls model_fn needs."""

    def list_files(self, repo_id: str, revision: str, token: str | None) -> list[str]:
        """Every file path in the repo at `revision`."""
        ...

    def download(self, repo_id: str, revision: str, files: list[str], local_dir: Path, token: str | None) -> Path:
        """Fetch exactly `files` into `local_dir` and return it."""
        ...


class HuggingFaceHub:
    """HubClient over huggingface_hub (list_repo_files + snapshot_download with an exact allow list)."""

    def list_files(self, repo_id: str, revision: str, token: str | None) -> list[str]:
        """Every file path in the repo at `revision`."""
        from huggingface_hub import list_repo_files

        return list(list_repo_files(repo_id, revision=revision, token=token))

    def download(self, repo_id: str, revision: str, files: list[str], local_dir: Path, token: str | None) -> Path:
        """Fetch exactly `files` into `local_dir` (resumable; files already there are not fetched again)."""
        from huggingface_hub import snapshot_download

        # No tqdm_class: huggingface_hub's own progress bars go to stderr (local mode shows them while it waits).
        return Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=files, local_dir=str(local_dir), token=token)
        )


@dataclass(frozen=True)
class HubSettings:
    """SD_HUB_* settings for SD_MODEL_SOURCE=hub."""

    repo_id: str
    revision: str
    token_secret_arn: str | None
    cache_dir: Path


def model_source(env: Mapping[str, str]) -> str:
    """SD_MODEL_SOURCE: "s3" (default, weights in model_dir) or "hub"."""
    source = (env.get("SD_MODEL_SOURCE") or "s3").strip().lower()
    if source not in ("s3", "hub"):
        raise ModelSourceError(f"SD_MODEL_SOURCE={source!r}: use s3 (weights in the model archive) or hub")
    return source


def hub_settings(env: Mapping[str, str]) -> HubSettings:
    """Read and check the SD_HUB_* variables."""
    repo_id = (env.get("SD_HUB_MODEL_ID") or "").strip()
    revision = (env.get("SD_HUB_REVISION") or "").strip()
    if not repo_id:
        raise ModelSourceError("SD_MODEL_SOURCE=hub needs SD_HUB_MODEL_ID (e.g. stabilityai/sdxl-turbo)")
    if not revision:
        # A branch name would let the Hub swap the model under a running endpoint.
        raise ModelSourceError(f"SD_HUB_REVISION is not set: pin {repo_id} to a commit hash")
    return HubSettings(
        repo_id=repo_id,
        revision=revision,
        token_secret_arn=(env.get("SD_HUB_TOKEN_SECRET_ARN") or "").strip() or None,
        cache_dir=Path(env.get("SD_HUB_CACHE_DIR") or DEFAULT_CACHE_DIR),
    )


def token_from_secret(secrets_client: Any, secret_arn: str) -> str:
    """The Hub token stored in `secret_arn`: the raw SecretString or its JSON {"token": "..."}."""
    value = secrets_client.get_secret_value(SecretId=secret_arn).get("SecretString") or ""
    value = value.strip()
    if value.startswith("{"):
        try:
            value = str(json.loads(value).get("token") or "").strip()
        except (ValueError, AttributeError):
            raise ModelSourceError(f"secret {secret_arn} holds JSON without a string 'token'") from None
    if not value:
        raise ModelSourceError(f'secret {secret_arn} is empty: store the Hub token (or {{"token": ...}}) in it')
    return value


def files_to_fetch(index: dict[str, Any], repo_files: list[str]) -> list[str]:
    """The exact files the pipeline loads from a repo holding `repo_files`, given its model_index.json."""
    wanted = ["model_index.json"]
    listed = components(index)
    weighted = [name for name in listed if name in WEIGHTED]
    by_folder: dict[str, list[str]] = {}
    for path in repo_files:
        folder, _, name = path.partition("/")
        if name and "/" not in name:
            by_folder.setdefault(folder, []).append(name)

    def weights(folder: str, variant: str | None) -> list[str]:
        names = by_folder.get(folder, [])
        infix = f".{variant}" if variant else ""
        for suffix in (".safetensors", ".bin"):  # safetensors when the repo has them
            for stem in WEIGHT_STEMS:
                single = f"{stem}{infix}{suffix}"
                shards = sorted(n for n in names if n.startswith(f"{stem}-") and n.endswith(f"{infix}{suffix}"))
                shards = [n for n in shards if variant or ".fp16." not in n]
                if single in names:
                    return [single]
                if shards:
                    return shards + [n for n in names if n == f"{stem}{suffix}.index{infix}.json"]
        return []

    variant = FP16 if weighted and all(weights(name, FP16) for name in weighted) else None
    for name in listed:
        names = by_folder.get(name, [])
        if not names:
            raise ModelSourceError(f"the repo has no {name}/ folder, which model_index.json lists")
        wanted += [f"{name}/{n}" for n in sorted(names) if n.endswith(SUPPORT_SUFFIXES) and ".index" not in n]
        if name in weighted:
            found = weights(name, variant)
            if not found:
                raise ModelSourceError(f"the repo has no loadable weights in {name}/ (safetensors or .bin)")
            wanted += [f"{name}/{n}" for n in found if f"{name}/{n}" not in wanted]
    return wanted


def fetch_from_hub(settings: HubSettings, hub: HubClient, token: str | None) -> Path:
    """Download exactly what the pipeline loads into settings.cache_dir/<repo>/<revision> and return that folder.

    A complete earlier download there (its marker lists files that are all present) is returned at once, with no
    Hub call; anything less is fetched again (files already there are skipped by the Hub client).
    """
    target = hub_folder(settings.cache_dir, settings.repo_id, settings.revision)
    where = f"{settings.repo_id}@{settings.revision}"
    if complete_files(target) is not None:
        logger.info("using the complete download of %s in %s", where, target)
        return target
    try:
        target.mkdir(parents=True, exist_ok=True)
        forget_complete(target)
        repo_files = hub.list_files(settings.repo_id, settings.revision, token)
        hub.download(settings.repo_id, settings.revision, ["model_index.json"], target, token)
        index = json.loads((target / "model_index.json").read_text(encoding="utf-8"))
        files = files_to_fetch(index, repo_files)
        logger.info("downloading %d files of %s into %s", len(files), where, target)
        hub.download(settings.repo_id, settings.revision, files, target, token)
        missing = [name for name in files if not (target / name).is_file()]
        if missing:
            raise ModelSourceError(f"the download left out {', '.join(missing)}")
        mark_complete(target, settings.repo_id, settings.revision, files)
    except ModelSourceError as error:
        raise ModelSourceError(f"{where}: {error}") from None
    except Exception as error:  # the Hub's errors (gated, not found, network) carry their own explanation
        kind = type(error).__name__
        # Never include the token: the message is built from the repo, revision and the Hub's answer only.
        raise ModelSourceError(
            f"could not download {where} ({kind}: {error}); check the id, the revision, network access "
            "(hub mode needs it) and, for a gated model, the token secret SD_HUB_TOKEN_SECRET_ARN"
        ) from None
    return target


def resolve_model_dir(
    model_dir: Path, env: Mapping[str, str] | None = None, hub: HubClient | None = None, secrets: Any = None
) -> tuple[Path, str | None]:
    """The folder to load and the Hub id it came from (None for s3): model_dir itself, or a Hub download."""
    env = os.environ if env is None else env
    if model_source(env) == "s3":
        return Path(model_dir), None
    settings = hub_settings(env)
    token = None
    # A complete earlier download needs no token (nor Secrets Manager, nor the Hub).
    cached = complete_files(hub_folder(settings.cache_dir, settings.repo_id, settings.revision)) is not None
    if settings.token_secret_arn and not cached:
        if secrets is None:
            import boto3

            secrets = boto3.client("secretsmanager")
        try:
            token = token_from_secret(secrets, settings.token_secret_arn)
        except ModelSourceError:
            raise
        except Exception as error:  # botocore's errors: access denied, not found, no network
            raise ModelSourceError(
                f"could not read the Hub token from {settings.token_secret_arn} ({type(error).__name__}: {error}): "
                "check the secret exists and the endpoint role may read it"
            ) from None
    folder = fetch_from_hub(settings, hub or HuggingFaceHub(), token)
    return folder, settings.repo_id
