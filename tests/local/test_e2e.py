"""End to end through `python -m local run`'s entry function: the real handlers, local Transcribe and the
local SageMaker endpoint serving the tiny model, on the committed audio fixtures.

One runtime (moto, handler processes, recogniser, model) is shared by the module; each test runs the CLI
against it with its own results folder.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from local.cli import main
from local.runtime import LocalRuntime, load_config, local_config, tiny_model
from local.wer import word_error_rate
from tests.local.runtime_support import AUDIO, MANIFEST

pytestmark = pytest.mark.slow

# The tiny model draws noise at any size; the smallest size keeps the module well under a minute.
IMAGE_SIZE = 64
STEPS = 2
SPEECH = ["red-apple.mp3", "castle at sunset.mp3", "café painting.mp3", "cat-in-a-hat.wav", "dog-on-the-beach.ogg"]


@pytest.fixture(scope="module")
def ffmpeg_tripwire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """PATH without any ffmpeg, and a fake one first on it that leaves a mark if anything runs it."""
    folder = tmp_path_factory.mktemp("no-ffmpeg")
    mark = folder / "ffmpeg-was-run"
    for tool in ("ffmpeg", "ffprobe"):
        (folder / tool).write_text(f"#!/bin/sh\ntouch '{mark}'\nexit 1\n")
        (folder / tool).chmod(0o755)
    others = [entry for entry in os.environ.get("PATH", "").split(os.pathsep) if entry]
    path = [str(folder), *(entry for entry in others if not (Path(entry) / "ffmpeg").exists())]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", os.pathsep.join(path))
        yield mark


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, ffmpeg_tripwire: Path) -> Iterator[LocalRuntime]:
    """The whole local pipeline with the real handlers, started once for the module, with no ffmpeg to find."""
    model = tiny_model()
    config = local_config(load_config(), model, size=IMAGE_SIZE, steps=STEPS)
    runtime = LocalRuntime(config, model, log_dir=tmp_path_factory.mktemp("logs"))
    runtime.start()
    yield runtime
    runtime.stop()


def run_cli(runtime: LocalRuntime, out: Path, *files: Path, extra: tuple[str, ...] = ()) -> tuple[int, dict[str, Any]]:
    """Run `python -m local run FILES --out OUT --json` in-process; the exit code and the JSON report."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main(
        ["run", *map(str, files), "--out", str(out), "--json", *extra], runtime=runtime, stdout=stdout, stderr=stderr
    )
    report = json.loads(stdout.getvalue()) if stdout.getvalue() else {}
    return code, report


