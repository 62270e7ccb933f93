#!/usr/bin/env python3
"""Accuracy against activation memory (log scale), the paper's Pareto figure, as an SVG from
the JSON that paper_experiment.py writes. Standard library only (no matplotlib in the venv).

    python3 models/reference/plot_paper.py models/reference/results_paper.json paper.svg

One point per (--layers, method): the mean final accuracy over the seeds actc ran, with a bar
of ± one standard deviation when there are several, and PyTorch's mean (hollow) beside it when
the file has PyTorch runs. With several seeds a second panel puts the same points against
actc's true planned saved-for-backward memory.
"""

from __future__ import annotations

import json
import math
import statistics
import sys

PANEL, H, PAD = 560, 420, 60
COLORS = {
    "vanilla": "#222222",
    "HOSVD default (auto)": "#ff7f0e",
    "HOSVD eps=0.8": "#1f77b4",
    "HOSVD eps=0.9": "#17becf",
    "SVD eps=0.8": "#d62728",
    "gradient filter R2": "#2ca02c",
    "gradient filter R4": "#98df8a",
}
CENTERED = ("HOSVD centered (ε rule)", "#8c564b")
BUDGET = ("HOSVD --budget", "#9467bd")
MARKERS = {"2": "circle", "4": "square"}


def color(method: str) -> str:
    if "budget" in method:
        return BUDGET[1]
    if method.startswith("HOSVD centered"):
        return CENTERED[1]
    return COLORS.get(method, "gray")


def points(rows: list[dict]) -> list[dict]:
    vanilla = {r["layers"]: r["vanilla_bytes"] for r in rows if r.get("vanilla_bytes")}
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["layers"], r["method"]), []).append(r)
    out = []
    for (layers, method), rs in groups.items():
        actc = [r for r in rs if r.get("impl", "actc") == "actc"]
        torch = [r for r in rs if r.get("impl") == "torch"]
        if not actc:
            continue
        peak = [r.get("paper_bytes_peak") or r.get("paper_bytes_mean") for r in actc]
        mem = statistics.mean(p for p in peak if p) if any(peak) else vanilla[layers]
        acc = [100 * r["final_val_accuracy"] for r in actc]
        out.append({
            "layers": layers, "method": method, "paper": mem / 1024,
            "saved": actc[0]["saved_bytes"] / 1024, "acc": statistics.mean(acc),
            "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "torch": statistics.mean(100 * r["final_val_accuracy"] for r in torch)
            if torch else None,
        })
    return out


def panel(pts: list[dict], key: str, left: float, title: str, y0: float, y1: float) -> list[str]:
    xs = [math.log10(p[key]) for p in pts]
    x0, x1 = math.floor(min(xs)), math.ceil(max(xs))
    sx = lambda v: left + PAD + (math.log10(v) - x0) / max(x1 - x0, 1e-9) * (PANEL - 2 * PAD)
    sy = lambda v: H - PAD - (v - y0) / max(y1 - y0, 1e-9) * (H - 2 * PAD)
    out = [f'<line x1="{left + PAD}" y1="{H-PAD}" x2="{left + PANEL-PAD}" y2="{H-PAD}" stroke="black"/>',
           f'<line x1="{left + PAD}" y1="{PAD}" x2="{left + PAD}" y2="{H-PAD}" stroke="black"/>',
           f'<text x="{left + PANEL/2}" y="{H-15}" text-anchor="middle">{title}</text>']
    for e in range(x0, x1 + 1):
        x = sx(10**e)
        out.append(f'<line x1="{x}" y1="{H-PAD}" x2="{x}" y2="{H-PAD+5}" stroke="black"/>')
        out.append(f'<text x="{x}" y="{H-PAD+18}" text-anchor="middle">10^{e} kB</text>')
    for v in range(int(y0), int(y1) + 1, 5):
        y = sy(v)
        out.append(f'<line x1="{left + PAD-5}" y1="{y}" x2="{left + PAD}" y2="{y}" stroke="black"/>')
        out.append(f'<text x="{left + PAD-8}" y="{y+4}" text-anchor="end">{v}</text>')
    for p in pts:
        x, y, c = sx(p[key]), sy(p["acc"]), color(p["method"])
        if p["std"]:
            out.append(f'<line x1="{x}" y1="{sy(p["acc"] - p["std"])}" x2="{x}" '
                       f'y2="{sy(p["acc"] + p["std"])}" stroke="{c}"/>')
        if MARKERS.get(p["layers"]) == "circle":
            out.append(f'<circle cx="{x}" cy="{y}" r="5" fill="{c}"/>')
        else:
            out.append(f'<rect x="{x-5}" y="{y-5}" width="10" height="10" fill="{c}"/>')
        if p["torch"] is not None:
            out.append(f'<circle cx="{x + 9}" cy="{sy(p["torch"])}" r="4" fill="none" stroke="{c}"/>')
        if "budget" in p["method"] or "centered eps" in p["method"]:
            out.append(f'<text x="{x+8}" y="{y+4}" font-size="10">{p["method"].split()[-1]}</text>')
    return out


def main() -> None:
    rows = json.load(open(sys.argv[1]))
    pts = points(rows)
    seeds = max(sum(1 for r in rows if (r["layers"], r["method"]) == (p["layers"], p["method"])
                    and r.get("impl", "actc") == "actc") for p in pts)
    panels = [("paper", "peak activation memory of the compressed layers (paper's metric)")]
    if seeds > 1:
        panels.append(("saved", "actc's planned saved-for-backward (all of it)"))
    lo = min(p["acc"] - p["std"] for p in pts + [{"acc": p["torch"], "std": 0} for p in pts if p["torch"]])
    hi = max(p["acc"] + p["std"] for p in pts)
    y0, y1 = math.floor(lo / 5) * 5, math.ceil(hi / 5) * 5
    width = PANEL * len(panels)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{H}" fill="white"/>',
           f'<text x="15" y="{H/2}" transform="rotate(-90 15 {H/2})" text-anchor="middle">'
           f'validation accuracy (%){", mean ± std over seeds" if seeds > 1 else ""}</text>']
    for i, (key, title) in enumerate(panels):
        out += panel(pts, key, i * PANEL, title + " (log scale)", y0, y1)
    shown = {p["method"] for p in pts}
    legend = [(m, c) for m, c in COLORS.items() if m in shown]
    if any(m.startswith("HOSVD centered") for m in shown):
        legend.append(CENTERED)
    if any("budget" in m for m in shown):
        legend.append(BUDGET)
    for i, (method, c) in enumerate(legend):
        y = PAD + 14 * i
        out.append(f'<rect x="{PANEL-PAD-150}" y="{y-8}" width="10" height="10" fill="{c}"/>')
        out.append(f'<text x="{PANEL-PAD-135}" y="{y+1}">{method}</text>')
    y = PAD + 14 * len(legend) + 6
    out.append(f'<text x="{PANEL-PAD-150}" y="{y}">circle: --layers 2, square: --layers 4</text>')
    if any(p["torch"] is not None for p in pts):
        out.append(f'<text x="{PANEL-PAD-150}" y="{y+14}">hollow: PyTorch, same function</text>')
    out.append("</svg>")
    open(sys.argv[2], "w").write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
