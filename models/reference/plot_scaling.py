#!/usr/bin/env python3
"""The scaling curves as an SVG: planned peak memory and the step's time after the frozen
prefix against the batch size, the number of trained layers and HOSVD's eps, vanilla beside
HOSVD. Reads the tables that scaling.sh prints. Standard library only.

    bash models/reference/scaling.sh | tee models/reference/results_scaling.md
    python3 models/reference/plot_scaling.py models/reference/results_scaling.md scaling.svg
"""

from __future__ import annotations

import sys

PANEL_W, PANEL_H, PAD = 300, 210, 48
METRICS = [("planned peak MB", "planned peak (MB)"), ("after prefix ms", "ms per step after the prefix")]
SERIES = {"vanilla": "#222222", "HOSVD eps 0.8": "#1f77b4"}


def tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every markdown table, the title being the line before it."""
    out, title, lines = [], "", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out.append((title, header, rows))
            continue
        if line:
            title = line
        i += 1
    return out


def series(header: list[str], rows: list[list[str]]) -> tuple[list[str], dict[str, dict[str, list[float]]]]:
    """x labels in order, and per series (vanilla / HOSVD) per metric the values at them.
    The eps table has one vanilla row and one HOSVD row per eps: vanilla is drawn flat."""
    col = {name: header.index(name) for name, _ in METRICS}
    if header[0] == "eps":
        xs = [r[0] for r in rows if r[0] != "vanilla"]
        van = next(r for r in rows if r[0] == "vanilla")
        hos = [r for r in rows if r[0] != "vanilla"]
        data = {
            "vanilla": {m: [float(van[c])] * len(xs) for m, c in col.items()},
            "HOSVD eps 0.8": {m: [float(r[c]) for r in hos] for m, c in col.items()},
        }
        return xs, data
    xs = [r[0] for r in rows if "HOSVD" not in r[0]]
    data = {}
    for name, keep in (("vanilla", lambda r: "HOSVD" not in r[0]), ("HOSVD eps 0.8", lambda r: "HOSVD" in r[0])):
        picked = [r for r in rows if keep(r)]
        data[name] = {m: [float(r[c]) for r in picked] for m, c in col.items()}
    return xs, data


def panel(x0: float, y0: float, title: str, xlabel: str, ylabel: str, xs: list[str], lines: dict[str, list[float]]) -> list[str]:
    top = max(max(v) for v in lines.values()) * 1.1 or 1.0
    w, h = PANEL_W - PAD - 10, PANEL_H - PAD - 20
    px = lambda i: x0 + PAD + (i + 0.5) * w / len(xs)
    py = lambda v: y0 + 20 + h - v / top * h
    out = [
        f'<text x="{x0 + PAD + w / 2}" y="{y0 + 12}" text-anchor="middle" font-size="12">{title}</text>',
        f'<rect x="{x0 + PAD}" y="{y0 + 20}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
        f'<text x="{x0 + PAD + w / 2}" y="{y0 + PANEL_H - 8}" text-anchor="middle" font-size="11">{xlabel}</text>',
        f'<text x="{x0 + 12}" y="{y0 + 20 + h / 2}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 {x0 + 12} {y0 + 20 + h / 2})">{ylabel}</text>',
    ]
    for i, x in enumerate(xs):
        out.append(f'<text x="{px(i)}" y="{y0 + 20 + h + 14}" text-anchor="middle" font-size="10">{x}</text>')
    for k in range(5):
        v = top * k / 4
        out.append(f'<text x="{x0 + PAD - 4}" y="{py(v) + 3}" text-anchor="end" font-size="10">{v:.0f}</text>')
    for name, vals in lines.items():
        pts = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in enumerate(vals))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{SERIES[name]}" stroke-width="2"/>')
        out += [f'<circle cx="{px(i):.1f}" cy="{py(v):.1f}" r="3" fill="{SERIES[name]}"/>' for i, v in enumerate(vals)]
    return out


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    found = tables(open(src).read())
    width, height = PANEL_W * len(METRICS), PANEL_H * len(found) + 30
    body = []
    for row, (title, header, rows) in enumerate(found):
        xs, data = series(header, rows)
        for c, (metric, ylabel) in enumerate(METRICS):
            lines = {name: d[metric] for name, d in data.items()}
            body += panel(c * PANEL_W, 30 + row * PANEL_H, title, header[0], ylabel, xs, lines)
    legend = [
        f'<rect x="{10 + i * 150}" y="8" width="14" height="4" fill="{color}"/>'
        f'<text x="{30 + i * 150}" y="14" font-size="11">{name}</text>'
        for i, (name, color) in enumerate(SERIES.items())
    ]
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        *legend,
        *body,
        "</svg>",
    ]
    with open(dst, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
