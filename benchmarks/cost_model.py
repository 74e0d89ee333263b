"""What a month of pictures costs: the asynchronous endpoint that scales to zero versus an always-on one.

A model, not a measurement: it simulates one day of requests against one endpoint and prices the GPU
hours it keeps, plus Amazon Transcribe. Assumptions (each one a flag):
- Arrivals: `--images` per day, spread EVENLY over 16 waking hours (none at night): the gaps between
  requests are as long as they can be, which is the worst case for an endpoint that scales to zero.
- Async (endpointMode=async, minInstances=0): a request that finds no instance starts one and waits the
  cold start (default 7 min: FACTS reports "several minutes", one public capture 9 min 22 s); the
  instance then serves queued requests one at a time and scales in after `--idle-minutes` without work.
  The cold start is billed (an instance is billed from launch). At most one instance (maxInstances=1).
- Realtime (endpointMode=realtime): one instance billed every hour of the month.
- Generation: `--seconds-per-image` on the GPU (default 5 s: SD 1.x, 512x512, 25 steps, fp16 on a T4 runs
  ~7 it/s, so ~3.5 s of UNet plus the VAE and overhead; 50 steps measure ~7.8 s, 20 steps ~4 s).
- Price: SageMaker hosting, on demand, us-east-1, per instance-hour (async bills the same rate);
  730 hours a month. Transcribe: $0.024 per minute, 15 s minimum per job, `--clip-seconds` per recording.
- Lambda, S3, SQS, SNS, DynamoDB and CloudWatch: not modelled; well under $0.001 per image at these volumes.

Prints the assumptions and a Markdown table, and draws docs/cost-model.png (Pillow, no matplotlib).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

DOCS = Path(__file__).resolve().parents[1] / "docs"
HOURS_PER_MONTH = 730  # AWS's pricing convention
WAKING_HOURS = 16
# SageMaker real-time/async hosting, on demand, us-east-1 (USD per instance-hour). ml.g4dn.xlarge is the
# published anchor in FACTS.md; the others are approximate: check the SageMaker pricing page before relying.
PRICES = {
    "ml.g4dn.xlarge": 0.7364,
    "ml.g4dn.2xlarge": 1.0528,
    "ml.g5.xlarge": 1.4080,
}
TRANSCRIBE_PER_MINUTE = 0.024
TRANSCRIBE_MIN_SECONDS = 15
TABLE_VOLUMES = (1, 10, 100, 1000, 10000)


@dataclass(frozen=True)
class Assumptions:
    """Every input of the model."""

    instance_type: str = "ml.g4dn.xlarge"
    seconds_per_image: float = 5.0
    cold_start_minutes: float = 7.0
    idle_minutes: float = 15.0
    clip_seconds: float = 10.0

    @property
    def price_per_hour(self) -> float:
        """The instance's on-demand price."""
        return PRICES[self.instance_type]

    @property
    def transcribe_per_image(self) -> float:
        """One Transcribe job of one clip (15 s minimum)."""
        return max(self.clip_seconds, TRANSCRIBE_MIN_SECONDS) / 60 * TRANSCRIBE_PER_MINUTE


@dataclass(frozen=True)
class Day:
    """One simulated day of one mode."""

    gpu_hours: float
    wakes: int  # cold starts (async)
    mean_wait_s: float  # arrival to image, on average
    max_wait_s: float


def arrivals(images_per_day: int) -> list[float]:
    """Request times in seconds: evenly spread over the waking hours, each in the middle of its slot."""
    slot = WAKING_HOURS * 3600 / images_per_day
    return [(index + 0.5) * slot for index in range(images_per_day)]


def simulate_async(images_per_day: int, a: Assumptions) -> Day:
    """One instance that starts on demand, serves the queue in order, and scales in after `idle_minutes`."""
    cold, work, idle = a.cold_start_minutes * 60, a.seconds_per_image, a.idle_minutes * 60
    billed = 0.0
    wakes = 0
    started = None  # when the running instance was launched
    free_at = 0.0  # when it finishes the work it has
    waits = []
    for t in arrivals(images_per_day):
        if started is None or t > free_at + idle:
            if started is not None:
                billed += free_at + idle - started  # it scaled in before this request
            started, free_at, wakes = t, t + cold, wakes + 1
        begin = max(t, free_at)
        free_at = begin + work
        waits.append(free_at - t)
    if started is not None:
        billed += free_at + idle - started
    return Day(billed / 3600, wakes, sum(waits) / len(waits), max(waits))


