"""A timeline chart of an incident's phases per component, as self-contained SVG.

Generated here from the postmortem document: no charting library, no script, no external
reference, so the HTML report opens anywhere without a network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

COLORS = {
    "detected": "#f59e0b",
    "diagnosed": "#fcd34d",
    "planned": "#93c5fd",
    "deferred": "#fde68a",  # held back by a guardrail (cooldown, budget, silence, window)
    "awaiting_approval": "#fdba74",
    "acting": "#2563eb",
    "verifying": "#a78bfa",
    "resolved": "#16a34a",
    "escalated": "#dc2626",
    "healthy": "#22c55e",
    "failing": "#ef4444",
    "down": "#7f1d1d",
    "starting": "#9ca3af",
    "unknown": "#d1d5db",
}
OTHER = "#e5e7eb"
LEVEL_COLORS = {"error": "#dc2626", "warning": "#d97706", "info": "#2563eb", "debug": "#6b7280"}

WIDTH = 960
LABEL_W = 150
RIGHT = 24
TOP = 28
ROW_H = 24
GAP = 10


def nice_step(span: float, ticks: int = 8) -> float:
    raw = max(span / ticks, 1e-3)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return float(m * mag)
    return float(10 * mag)


def timeline_svg(rows: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]) -> str:
    starts: list[float] = [s["start"] for r in rows for s in r["segments"]] + [e["t"] for e in events]
    ends: list[float] = [s["end"] for r in rows for s in r["segments"]] + [e["t"] for e in events]
    lo = float(min([0.0, *starts]))
    hi = float(max([lo + 1.0, *ends]))
    span = hi - lo
    plot_w = WIDTH - LABEL_W - RIGHT

    def x(t: float) -> float:
        return round(LABEL_W + (t - lo) / span * plot_w, 2)

    n_rows = len(rows) + 1  # + the events row
    legend_y = TOP + n_rows * (ROW_H + GAP) + 16
    order = list(COLORS)
    # A phase this chart has no colour for yet is drawn in grey, after the known ones.
    used = sorted(
        {s["phase"] for r in rows for s in r["segments"]},
        key=lambda p: (order.index(p) if p in COLORS else len(order), p),
    )
    height = legend_y + 24 * (1 + len(used) // 6) + 8
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="incident timeline" '
        'font-family="system-ui, sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
    ]
    step = nice_step(span)
    t = math.ceil(lo / step) * step
    while t <= hi + 1e-9:
        xt = x(t)
        out.append(f'<line x1="{xt}" y1="{TOP - 6}" x2="{xt}" y2="{legend_y - 12}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{xt}" y="{TOP - 10}" text-anchor="middle" fill="#374151">{_num(t)} s</text>')
        t += step
    for i, row in enumerate(rows):
        y = TOP + i * (ROW_H + GAP)
        out.append(
            f'<text x="{LABEL_W - 8}" y="{y + ROW_H / 2 + 4}" text-anchor="end" fill="#111827">'
            f"{escape(str(row['row']))}</text>"
        )
        for seg in row["segments"]:
            x0, x1 = x(seg["start"]), x(seg["end"])
            w = max(x1 - x0, 2.0)  # an instant still shows
            color = COLORS.get(seg["phase"], OTHER)
            tip = f"{row['row']}: {seg['phase']} {_num(seg['start'])} to {_num(seg['end'])} s"
            out.append(
                f'<rect class="phase phase-{escape(seg["phase"])}" x="{x0}" y="{y}" width="{round(w, 2)}" '
                f'height="{ROW_H}" rx="3" fill="{color}"><title>{escape(tip)}</title></rect>'
            )
    y = TOP + len(rows) * (ROW_H + GAP)
    out.append(
        f'<text x="{LABEL_W - 8}" y="{y + ROW_H / 2 + 4}" text-anchor="end" fill="#111827">events</text>'
    )
    for ev in events:
        xe = x(ev["t"])
        color = LEVEL_COLORS.get(ev.get("level", "info"), "#2563eb")
        tip = f"#{ev['position']} {_num(ev['t'])} s {ev['type']}: {ev['text']}"
        out.append(
            f'<line class="event" x1="{xe}" y1="{y}" x2="{xe}" y2="{y + ROW_H}" stroke="{color}" '
            f'stroke-width="2"><title>{escape(tip)}</title></line>'
        )
    for i, phase in enumerate(used):
        lx = LABEL_W + (i % 6) * 130
        ly = legend_y + (i // 6) * 24
        swatch = COLORS.get(phase, OTHER)
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="14" height="14" rx="2" fill="{swatch}"/>')
        out.append(f'<text x="{lx + 20}" y="{ly + 1}" fill="#374151">{escape(phase)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _num(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") if v != int(v) else str(int(v))
