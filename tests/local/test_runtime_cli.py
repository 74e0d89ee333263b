"""The command line's checks (before anything starts) and the results folder with its gallery."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

from local import gallery
from local.cli import EXIT_USAGE, main
from local.report import format_timings
from tests.local.runtime_support import AUDIO, offline_with_an_empty_cache


def run(*argv: str) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=stdout, stderr=stderr)
    return code, stdout.getvalue(), stderr.getvalue()


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    code, _, stderr = run("run", str(tmp_path / "nope.mp3"), "--out", str(tmp_path / "out"))
    assert code == EXIT_USAGE
    assert "nope.mp3: no such file" in stderr
    assert not (tmp_path / "out").exists(), "nothing starts or is written for a usage error"


def test_a_folder_is_a_usage_error(tmp_path: Path) -> None:
    code, _, stderr = run("run", str(AUDIO), "--out", str(tmp_path / "out"))
    assert code == EXIT_USAGE
    assert "not a file" in stderr


def test_two_files_with_one_name_are_a_usage_error(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "red-apple.mp3").write_bytes(b"ID3 other")
    code, _, stderr = run(
        "run", str(AUDIO / "red-apple.mp3"), str(other / "red-apple.mp3"), "--out", str(tmp_path / "o")
    )
    assert code == EXIT_USAGE
    assert "would both be uploaded as 'red-apple.mp3'" in stderr


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [("--size", "100", "multiple of 8"), ("--size", "4096", "out of range"), ("--steps", "0", "out of range")],
)
def test_bad_image_options_are_usage_errors(tmp_path: Path, flag: str, value: str, expected: str) -> None:
    code, _, stderr = run("run", str(AUDIO / "red-apple.mp3"), flag, value, "--out", str(tmp_path / "out"))
    assert code == EXIT_USAGE
    assert "--size/--steps" in stderr and expected in stderr


def test_a_model_dir_that_is_not_a_model_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    code, _, stderr = run("run", str(AUDIO / "red-apple.mp3"), "--model-dir", str(tmp_path / "model"))
    assert code == EXIT_USAGE
    assert "model_index.json" in stderr and "diffusers" in stderr


def test_no_files_is_a_usage_error() -> None:
    code, _, stderr = run("run")
    assert code == EXIT_USAGE
    assert "FILE" in stderr


def test_quiet_and_json_exclude_each_other(tmp_path: Path) -> None:
    code, _, _ = run("run", str(AUDIO / "red-apple.mp3"), "--quiet", "--json")
    assert code == EXIT_USAGE


def _metadata(transcript: str) -> dict[str, object]:
    return {"status": "ok", "transcript": transcript, "prompt": transcript, "parameters": {"width": 64, "height": 64}}


def test_results_replace_each_other_and_the_gallery_lists_each_name_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    gallery.save_image(out, "a.mp3", b"\x89PNG...", _metadata("first"), b"<html></html>")
    record = {"status": "error", "stage": "validate", "error": "not-audio", "reason": "r", "action": "do x"}
    gallery.save_error(out, "a.mp3", record)
    assert sorted(path.name for path in out.iterdir()) == ["a.mp3.error.json"]
    gallery.save_image(out, "a.mp3", b"\x89PNG...", _metadata("second"), b"<html></html>")
    assert sorted(path.name for path in out.iterdir()) == ["a.mp3.html", "a.mp3.json", "a.mp3.png"]
    [entry] = gallery.entries(out)
    assert entry.status == "image" and entry.document["transcript"] == "second"


def test_the_gallery_is_newest_first_escaped_and_linked(tmp_path: Path) -> None:
    out = tmp_path / "out"
    gallery.save_image(out, "old one.mp3", b"png", _metadata("an old <b>prompt</b>"), b"page")
    past = time.time() - 60
    os.utime(out / "old one.mp3.json", (past, past))
    gallery.save_error(
        out, "new&bad.mp3", {"error": "no-speech", "stage": "transcript", "reason": "<empty>", "action": "a"}
    )
    (out / "unrelated.json").write_text(json.dumps({"not": "a result"}), encoding="utf-8")

    page = gallery.write_index(out).read_text(encoding="utf-8")
    assert page.index("new&amp;bad.mp3") < page.index("old one.mp3")
    assert "an old &lt;b&gt;prompt&lt;/b&gt;" in page and "<b>prompt" not in page
    assert 'href="old%20one.mp3.html"' in page and 'src="old%20one.mp3.png"' in page
    assert 'href="new%26bad.mp3.error.json"' in page
    assert "&lt;empty&gt;" in page
    assert "unrelated" not in page


def test_timings_read_as_a_breakdown() -> None:
    line = format_timings({"upload": 0.01, "asr": 0.6, "generation": 0.4, "total": 1.2, "overhead": 0.2})
    assert line == "upload 0.01s | ASR 0.60s | generation 0.40s | total 1.20s (pipeline overhead 0.20s, 17%)"


def test_an_asr_model_that_cannot_be_downloaded_is_a_usage_error_naming_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline_with_an_empty_cache(monkeypatch, tmp_path / "empty-cache")
    out = tmp_path / "out"
    code, _, stderr = run("run", str(AUDIO / "red-apple.mp3"), "--asr-model", "small", "--out", str(out))
    assert code == EXIT_USAGE
    assert "--asr-model: cannot download the speech model 'small'" in stderr
    assert "'tiny.en'" in stderr and "leave out --asr-model" in stderr
    assert not out.exists(), "nothing starts or is written for a usage error"


@pytest.mark.slow
def test_an_asr_model_folder_is_what_the_recognition_process_loads(tmp_path: Path) -> None:
    from local.asr_model import bundled_model_path
    from local.cli import _transcriber_factory

    folder = tmp_path / "my whisper"
    folder.symlink_to(bundled_model_path(), target_is_directory=True)
    remote = _transcriber_factory(str(folder), tmp_path / "transcribe.log")()
    try:
        assert remote.model_path == folder.resolve()
        assert remote.device == "cpu"
        assert remote.multilingual is False
        heard = remote.transcribe_bytes((AUDIO / "red-apple.mp3").read_bytes(), "mp3")
        assert heard.text == "A red apple on a wooden table."
    finally:
        remote.close()


def test_a_cold_start_needs_the_async_endpoint(tmp_path: Path) -> None:
    args = ("run", str(AUDIO / "red-apple.mp3"), "--out", str(tmp_path / "out"))
    code, _, stderr = run(*args, "--endpoint-mode", "realtime", "--cold-start", "5")
    assert code == EXIT_USAGE
    assert "--cold-start needs the async endpoint" in stderr
    code, _, stderr = run(*args, "--cold-start", "-1")
    assert code == EXIT_USAGE and "zero or more" in stderr
    code, _, stderr = run(*args, "--endpoint-mode", "batch")
    assert code == EXIT_USAGE and "invalid choice" in stderr
    assert not (tmp_path / "out").exists()


def test_async_timings_show_the_wait_for_the_gpu() -> None:
    line = format_timings({"transcript_to_endpoint": 0.1, "waiting": 2.0, "generation": 0.4, "total": 3.0})
    assert line.startswith("transcript->endpoint 0.10s | waiting for the GPU 2.00s | generation 0.40s | total 3.00s")


def test_image_options_keep_the_chosen_endpoint_mode() -> None:
    from local.cli import _with_image_overrides, build_parser
    from local.settings import load_config

    args = build_parser().parse_args(["run", "x.mp3", "--endpoint-mode", "realtime", "--size", "64"])
    config = _with_image_overrides(load_config(endpoint_mode=args.endpoint_mode), args)
    assert (config.endpoint_mode, config.image.height) == ("realtime", 64)
    assert load_config().endpoint_mode == "async", "cdk.json's default, as on AWS"