def simulate_realtime(images_per_day: int, a: Assumptions) -> Day:
    """One instance up all day; requests queue only behind each other."""
    free_at, waits = 0.0, []
    for t in arrivals(images_per_day):
        free_at = max(t, free_at) + a.seconds_per_image
        waits.append(free_at - t)
    return Day(24.0, 0, sum(waits) / len(waits), max(waits))


def monthly(day: Day, images_per_day: int, a: Assumptions) -> float:
    """GPU hours and Transcribe for a month of such days."""
    days = HOURS_PER_MONTH / 24
    return days * (day.gpu_hours * a.price_per_hour + images_per_day * a.transcribe_per_image)


def rows(a: Assumptions, volumes: tuple[int, ...] = TABLE_VOLUMES) -> list[dict[str, float]]:
    """Monthly cost, cost per image and waits of both modes, per volume."""
    out = []
    for n in volumes:
        sync, fast = simulate_async(n, a), simulate_realtime(n, a)
        images = n * HOURS_PER_MONTH / 24
        out.append(
            {
                "images_per_day": n,
                "async_month": monthly(sync, n, a),
                "async_image": monthly(sync, n, a) / images,
                "async_gpu_hours": sync.gpu_hours,
                "async_wakes": sync.wakes,
                "async_mean_wait": sync.mean_wait_s,
                "realtime_month": monthly(fast, n, a),
                "realtime_image": monthly(fast, n, a) / images,
                "realtime_mean_wait": fast.mean_wait_s,
            }
        )
    return out


