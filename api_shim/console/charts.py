"""Small bar charts drawn on the server as SVG: one bar a minute over the last hour.

No JavaScript and no chart library: the template writes the `<rect>`s this
module lays out, so the console needs no front-end build and works with
scripts off. A minute with no figure (no snapshot was taken) draws no bar.
"""

from __future__ import annotations

from dataclasses import dataclass

WIDTH = 240
HEIGHT = 40


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # the bar's tooltip: "12 min ago: 34"


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    unit: str
    bars: list[Bar]
    latest: int | None  # the newest minute's figure
    peak: int
    total: int | None  # for counters: the sum over the hour
    known_minutes: int
    width: int = WIDTH
    height: int = HEIGHT


def bar_chart(title: str, unit: str, values: list[int | None], *, counter: bool) -> Chart:
    """Lay out one bar per value (oldest first), scaled to the largest."""
    known = [v for v in values if v is not None]
    peak = max(known, default=0)
    slot = WIDTH / max(len(values), 1)
    bars: list[Bar] = []
    for i, value in enumerate(values):
        if value is None:
            continue
        # A zero still shows as a hairline, so "nothing happened" differs from "no figure".
        height = max(1.0, (value / peak) * (HEIGHT - 2)) if peak else 1.0
        ago = len(values) - 1 - i
        when = "this minute" if ago == 0 else f"{ago} min ago"
        bars.append(
            Bar(
                x=round(i * slot + 0.5, 2),
                y=round(HEIGHT - height, 2),
                width=round(max(slot - 1.0, 1.0), 2),
                height=round(height, 2),
                label=f"{when}: {value:,} {unit}",
            )
        )
    latest = next((v for v in reversed(values) if v is not None), None)
    return Chart(
        title=title,
        unit=unit,
        bars=bars,
        latest=latest,
        peak=peak,
        total=sum(known) if counter and known else (0 if counter else None),
        known_minutes=len(known),
    )
