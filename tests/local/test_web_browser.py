"""The web page in headless Chromium against `local serve`: speak, pick a file, see the picture or the error.

Debian's chromium plays a committed WAV into a fake microphone; the local pipeline runs the real handlers,
Whisper tiny.en and the tiny Stable Diffusion model. In CI (`CI` set, as `.ci/run` does) a missing browser
FAILS the test: `.ci/run` installs it, so its absence is a broken setup, not a reason to pass. Elsewhere the
test is skipped with the reason, so a machine without chromium can still run the rest of the suite.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from infra.pipeline import BucketRole
from tests.local.browser_support import chromium_missing, launch, local_site, speak_into

pytestmark = pytest.mark.slow

RESULT_TIMEOUT_MS = 180_000
REPO = Path(__file__).resolve().parents[2]
SPOKEN_FILE = REPO / "tests" / "fixtures" / "audio" / "red-apple.mp3"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """The local pipeline and the page, started once for the module."""
    missing = chromium_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {missing}; .ci/run installs it")
        pytest.skip(f"{missing}; CI installs it and runs this test")
    with local_site(tmp_path_factory.mktemp("logs")) as started:
        yield started


@pytest.fixture(scope="module")
def playwright(site: tuple[Any, Any]) -> Iterator[Any]:
    """One Playwright session for the module (it allows one per thread)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as session:
        yield session


@pytest.fixture(scope="module")
def page(site: tuple[Any, Any], playwright: Any) -> Iterator[Any]:
    """One browser page on the site for the whole module: the history builds up across the tests (in file order)."""
    _, web = site
    browser = launch(playwright)
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.set_default_timeout(30_000)
        page.goto(web.url)
        yield page
    finally:
        browser.close()


def recorded_audio(runtime: Any) -> tuple[str, np.ndarray, int]:
    """The newest browser recording in the input bucket: key, mono samples, sample rate (decoded with PyAV)."""
    s3 = runtime.aws.client("s3")
    bucket = runtime.bucket_names[BucketRole.INPUT]
    keys = sorted(item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix="web/local/")["Contents"])
    key = [key for key in keys if key.endswith(".webm")][-1]
    data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with av.open(io.BytesIO(data)) as container:
        rate = container.streams.audio[0].rate
        frames = [frame.to_ndarray().astype(np.float32) for frame in container.decode(audio=0)]
    samples = np.concatenate([frame.reshape(frame.shape[0], -1).mean(axis=0) for frame in frames])
    return key, samples, rate


def wait_for_result(page: Any) -> None:
    page.get_by_test_id("transcript").wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)


def test_a_spoken_recording_ends_with_its_transcript_and_picture(site: tuple[Any, Any], page: Any) -> None:
    runtime, _ = site
    speak_into(page)
    wait_for_result(page)

    transcript = page.get_by_test_id("transcript").inner_text().lower()
    assert "astronaut" in transcript and "horse" in transcript, transcript
    image = page.get_by_test_id("image")
    image.wait_for(state="visible")
    page.wait_for_function("() => document.querySelector('[data-testid=image]').naturalWidth > 0")
    assert page.evaluate("() => document.querySelector('[data-testid=image]').naturalWidth") == 64
    assert "Done" in page.get_by_test_id("status").inner_text()
    assert page.locator("#parameters dt").count() > 0

    # The fake microphone really recorded speech, not silence (FACTS.md: a bad WAV records silence quietly).
    key, samples, rate = recorded_audio(runtime)
    assert re.fullmatch(r"web/local/\d{8}T\d{9}Z-[0-9a-f]{8}\.webm", key)
    assert len(samples) / rate > 4.0
    rms = float(np.sqrt(np.mean(np.square(samples))))
    print(f"recording: {len(samples) / rate:.2f} s, RMS {rms:.4f}")
    assert rms > 0.02, f"the recording is near silence (RMS {rms:.4f})"


