"""Regenerate docs/web.png: the web page after a spoken recording became a picture (`make screenshot`).

Runs `local serve`'s pipeline (tiny model) and Debian's chromium with the browser test's fake microphone, speaks
the committed recording, picks one file so the history has two pictures, and photographs the done state.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "lambdas")]

from tests.local.browser_support import browser_page, chromium_missing, local_site, speak_into  # noqa: E402

TARGET = REPO / "docs" / "web.png"
PICKED = REPO / "tests" / "fixtures" / "audio" / "red-apple.mp3"
TIMEOUT_MS = 180_000


def main() -> int:
    """Write TARGET; exit 1 when the page does not reach the done state."""
    missing = chromium_missing()
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as logs,
        local_site(Path(logs)) as (_, web),
        browser_page(width=900, height=1300) as page,
    ):
        page.goto(web.url)
        page.get_by_test_id("file").set_input_files(str(PICKED))
        page.wait_for_function(
            "() => document.querySelector('[data-testid=transcript]').textContent.includes('apple')", timeout=TIMEOUT_MS
        )
        speak_into(page)
        page.wait_for_function(
            "() => document.querySelector('[data-testid=transcript]').textContent.toLowerCase().includes('astronaut')",
            timeout=TIMEOUT_MS,
        )
        page.wait_for_function("() => document.querySelectorAll('[data-testid=history] li img').length >= 2")
        page.wait_for_function("() => document.querySelector('[data-testid=image]').naturalWidth > 0")
        print(f"status: {page.get_by_test_id('status').inner_text()}")
        print(f"transcript: {page.get_by_test_id('transcript').inner_text()}")
        page.screenshot(path=str(TARGET), full_page=True)
    print(f"{TARGET.relative_to(REPO)} written in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