class _PageText(HTMLParser):
    """The text of the transcript blockquote of a handler-written page."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.quotes: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "blockquote":
            self.inside = True
            self.quotes.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "blockquote":
            self.inside = False

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.quotes[-1] += data


def gallery_names(out: Path) -> list[str]:
    """The upload names the gallery shows, in order."""

    class Names(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []
            self.inside = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.inside = tag == "div" and ("class", "name") in attrs

        def handle_data(self, data: str) -> None:
            if self.inside:
                self.names.append(data)
                self.inside = False

    parser = Names()
    parser.feed((out / "index.html").read_text(encoding="utf-8"))
    return parser.names


def test_spoken_prompts_become_images(runtime: LocalRuntime, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, report = run_cli(runtime, out, *(AUDIO / name for name in SPEECH))

    assert code == 0, report
    assert [item["name"] for item in report["files"]] == SPEECH
    for item in report["files"]:
        name = item["name"]
        assert item["status"] == "image", item
        assert word_error_rate(MANIFEST["speech"][name]["text"], item["transcript"]) <= 0.4, item["transcript"]

        png, metadata_path, page = (out / f"{name}{suffix}" for suffix in (".png", ".json", ".html"))
        assert {Path(path) for path in item["outputs"].values()} == {png, metadata_path, page}
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
        assert metadata["status"] == "ok"
        assert metadata["source"]["key"] == name
        assert metadata["transcript"] == item["transcript"]
        with Image.open(png) as image:
            image.load()
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
        text = _PageText()
        text.feed(page.read_text(encoding="utf-8"))
        assert text.quotes == [metadata["transcript"]]
        timings = item["timings"]
        for stage in ("decode", "asr", "transcript_to_endpoint", "generation", "writes", "total"):
            assert timings[stage] >= 0, stage
        assert timings["total"] >= timings["asr"] + timings["generation"]
    assert sorted(gallery_names(out)) == sorted(SPEECH)


def test_every_format_becomes_an_image_with_no_ffmpeg(
    runtime: LocalRuntime, tmp_path: Path, ffmpeg_tripwire: Path
) -> None:
    by_format = {name.rsplit(".", 1)[1]: name for name in MANIFEST["speech"] if name != "long-description.mp3"}
    assert sorted(by_format) == ["amr", "flac", "m4a", "mp3", "mp4", "ogg", "wav", "webm"]
    assert shutil.which("ffmpeg") == str(ffmpeg_tripwire.parent / "ffmpeg"), "only the tripwire is on PATH"
    code, report = run_cli(runtime, tmp_path / "out", *(AUDIO / name for name in by_format.values()))

    assert code == 0, report
    heard = {item["name"]: item["transcript"] for item in report["files"] if item["status"] == "image"}
    assert set(heard) == set(by_format.values())
    spoken = {name: MANIFEST["speech"][name]["text"] for name in heard}
    errors = sum(word_error_rate(spoken[name], text) * len(spoken[name].split()) for name, text in heard.items())
    assert errors / sum(len(text.split()) for text in spoken.values()) <= 0.1, heard
    assert not ffmpeg_tripwire.exists(), "nothing ran ffmpeg"


def test_a_bad_file_ends_as_an_error_record_and_the_run_goes_on(runtime: LocalRuntime, tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = ["not-audio.mp3", "empty.mp3", "silence.mp3", "mountain-lake.flac"]
    code, report = run_cli(runtime, out, *(AUDIO / name for name in files))

    assert code == 1
    by_name = {item["name"]: item for item in report["files"]}
    assert list(by_name) == files
    expected_errors = {"not-audio.mp3": "not-audio", "empty.mp3": "empty-file", "silence.mp3": "no-speech"}
    for name, code_name in expected_errors.items():
        item = by_name[name]
        assert item["status"] == "error"
        assert item["error"]["error"] == code_name
        assert item["error"]["recorded_by"] == "output bucket", "the handler wrote the error record"
        record = json.loads((out / f"{name}.error.json").read_text(encoding="utf-8"))
        assert record["status"] == "error"
        assert record["source"]["key"] == name
        assert record["reason"] and record["action"]
        assert not (out / f"{name}.png").exists()
    assert by_name["mountain-lake.flac"]["status"] == "image"
    assert (out / "mountain-lake.flac.png").is_file()
    assert not report["ok"]
    assert sorted(gallery_names(out)) == sorted(files)


def test_audio_that_cannot_be_decoded_ends_as_a_failed_transcription_job(runtime: LocalRuntime, tmp_path: Path) -> None:
    # An ID3 header passes transcribe_trigger's container sniffing; the decoder then finds no audio.
    broken = tmp_path / "truncated.mp3"
    broken.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 8)
    events: list[dict[str, Any]] = []
    runtime.on_job_state_change(events.append)
    code, report = run_cli(runtime, tmp_path / "out", broken)

    assert code == 1
    [item] = report["files"]
    assert item["status"] == "error"
    assert item["error"]["stage"] == "transcribe"
    assert item["error"]["error"] == "transcription-failed"
    assert "couldn't be decoded" in item["error"]["reason"]
    assert item["error"]["recorded_by"] == "output bucket", "transcribe_failed wrote it, through the EventBridge rule"
    record = json.loads((tmp_path / "out" / "truncated.mp3.error.json").read_text(encoding="utf-8"))
    assert record["details"]["job_name"].startswith("s2i-")
    assert [event["detail"]["TranscriptionJobStatus"] for event in events] == ["FAILED"]


def test_running_the_same_file_twice_does_not_duplicate_outputs(runtime: LocalRuntime, tmp_path: Path) -> None:
    out = tmp_path / "out"
    recording = tmp_path / "twice over.mp3"
    shutil.copyfile(AUDIO / "red-apple.mp3", recording)

    first_code, first = run_cli(runtime, out, recording)
    first_files = sorted(path.name for path in out.iterdir() if path.is_file())
    first_png = (out / "twice over.mp3.png").read_bytes()
    second_code, second = run_cli(runtime, out, recording, recording)

    assert first_code == second_code == 0
    assert [item["name"] for item in second["files"]] == ["twice over.mp3"], "one result per name"
    assert second["files"][0]["transcript"] == first["files"][0]["transcript"]
    assert sorted(path.name for path in out.iterdir() if path.is_file()) == first_files
    assert first_files == sorted(["index.html", "twice over.mp3.html", "twice over.mp3.json", "twice over.mp3.png"])
    assert (out / "twice over.mp3.png").read_bytes() == first_png, "same key, same seed: the same image"
    assert gallery_names(out) == ["twice over.mp3"]


def test_quiet_prints_only_the_result_paths(runtime: LocalRuntime, tmp_path: Path) -> None:
    out = tmp_path / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main(
        ["run", str(AUDIO / "red-apple.mp3"), "--out", str(out), "--quiet"],
        runtime=runtime,
        stdout=stdout,
        stderr=stderr,
    )

    assert code == 0
    assert stderr.getvalue() == ""
    lines = stdout.getvalue().splitlines()
    assert lines == [str(out / f"red-apple.mp3{suffix}") for suffix in (".png", ".json", ".html")] + [
        str(out / "index.html")
    ]


def test_progress_and_summary_are_readable(runtime: LocalRuntime, tmp_path: Path) -> None:
    recording = tmp_path / "summary check.wav"
    shutil.copyfile(AUDIO / "cat-in-a-hat.wav", recording)
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main(["run", str(recording), "--out", str(tmp_path / "out")], runtime=runtime, stdout=stdout, stderr=stderr)

    assert code == 0
    progress = stderr.getvalue()
    assert "tiny random-weight test model" in progress and "--model stabilityai/sd-turbo" in progress
    for step in ("summary check.wav: uploaded", "transcribing", "transcript:", "generating", "endpoint answered 200"):
        assert step in progress, step
    summary = stdout.getvalue()
    assert "summary check.wav: image" in summary
    for stage in ("transcript:", "decode", "ASR", "transcript->endpoint", "generation", "writes", "pipeline overhead"):
        assert stage in summary, stage
    if runtime.config.is_async:
        assert progress.index("waiting for the GPU") < progress.index("generating")
        assert "waiting for the GPU" in summary
    assert f"gallery: {tmp_path / 'out' / 'index.html'}" in summary


def test_uploading_the_same_file_again_is_a_new_upload_with_the_same_picture(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    recording = tmp_path / "repeat.mp3"
    shutil.copyfile(AUDIO / "red-apple.mp3", recording)
    run_cli(runtime, tmp_path / "first", recording)
    first = json.loads((tmp_path / "first" / "repeat.mp3.json").read_text(encoding="utf-8"))
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main(
        ["run", str(recording), "--out", str(tmp_path / "second")], runtime=runtime, stdout=stdout, stderr=stderr
    )

    assert code == 0
    second = json.loads((tmp_path / "second" / "repeat.mp3.json").read_text(encoding="utf-8"))
    # The input bucket is versioned: the same bytes again are a new upload (a new version), processed again.
    assert second["source"]["upload_id"] != first["source"]["upload_id"]
    assert (tmp_path / "second" / "repeat.mp3.png").read_bytes() == (tmp_path / "first" / "repeat.mp3.png").read_bytes()
    assert all(count == 1 for count in runtime.generations.values()), "each upload generated once"


def test_a_cold_start_shows_the_gpu_starting_before_generating(runtime: LocalRuntime, tmp_path: Path) -> None:
    endpoint = runtime.endpoint.async_endpoint
    assert endpoint is not None, "cdk.json's default endpoint is asynchronous"
    recording = tmp_path / "cold start.mp3"
    shutil.copyfile(AUDIO / "red-apple.mp3", recording)
    # Scaled in at once: the next request finds no instance and waits for one to start.
    endpoint.cold_start_s, endpoint.scale_in_idle_s = 1.0, 0.0
    starts = endpoint.cold_starts
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        code = main(
            ["run", str(recording), "--out", str(tmp_path / "out")], runtime=runtime, stdout=stdout, stderr=stderr
        )
    finally:
        endpoint.cold_start_s, endpoint.scale_in_idle_s = 0.0, runtime.config.scale_in_idle_minutes * 60.0

    assert code == 0
    assert endpoint.cold_starts == starts + 1
    progress = stderr.getvalue()
    waiting = progress.index("waiting for the GPU")
    starting = progress.index("starting the GPU (cold start, 1 s)")
    assert waiting < starting < progress.index("generating")
    result = runtime.collect("cold start.mp3")
    assert result.timings["waiting"] >= 1.0, "the cold start is time spent waiting, not generating"