def markdown(table: list[dict[str, float]]) -> str:
    """The table the README shows."""
    lines = [
        "| images/day | async $/month | async $/image | async GPU h/day (cold starts) | async mean wait "
        "| realtime $/month | realtime $/image | realtime mean wait |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table:
        lines.append(
            f"| {r['images_per_day']:,} | {r['async_month']:,.2f} | {r['async_image']:.4f} "
            f"| {r['async_gpu_hours']:.2f} ({r['async_wakes']}) | {_duration(r['async_mean_wait'])} "
            f"| {r['realtime_month']:,.2f} | {r['realtime_image']:.4f} | {_duration(r['realtime_mean_wait'])} |"
        )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    """`7.1 min` or `5 s`."""
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


# --- chart -----------------------------------------------------------------------------------

WIDTH, HEIGHT = 960, 600
LEFT, RIGHT, TOP, BOTTOM = 90, 40, 70, 130
ASYNC_COLOUR, REALTIME_COLOUR, GRID, INK = (31, 119, 180), (214, 39, 40), (225, 225, 225), (40, 40, 40)


def draw_chart(a: Assumptions, path: Path) -> None:
    """Monthly cost against images per day (log x) for both modes, with the assumptions underneath."""
    volumes = sorted({round(10 ** (k / 24)) for k in range(0, 97)})  # 1..10,000, 24 points a decade
    table = rows(a, tuple(volumes))
    # Log y as well: the async curve spans $8 to thousands, and Transcribe dominates at high volume.
    top = max(max(r["async_month"], r["realtime_month"]) for r in table)
    decades = math.ceil(math.log10(top))
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font, small, title = (ImageFont.load_default(size=size) for size in (15, 13, 19))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(n: float) -> float:
        return LEFT + math.log10(n) / 4 * plot_w

    def y(cost: float) -> float:
        return TOP + plot_h - math.log10(cost) / decades * plot_h

    for decade in range(decades + 1):
        for factor in (1, 3):
            step = factor * 10**decade
            if step <= 10**decades:
                draw.line([(LEFT, y(step)), (LEFT + plot_w, y(step))], fill=GRID)
                draw.text((LEFT - 8, y(step)), f"${step:,}", fill=INK, font=small, anchor="rm")
    for decade in range(5):
        n = 10**decade
        draw.line([(x(n), TOP), (x(n), TOP + plot_h)], fill=GRID)
        draw.text((x(n), TOP + plot_h + 8), f"{n:,}", fill=INK, font=small, anchor="mt")
    draw.rectangle([(LEFT, TOP), (LEFT + plot_w, TOP + plot_h)], outline=INK)
    for key, colour in (("realtime_month", REALTIME_COLOUR), ("async_month", ASYNC_COLOUR)):
        draw.line([(x(r["images_per_day"]), y(r[key])) for r in table], fill=colour, width=3)
    for r in rows(a):
        for key, colour in (("realtime_month", REALTIME_COLOUR), ("async_month", ASYNC_COLOUR)):
            px, py = x(r["images_per_day"]), y(r[key])
            draw.ellipse([(px - 4, py - 4), (px + 4, py + 4)], fill=colour)
            # Labels left of the last point (inside the picture); async below its point, realtime above.
            last = r["images_per_day"] == TABLE_VOLUMES[-1]
            below = key == "async_month"
            anchor = ("r" if last else "l") + ("t" if below else "d")
            dx, dy = (-6 if last else 6), ((16 if last else 6) if below else -6)
            draw.text((px + dx, py + dy), f"${r[key]:,.0f}", fill=colour, font=small, anchor=anchor)

    draw.text((WIDTH / 2, 22), f"Monthly cost vs images per day ({a.instance_type})", fill=INK, font=title, anchor="mt")
    draw.text(
        (LEFT + plot_w / 2, TOP + plot_h + 30),
        "images per day (log scale); cost per month (log scale)",
        fill=INK,
        font=font,
        anchor="mt",
    )
    legend = [
        (ASYNC_COLOUR, "async: scales to zero (endpointMode=async, minInstances=0)"),
        (REALTIME_COLOUR, "realtime: one instance always on (endpointMode=realtime)"),
    ]
    for row, (colour, label) in enumerate(legend):
        ly = TOP + 14 + row * 22
        draw.line([(LEFT + 14, ly), (LEFT + 44, ly)], fill=colour, width=3)
        draw.text((LEFT + 52, ly), label, fill=INK, font=small, anchor="lm")
    notes = (
        f"{a.seconds_per_image:g} s per image, cold start {a.cold_start_minutes:g} min (billed), scale-in after "
        f"{a.idle_minutes:g} idle min, ${a.price_per_hour}/h on demand (us-east-1), 730 h a month;",
        f"requests spread evenly over {WAKING_HOURS} waking hours; Transcribe ${TRANSCRIBE_PER_MINUTE}/min, "
        f"{a.clip_seconds:g} s clips (15 s minimum); Lambda, S3, SQS, SNS, DynamoDB not counted.",
        "Model, not measurement: benchmarks/cost_model.py",
    )
    for row, note in enumerate(notes):
        draw.text((LEFT, TOP + plot_h + 58 + row * 18), note, fill=INK, font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)


def main() -> None:
    """Print the assumptions and the table; draw the chart."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instance-type", choices=sorted(PRICES), default=Assumptions.instance_type)
    parser.add_argument("--seconds-per-image", type=float, default=Assumptions.seconds_per_image)
    parser.add_argument("--cold-start-minutes", type=float, default=Assumptions.cold_start_minutes)
    parser.add_argument("--idle-minutes", type=float, default=Assumptions.idle_minutes, help="scaleInIdleMinutes")
    parser.add_argument("--clip-seconds", type=float, default=Assumptions.clip_seconds)
    parser.add_argument("--chart", type=Path, default=DOCS / "cost-model.png")
    args = parser.parse_args()
    a = Assumptions(
        instance_type=args.instance_type,
        seconds_per_image=args.seconds_per_image,
        cold_start_minutes=args.cold_start_minutes,
        idle_minutes=args.idle_minutes,
        clip_seconds=args.clip_seconds,
    )
    print(f"Assumptions: {a}, ${a.price_per_hour}/h, {WAKING_HOURS} waking hours a day, {HOURS_PER_MONTH} h a month")
    print("Instance prices (USD/h, on demand, us-east-1): " + ", ".join(f"{k} {v}" for k, v in PRICES.items()))
    print()
    print(markdown(rows(a)))
    draw_chart(a, args.chart)
    print(f"\nchart: {args.chart}")


if __name__ == "__main__":
    main()
