#!/usr/bin/env python3
"""Draws the load benchmark's side-by-side results as SVG bar charts (standard library only).

    python3 benches/load/charts.py RESULTS_JSON OUT_DIR

RESULTS_JSON is the results.json run.py writes ({"results": {figure: {target: value}}}).
One SVG per figure in CHARTS below, each a horizontal bar per target (direct, voxgate,
voxgate with a reload every second and with keys and limits where measured, nginx,
HAProxy), the value written at the bar's end and whether more or less is better in the
title. run.py calls draw() itself when BENCH_CHARTS names a directory.
"""

import json
import os
import sys
from xml.sax.saxutils import escape

# figure in results.json -> (file name, title, unit, more is better)
CHARTS = [
    ("small TTS: proxy CPU per request, µs", "cpu-per-request.svg",
     "Small TTS: proxy CPU per request", "µs", False),
    ("small TTS: requests/s", "requests-per-second.svg",
     "Small TTS: requests per second (64 connections, one proxy core)", "req/s", True),
    ("small TTS: p99 latency, ms", "p99.svg", "Small TTS: p99 latency", "ms", False),
    ("streaming TTS: added time to first byte, µs", "first-byte.svg",
     "Streaming TTS: time to first byte added over direct", "µs", False),
    ("10 MiB uploads ×8: MiB/s", "uploads.svg", "10 MiB uploads, 8 at a time", "MiB/s", True),
    ("25 MiB uploads ×32: peak RSS, MiB", "peak-rss.svg",
     "Peak RSS, 32 uploads of 25 MiB at a time", "MiB", False),
]

ORDER = ["direct", "voxgate", "voxgate, reload 1/s", "voxgate, keys+limits", "voxgate B", "nginx",
         "haproxy"]
COLOURS = {
    "direct": "#9e9e9e",
    "voxgate": "#1565c0",
    "voxgate, reload 1/s": "#64b5f6",
    "voxgate, keys+limits": "#0097a7",
    "voxgate B": "#7e57c2",
    "nginx": "#2e7d32",
    "haproxy": "#ef6c00",
}
WIDTH, BAR, GAP, LEFT, TOP = 640, 22, 8, 150, 44


def number(v):
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def svg(title, unit, higher, values):
    """One chart: `values` is [(target, value)] in display order."""
    peak = max(v for _, v in values) or 1.0
    span = WIDTH - LEFT - 90
    height = TOP + len(values) * (BAR + GAP) + 10
    better = "more is better" if higher else "less is better"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="10" y="20" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<text x="10" y="36" fill="#555555">{escape(unit)}, {better}</text>',
    ]
    for i, (target, value) in enumerate(values):
        y = TOP + i * (BAR + GAP)
        w = max(1.0, span * value / peak)
        colour = COLOURS.get(target, "#607d8b")
        out.append(f'<text x="{LEFT - 8}" y="{y + BAR * 0.7:.1f}" text-anchor="end">'
                   f'{escape(target)}</text>')
        out.append(f'<rect x="{LEFT}" y="{y}" width="{w:.1f}" height="{BAR}" fill="{colour}"/>')
        out.append(f'<text x="{LEFT + w + 6:.1f}" y="{y + BAR * 0.7:.1f}">{number(value)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def draw(results, out_dir):
    """Writes one SVG per charted figure present in `results`; returns the files written."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for figure, name, title, unit, higher in CHARTS:
        by = results.get(figure)
        if not by:
            continue
        values = [(t, by[t]) for t in ORDER if by.get(t) is not None]
        if not values:
            continue
        path = os.path.join(out_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(svg(title, unit, higher, values))
        written.append(path)
    return written


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        results = json.load(f)["results"]
    for path in draw(results, sys.argv[2]):
        print(path)


if __name__ == "__main__":
    main()
