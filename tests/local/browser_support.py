"""Headless Chromium (Debian's package, driven by Playwright) with a fake microphone, against `local serve`.

Shared by the browser test and `make screenshot` (scripts/web_screenshot.py). Never `playwright install`: it
downloads browsers; Debian's chromium is installed by `.ci/run` (apt-get install chromium).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/lib/chromium/chromium"))
# PCM 16-bit: anything else records silence without an error (FACTS.md "Browser"); scripts/make_web_fixture.py.
MIC_WAV = REPO / "tests" / "fixtures" / "web" / "astronaut-mic.wav"
MIC_SECONDS = 5.76
TINY_SIZE = 64
TINY_STEPS = 2


def chromium_missing() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    if not CHROMIUM.exists():
        return f"Debian's chromium is not installed at {CHROMIUM} (sudo apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -c constraints.txt -r requirements-dev.txt)"
    return None


@contextmanager
def local_site(log_dir: Path, *, max_recording_seconds: int = 30) -> Iterator[tuple[Any, Any]]:
    """The local pipeline with the tiny model and the web frontend on a free port: (runtime, frontend)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from local.runtime import LocalRuntime, load_config, local_config, tiny_model
    from local.serve import WebFrontend
    from local.settings import load_web_config

    model = tiny_model()
    runtime = LocalRuntime(local_config(load_config(), model, size=TINY_SIZE, steps=TINY_STEPS), model, log_dir=log_dir)
    runtime.start()
    try:
        web_config = load_web_config(runtime.config, max_recording_seconds=max_recording_seconds)
        with WebFrontend(runtime, port=0, web=web_config) as web:
            yield runtime, web
    finally:
        runtime.stop()


def launch(playwright: Any, *, mic: Path = MIC_WAV) -> Any:
    """Headless Chromium whose microphone plays `mic` once; microphone use is allowed without asking."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        args=[
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            # %noloop: play once (without it the file repeats).
            f"--use-file-for-fake-audio-capture={mic}%noloop",
        ],
    )


@contextmanager
def browser_page(*, mic: Path = MIC_WAV, width: int = 1000, height: int = 900) -> Iterator[Any]:
    """A page in a browser of its own (Playwright allows one sync session per thread: not inside another)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright, mic=mic)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def speak_into(page: Any, seconds: float = MIC_SECONDS + 0.6) -> None:
    """Press Record, let the fake microphone play, press Stop."""
    page.get_by_test_id("record").click()
    page.get_by_test_id("stop").wait_for(state="visible")
    page.wait_for_function("() => !document.querySelector('[data-testid=stop]').disabled")
    page.wait_for_timeout(seconds * 1000)
    page.get_by_test_id("stop").click()
