"""`--model PATH_OR_HUB_ID`: a folder is served as model_dir; a Hub id is served as modelSource=hub is on AWS.

The download itself is model_fn's (stable-diffusion-custom-inference/code); here: parsing, resolving the revision
(online through an injected `model_info`, offline against the real huggingface_hub and the endpoint's cache
layout in .cache/hub), and what the local endpoint's model_fn receives: a code-only model_dir and the container's
SD_* variables. tests/local/test_hub_model_offline.py serves a downloaded model offline end to end.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from infra.config import PipelineConfig
from local.cli import EXIT_USAGE, main
from local.endpoint import SageMakerRuntimeServer
from local.model_source import CODE_DIR, ModelSourceError, cached_commit, parse_model, resolve_revision
from local.runtime import LocalRuntime, choose_model, hub_model, tiny_model
from tests.local.runtime_support import AUDIO, offline_with_an_empty_cache

SHA = "b261bac6fd2cf515557d5d0707481eafa0485ec2"


def answering(sha: str, calls: list[tuple[str, str]]) -> Any:
    """A stand-in for HfApi().model_info: the Hub's answer for a revision, recorded."""

    def model_info(model_id: str, *, revision: str, timeout: float) -> Any:
        calls.append((model_id, revision))
        return SimpleNamespace(sha=sha)

    return model_info


def failing(error: Exception) -> Any:
    def model_info(model_id: str, *, revision: str, timeout: float) -> Any:
        raise error

    return model_info


def cache_with(cache: Path, model_id: str, commit: str, *, complete: bool = True) -> Path:
    """A .cache/hub holding a download of `model_id` at `commit` in the endpoint's layout (what model_fn leaves)."""
    folder = cache / model_id.replace("/", "--") / commit
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "config.json").write_text("{}")
    if complete:  # model_fn writes the marker only after the last file arrived
        files = ["model_index.json", "unet/config.json"]
        (folder / ".complete.json").write_text(json.dumps({"repo_id": model_id, "revision": commit, "files": files}))
    return folder


def test_an_existing_folder_is_a_folder_and_an_org_name_is_a_hub_id(tmp_path: Path) -> None:
    assert parse_model(str(tmp_path)) == tmp_path
    assert parse_model("stabilityai/sd-turbo") == ("stabilityai/sd-turbo", "main")
    assert parse_model(f"stabilityai/sdxl-turbo@{SHA}") == ("stabilityai/sdxl-turbo", SHA)
    assert parse_model("org/model@v1.0") == ("org/model", "v1.0")


@pytest.mark.parametrize("value", ["./models/sd", "/no/such/folder", "a/b/c", "just-a-name", "org/name@", "~/x/y"])
def test_a_missing_folder_or_malformed_id_says_both_readings(value: str) -> None:
    with pytest.raises(ModelSourceError, match=r"no such folder, and not a Hugging Face Hub id"):
        parse_model(value)