def test_picking_a_file_works(page: Any) -> None:
    page.get_by_test_id("file").set_input_files(str(SPOKEN_FILE))
    page.wait_for_function(
        "() => document.querySelector('[data-testid=transcript]').textContent.toLowerCase().includes('apple')",
        timeout=RESULT_TIMEOUT_MS,
    )
    page.wait_for_function("() => document.querySelector('[data-testid=image]').naturalWidth > 0")


def test_a_non_audio_file_shows_its_error_and_what_to_do(page: Any, tmp_path: Path) -> None:
    letter = tmp_path / "letter.wav"
    letter.write_text("Dear Ada, this is a letter, not a recording.\n" * 20)
    page.get_by_test_id("file").set_input_files(str(letter))
    error = page.get_by_test_id("error")
    error.wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    assert "not audio" in page.locator("#error-reason").inner_text()
    assert "upload an audio recording" in page.locator("#error-action").inner_text()
    assert "Failed" in page.get_by_test_id("status").inner_text()
    assert page.get_by_test_id("transcript").is_hidden()

    # "Try again" clears the failure and returns to the recorder.
    page.get_by_role("button", name="Try again").click()
    assert error.is_hidden()
    assert page.evaluate("() => document.activeElement.dataset.testid") == "record"


def test_a_file_of_the_wrong_type_is_refused_before_uploading(site: tuple[Any, Any], page: Any, tmp_path: Path) -> None:
    runtime, _ = site
    s3 = runtime.aws.client("s3")
    bucket = runtime.bucket_names[BucketRole.INPUT]
    before = s3.list_objects_v2(Bucket=bucket, Prefix="web/local/").get("KeyCount")
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio")
    page.get_by_test_id("file").set_input_files(str(notes))
    page.get_by_test_id("error").wait_for(state="visible")
    assert "not a recording" in page.locator("#error-reason").inner_text()
    assert "pick an audio file" in page.locator("#error-action").inner_text()
    assert s3.list_objects_v2(Bucket=bucket, Prefix="web/local/").get("KeyCount") == before


def test_the_history_lists_every_upload_newest_first(page: Any) -> None:
    page.reload()
    history = page.get_by_test_id("history")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=history] li').length >= 3")
    classes = history.locator("li").evaluate_all("items => items.map(item => item.className)")
    # Newest first: the non-audio file (failed), the picked file, the recording (both done).
    assert classes[:3] == ["failed", "done", "done"], classes
    assert history.locator("li.done img").count() == 2


def test_the_recorder_stops_itself_at_the_configured_length(site: tuple[Any, Any], playwright: Any) -> None:
    runtime, web = site
    web.server.config.page_config["maxRecordingSeconds"] = 2
    browser = launch(playwright)  # a fresh fake microphone, from the start of the recording
    try:
        page = browser.new_page()
        page.goto(web.url)
        # The page shows the limit once it has read config.json (after the load event): wait for it, then record.
        page.wait_for_function("() => document.getElementById('max-seconds').textContent === '2'", timeout=10_000)
        page.get_by_test_id("record").click()
        # Nobody presses Stop: at 2 s the recorder stops and the recording is uploaded.
        page.wait_for_function(
            "() => document.querySelector('[data-testid=stop]').disabled && "
            "!document.getElementById('progress-card').hidden",
            timeout=20_000,
        )
        assert page.locator("#timer").inner_text() == "0:02"
        page.get_by_test_id("status").wait_for(state="visible")
        _, samples, rate = recorded_audio(runtime)
        assert 1.5 < len(samples) / rate < 3.5
        # Let the pipeline finish it before the module's runtime stops.
        page.wait_for_function(
            "() => /Done|Failed/.test(document.querySelector('[data-testid=status]').textContent)",
            timeout=RESULT_TIMEOUT_MS,
        )
    finally:
        browser.close()
        web.server.config.page_config["maxRecordingSeconds"] = 30
