#!/usr/bin/env python3
"""Accuracy against activation memory (log scale), the paper's Pareto figure, as an SVG from
the JSON that paper_experiment.py writes. Standard library only (no matplotlib in the venv).

    python3 models/reference/plot_paper.py models/reference/results_paper.json paper.svg
"""

from __future__ import annotations

import json
import math
import sys

W, H, PAD = 640, 420, 60
COLORS = {
    "vanilla": "#222222",
    "HOSVD eps=0.8": "#1f77b4",
    "HOSVD eps=0.9": "#17becf",
    "SVD eps=0.8": "#d62728",
    "gradient filter R2": "#2ca02c",
    "gradient filter R4": "#98df8a",
}
MARKERS = {"2": "circle", "4": "square"}
BUDGET = ("HOSVD --budget", "#9467bd")


def color(method: str) -> str:
    if method.startswith("HOSVD budget"):
        return BUDGET[1]
    return COLORS.get(method, "gray")


def main() -> None:
    rows = json.load(open(sys.argv[1]))
    vanilla = {r["layers"]: r["vanilla_bytes"] for r in rows if r["vanilla_bytes"]}
    pts = []
    for r in rows:
        mem = r["paper_bytes_peak"] if r["paper_bytes_peak"] is not None else vanilla[r["layers"]]
        pts.append((mem / 1024, 100 * r["final_val_accuracy"], r["method"], r["layers"]))
    xs = [math.log10(p[0]) for p in pts]
    x0, x1 = math.floor(min(xs)), math.ceil(max(xs))
    ys = [p[1] for p in pts]
    y0, y1 = math.floor(min(ys) / 5) * 5, math.ceil(max(ys) / 5) * 5
    sx = lambda v: PAD + (math.log10(v) - x0) / max(x1 - x0, 1e-9) * (W - 2 * PAD)
    sy = lambda v: H - PAD - (v - y0) / max(y1 - y0, 1e-9) * (H - 2 * PAD)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<line x1="{PAD}" y1="{H-PAD}" x2="{W-PAD}" y2="{H-PAD}" stroke="black"/>',
           f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H-PAD}" stroke="black"/>']
    for e in range(x0, x1 + 1):
        x = sx(10**e)
        out.append(f'<line x1="{x}" y1="{H-PAD}" x2="{x}" y2="{H-PAD+5}" stroke="black"/>')
        out.append(f'<text x="{x}" y="{H-PAD+18}" text-anchor="middle">10^{e} kB</text>')
    for v in range(int(y0), int(y1) + 1, 5):
        y = sy(v)
        out.append(f'<line x1="{PAD-5}" y1="{y}" x2="{PAD}" y2="{y}" stroke="black"/>')
        out.append(f'<text x="{PAD-8}" y="{y+4}" text-anchor="end">{v}</text>')
    out.append(f'<text x="{W/2}" y="{H-15}" text-anchor="middle">peak activation memory of the compressed layers (paper\'s metric, log scale)</text>')
    out.append(f'<text x="15" y="{H/2}" transform="rotate(-90 15 {H/2})" text-anchor="middle">validation accuracy (%)</text>')
    for mem, acc, method, layers in pts:
        x, y, c = sx(mem), sy(acc), color(method)
        if MARKERS[layers] == "circle":
            out.append(f'<circle cx="{x}" cy="{y}" r="5" fill="{c}"/>')
        else:
            out.append(f'<rect x="{x-5}" y="{y-5}" width="10" height="10" fill="{c}"/>')
        if method.startswith("HOSVD budget"):
            out.append(f'<text x="{x+8}" y="{y+4}">{method.split()[-1]}</text>')
    shown = {p[2] for p in pts}
    legend = [(m, c) for m, c in COLORS.items() if m in shown]
    if any(m.startswith("HOSVD budget") for m in shown):
        legend.append(BUDGET)
    for i, (method, c) in enumerate(legend):
        y = PAD + 14 * i
        out.append(f'<rect x="{W-PAD-150}" y="{y-8}" width="10" height="10" fill="{c}"/>')
        out.append(f'<text x="{W-PAD-135}" y="{y+1}">{method}</text>')
    y = PAD + 14 * len(legend) + 6
    out.append(f'<text x="{W-PAD-150}" y="{y}">circle: --layers 2, square: --layers 4</text>')
    out.append("</svg>")
    open(sys.argv[2], "w").write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