def test_a_hub_id_is_pinned_to_the_commit_the_hub_names(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []
    model = choose_model("stabilityai/sd-turbo", cache_dir=tmp_path, model_info=answering(SHA, calls))
    assert calls == [("stabilityai/sd-turbo", "main")]
    assert (model.path, model.tiny, model.hub_id, model.hub_revision) == (None, False, "stabilityai/sd-turbo", SHA)
    assert model.hub_cache_dir == tmp_path


def test_the_endpoint_gets_the_hub_source_variables_and_a_local_cache(tmp_path: Path) -> None:
    model = hub_model("stabilityai/sd-turbo", "main", cache_dir=tmp_path, model_info=answering(SHA, []))
    environment = model.environment(PipelineConfig())
    assert environment == {
        "SD_MODEL_SOURCE": "hub",
        "SD_HUB_MODEL_ID": "stabilityai/sd-turbo",
        "SD_HUB_REVISION": SHA,
        "SD_INSTANCE_TYPE": "ml.g4dn.xlarge",
        "SD_TIME_LIMIT_SECONDS": "900",
        "SD_HUB_CACHE_DIR": str(tmp_path),
    }, "no HF_HUB_OFFLINE (it must download) and never HF_MODEL_ID (the toolkit would fetch the whole repo)"
    assert model.environment(PipelineConfig(endpoint_mode="realtime"))["SD_TIME_LIMIT_SECONDS"] == "60"


def test_a_folder_or_the_tiny_model_is_served_like_an_s3_archive() -> None:
    environment = tiny_model().environment(PipelineConfig())
    assert (environment["SD_MODEL_SOURCE"], environment["HF_HUB_OFFLINE"]) == ("s3", "1")
    assert not any(name.startswith("SD_HUB_") for name in environment)


@pytest.mark.parametrize(
    ("error_name", "expected"),
    [
        ("GatedRepoError", "accept its licence"),
        ("RepositoryNotFoundError", "no such model on the Hugging Face Hub"),
        ("RevisionNotFoundError", "has no such revision"),
    ],
)
def test_what_the_hub_refuses_is_explained(tmp_path: Path, error_name: str, expected: str) -> None:
    from huggingface_hub import errors

    error = getattr(errors, error_name)("refused", response=None)
    with pytest.raises(ModelSourceError, match=expected):
        hub_model("org/model", "main", cache_dir=tmp_path, model_info=failing(error))


def test_offline_without_a_cached_copy_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    offline_with_an_empty_cache(monkeypatch, tmp_path)  # the real huggingface_hub, which refuses to go online
    with pytest.raises(ModelSourceError) as raised:
        resolve_revision("stabilityai/sd-turbo", "main", cache_dir=tmp_path)
    message = str(raised.value)
    assert "cannot reach the Hugging Face Hub" in message and "offline mode is enabled" in message
    assert "Run once with internet access" in message and "--model DIR" in message


def test_offline_a_complete_download_is_served_at_its_commit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    offline_with_an_empty_cache(monkeypatch, tmp_path)
    cache_with(tmp_path, "stabilityai/sd-turbo", SHA)
    assert resolve_revision("stabilityai/sd-turbo", SHA, cache_dir=tmp_path) == SHA
    assert cached_commit("stabilityai/sd-turbo", SHA, tmp_path) == SHA
    assert cached_commit("stabilityai/sd-turbo", "main", tmp_path) is None, "the cache is keyed by commit"


def test_offline_a_branch_is_not_guessed_the_error_names_the_cached_commits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    offline_with_an_empty_cache(monkeypatch, tmp_path)
    cache_with(tmp_path, "stabilityai/sd-turbo", SHA)
    with pytest.raises(ModelSourceError) as raised:
        resolve_revision("stabilityai/sd-turbo", "main", cache_dir=tmp_path)
    message = str(raised.value)
    assert "cannot reach the Hugging Face Hub to learn which commit main is now" in message
    assert f"pass one to use it offline: --model stabilityai/sd-turbo@{SHA}" in message


def test_a_partial_download_is_not_a_cached_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    offline_with_an_empty_cache(monkeypatch, tmp_path)
    cache_with(tmp_path, "stabilityai/sd-turbo", SHA, complete=False)
    assert cached_commit("stabilityai/sd-turbo", SHA, tmp_path) is None
    with pytest.raises(ModelSourceError, match="holds no complete copy"):
        resolve_revision("stabilityai/sd-turbo", SHA, cache_dir=tmp_path)
    # A marker whose files are not all there (one was deleted) is not complete either.
    folder = cache_with(tmp_path / "other", "stabilityai/sd-turbo", SHA)
    (folder / "unet" / "config.json").unlink()
    assert cached_commit("stabilityai/sd-turbo", SHA, tmp_path / "other") is None


def test_a_cached_commit_is_served_without_asking_the_hub(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []
    cache_with(tmp_path, "stabilityai/sd-turbo", SHA)
    model = choose_model(f"stabilityai/sd-turbo@{SHA}", cache_dir=tmp_path, model_info=answering(SHA, calls))
    assert model.hub_revision == SHA and calls == [], "a commit never changes: no Hub call, no timeout offline"
    choose_model("stabilityai/sd-turbo", cache_dir=tmp_path, model_info=answering(SHA, calls))
    assert calls == [("stabilityai/sd-turbo", "main")], "a branch is always asked of the Hub when it answers"


def test_the_cli_refuses_an_unreachable_hub_model_before_starting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    offline_with_an_empty_cache(monkeypatch, tmp_path)
    stdout, stderr = io.StringIO(), io.StringIO()
    out = tmp_path / "out"
    argv = ["run", str(AUDIO / "red-apple.mp3"), "--model", "example-org/never-downloaded", "--out", str(out)]
    code = main(argv, stdout=stdout, stderr=stderr)
    assert code == EXIT_USAGE
    assert "--model example-org/never-downloaded@main: cannot reach the Hugging Face Hub" in stderr.getvalue()
    assert not out.exists(), "nothing starts or is written"


def test_model_and_model_dir_are_one_choice(tmp_path: Path) -> None:
    stderr = io.StringIO()
    argv = ["run", "x.mp3", "--model", "org/name", "--model-dir", str(tmp_path)]
    assert main(argv, stdout=io.StringIO(), stderr=stderr) == EXIT_USAGE
    assert "not allowed with argument" in stderr.getvalue()


class RecordingToolkit:
    """Stands in for the toolkit's handler service: records the model_dir and environment model_fn would see."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, model_dir: Path) -> None:
        RecordingToolkit.seen.append(
            {
                "files": sorted(str(p.relative_to(model_dir)) for p in Path(model_dir).rglob("*.py")),
                "has_weights": (Path(model_dir) / "model_index.json").exists(),
                "env": {k: v for k, v in os.environ.items() if k.startswith(("SD_", "HF_HUB_"))},
            }
        )


def test_the_local_endpoint_loads_a_hub_model_from_code_only_with_the_containers_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sd_tools.toolkit_harness

    monkeypatch.setattr(sd_tools.toolkit_harness, "ToolkitEndpoint", RecordingToolkit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    RecordingToolkit.seen.clear()
    cache = tmp_path / "hub-cache"
    model = hub_model("stabilityai/sd-turbo", "main", cache_dir=cache, model_info=answering(SHA, []))
    runtime = LocalRuntime(PipelineConfig(), model)
    runtime._load_model()  # what start() runs in its loader thread
    try:
        (seen,) = RecordingToolkit.seen
        code = sorted(f"code/{path.name}" for path in CODE_DIR.glob("*.py"))
        assert "code/inference.py" in code and "code/sd_hub_cache.py" in code
        assert seen["files"] == code and not seen["has_weights"], "code-only, like the archive"
        assert seen["env"] == {
            "SD_MODEL_SOURCE": "hub",
            "SD_HUB_MODEL_ID": "stabilityai/sd-turbo",
            "SD_HUB_REVISION": SHA,
            "SD_INSTANCE_TYPE": "ml.g4dn.xlarge",
            "SD_TIME_LIMIT_SECONDS": "900",
            "SD_HUB_CACHE_DIR": str(cache),
        }, "model_fn downloads into .cache/hub in its own layout, as into /tmp/sd-hub on AWS"
        # Afterwards the process is as it was: the variables belonged to the container, not to local mode.
        assert os.environ["HF_HUB_OFFLINE"] == "1" and "SD_MODEL_SOURCE" not in os.environ
        assert "SD_HUB_CACHE_DIR" not in os.environ
    finally:
        runtime.stop()
    assert runtime._tmp_code is None, "the code-only folder is removed with the runtime"


def test_a_plain_server_load_passes_the_environment_to_model_fn_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import sd_tools.toolkit_harness

    monkeypatch.setattr(sd_tools.toolkit_harness, "ToolkitEndpoint", RecordingToolkit)
    RecordingToolkit.seen.clear()
    server = SageMakerRuntimeServer("sd", "123456789012", "eu-west-1")
    server.load(Path("."), environment={"SD_MODEL_SOURCE": "s3", "HF_HUB_OFFLINE": "1"})
    assert RecordingToolkit.seen[0]["env"]["SD_MODEL_SOURCE"] == "s3"
    assert "SD_MODEL_SOURCE" not in os.environ
