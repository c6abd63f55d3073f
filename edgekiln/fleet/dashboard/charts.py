"""Line charts as inline SVG, drawn on the server: no chart library and no script.

Colours and fonts come from the SVG's attributes and classes in ``dashboard.css`` (the
pages' Content-Security-Policy allows no inline ``style``).  Every point is also a
``<circle>`` with a ``<title>`` (hover shows its value), and the chart carries its point
count in ``data-points``, which the browser tests read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 360, 150
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 18, 22
COLOURS = ("#2563eb", "#dc2626", "#059669", "#d97706")


@dataclass(frozen=True)
class Series:
    """One line: its name and (x, y) points, x in seconds since the epoch."""

    name: str
    points: tuple[tuple[float, float], ...]


def _fmt(value: float) -> str:
    if abs(value) >= 1e9:
        return f"{value / 1e9:.3g}G"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.3g}k"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))


def _legend(series: list[Series]) -> tuple[list[str], int]:
    """Swatches and names in rows under the title, wrapped to the chart's width; and the rows."""
    parts, x, y, rows = [], LEFT + 6, TOP - 2, 1
    for index, s in enumerate(series):
        width = 14 + 5 * len(s.name) + 8  # about 5 px a character at 9 px
        if x + width > WIDTH - RIGHT and x > LEFT + 6:
            x, y, rows = LEFT + 6, y + 11, rows + 1
        colour = COLOURS[index % len(COLOURS)]
        parts.append(f'<rect x="{x}" y="{y}" width="8" height="8" fill="{colour}"/>')
        parts.append(f'<text class="legend" x="{x + 11}" y="{y + 8}">{escape(s.name)}</text>')
        x += width
    return parts, rows


def line_chart(title: str, series: list[Series], unit: str = "") -> Markup:
    """An SVG line chart of ``series`` (empty series are left out; none at all: a note)."""
    series = [s for s in series if s.points]
    total = sum(len(s.points) for s in series)
    head = (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'data-points="{total}" aria-label="{escape(title)}"><title>{escape(title)}</title>'
    )
    label = f'<text class="chart-title" x="{LEFT}" y="12">{escape(title)}{escape(f" ({unit})" if unit else "")}</text>'
    if not series:
        empty = f'<text class="chart-empty" x="{WIDTH / 2}" y="{HEIGHT / 2}">no data yet</text>'
        return Markup(head + label + empty + "</svg>")
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y1 = y0 + 1
    legend, rows = _legend(series) if len(series) > 1 else ([], 0)
    top = TOP + 11 * rows
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - top - BOTTOM

    def px(x: float) -> float:
        return round(LEFT + (x - x0) / (x1 - x0) * plot_w, 1)

    def py(y: float) -> float:
        return round(top + plot_h - (y - y0) / (y1 - y0) * plot_h, 1)

    parts = [head, label]
    parts.append(f'<line class="axis" x1="{LEFT}" y1="{top + plot_h}" x2="{WIDTH - RIGHT}" y2="{top + plot_h}"/>')
    parts.append(f'<line class="axis" x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{top + plot_h}"/>')
    for value in (y0, y1):
        parts.append(f'<text class="tick" x="{LEFT - 4}" y="{py(value) + 4}" text-anchor="end">{_fmt(value)}</text>')
    parts.append(f'<text class="tick" x="{LEFT}" y="{HEIGHT - 6}">{_clock(min(xs))}</text>')
    parts.append(f'<text class="tick" x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" text-anchor="end">{_clock(max(xs))}</text>')
    for index, s in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        coords = " ".join(f"{px(x)},{py(y)}" for x, y in s.points)
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}" '
            f'data-series="{escape(s.name)}"/>'
        )
        for x, y in s.points:
            parts.append(
                f'<circle cx="{px(x)}" cy="{py(y)}" r="2" fill="{colour}">'
                f"<title>{escape(s.name)} {_fmt(y)} at {_clock(x)}</title></circle>"
            )
    parts += legend
    parts.append("</svg>")
    return Markup("".join(parts))
