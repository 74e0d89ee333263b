"""sd_tools.tiny_model: the offline SD v1 pipeline in the v1-4 layout, deterministic and cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from sd_tools import tiny_model
from sd_tools.tiny_model import COMPLETE_MARKER, build_tiny_model, ensure_tiny_model

V14_LAYOUT = {
    "model_index.json",
    "feature_extractor/preprocessor_config.json",
    "safety_checker/config.json",
    "safety_checker/model.safetensors",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
}


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_folder_has_the_v1_4_layout_and_classes(tiny_model_dir):
    assert set(files(tiny_model_dir)) == V14_LAYOUT
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]


def test_tokenizer_is_byte_level_with_the_clip_limit(tiny_model_dir):
    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer", local_files_only=True)
    assert tokenizer.model_max_length == 77
    assert len(tokenizer) == 256 * 2 + 2
    assert tokenizer("ab cd")["input_ids"][1:-1] == [
        tokenizer.convert_tokens_to_ids(t) for t in ("a", "b</w>", "c", "d</w>")
    ]
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|startoftext|>", "<|endoftext|>")


def test_build_is_deterministic_for_a_seed(tiny_model_dir, tmp_path):
    same = files(build_tiny_model(tmp_path / "same", seed=0))
    other = files(build_tiny_model(tmp_path / "other", seed=1))
    assert same == files(tiny_model_dir)
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert other[weights] != same[weights]


def test_build_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_model(tmp_path)
    assert tiny_model.main(["--out", str(tmp_path)]) == 2
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_ensure_builds_once_atomically_and_repairs_a_half_built_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "tiny-sd"
    built = ensure_tiny_model(cache)
    assert built == cache and (cache / COMPLETE_MARKER).is_file()
    assert set(files(cache)) == V14_LAYOUT | {COMPLETE_MARKER}
    assert list(cache.parent.iterdir()) == [cache]  # no scratch folder left behind

    calls = []
    monkeypatch.setattr(tiny_model, "build_tiny_model", lambda *a, **k: calls.append(a))
    assert ensure_tiny_model(cache) == cache
    assert calls == []  # complete: reused, not rebuilt

    monkeypatch.undo()
    (cache / COMPLETE_MARKER).unlink()  # as if a build had been interrupted
    (cache / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert ensure_tiny_model(cache) == cache
    assert set(files(cache)) == V14_LAYOUT | {COMPLETE_MARKER}
