"""benchmarks/cost_model.py: the numbers the README's cost section shows follow from its stated assumptions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from .conftest import REPO

_spec = importlib.util.spec_from_file_location("cost_model", REPO / "benchmarks" / "cost_model.py")
assert _spec is not None and _spec.loader is not None
cost_model = importlib.util.module_from_spec(_spec)
# dataclasses look their module up in sys.modules.
sys.modules["cost_model"] = cost_model
_spec.loader.exec_module(cost_model)

DEFAULT = cost_model.Assumptions()
DAYS = 730 / 24


def test_one_image_a_day_pays_one_cold_start_one_image_and_the_idle_tail() -> None:
    (row,) = cost_model.rows(DEFAULT, (1,))
    hours = (7 * 60 + 5 + 15 * 60) / 3600
    transcribe = 15 / 60 * 0.024  # a 10 s clip bills Transcribe's 15 s minimum
    assert row["async_month"] == pytest.approx(DAYS * (hours * 0.7364 + transcribe))
    assert row["async_wakes"] == 1
    assert row["async_mean_wait"] == pytest.approx(7 * 60 + 5), "the whole cold start, then the image"


def test_realtime_bills_every_hour_of_the_month() -> None:
    (row,) = cost_model.rows(DEFAULT, (1,))
    assert row["realtime_month"] == pytest.approx(730 * 0.7364 + DAYS * 15 / 60 * 0.024)
    assert row["realtime_mean_wait"] == pytest.approx(5)


def test_requests_closer_than_the_idle_window_keep_one_instance_up() -> None:
    # 100 a day over 16 hours: one every 9.6 minutes, inside the 15-minute idle window: one cold start a day.
    (row,) = cost_model.rows(DEFAULT, (100,))
    assert row["async_wakes"] == 1
    assert 16 < row["async_gpu_hours"] < 16.5
    # A 5-minute window after a 2-minute start ends before the next request: each one wakes the endpoint.
    (short,) = cost_model.rows(cost_model.Assumptions(idle_minutes=5, cold_start_minutes=2), (100,))
    assert short["async_wakes"] == 100
    # After a 7-minute start the instance is still up when the next request comes, but not for the one after.
    (alternate,) = cost_model.rows(cost_model.Assumptions(idle_minutes=5), (100,))
    assert alternate["async_wakes"] == 50


def test_async_never_costs_more_than_realtime_for_the_table_volumes() -> None:
    for row in cost_model.rows(DEFAULT):
        assert row["async_month"] < row["realtime_month"], row["images_per_day"]


def test_the_chart_is_drawn(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    cost_model.draw_chart(DEFAULT, path)
    from PIL import Image

    with Image.open(path) as image:
        assert image.size == (cost_model.WIDTH, cost_model.HEIGHT)
        colours = {colour for _, colour in image.getcolors(maxcolors=100_000) or []}
    assert cost_model.ASYNC_COLOUR in colours and cost_model.REALTIME_COLOUR in colours
