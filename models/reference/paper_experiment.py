#!/usr/bin/env python3
"""The paper's experiment with actc (Nguyen et al., NeurIPS 2024, Fashion-MNIST rows):
ImageNet-pretrained MobileNetV2 fine-tuned at --layers 2 and 4 with vanilla, HOSVD (eps 0.8,
0.9), SVD (eps 0.8) and gradient filtering (R2, R4), and optionally HOSVD under --budget;
validation accuracy, the paper's memory metric (mean and peak per step over the last epoch)
and the true planned arena of each.

Standard library only; runs the release binary:

    cargo build --release
    python3 models/reference/paper_experiment.py --epochs 5 --out results_paper.json

Prints a Markdown table; --out keeps every number (and the commands) as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "models/data/fashion-mnist"
VAL = DATA / "t10k-images-idx3-ubyte.gz"

METHODS = [
    ("vanilla", []),
    ("HOSVD eps=0.8", ["--compress", "hosvd", "--eps", "0.8"]),
    ("HOSVD eps=0.9", ["--compress", "hosvd", "--eps", "0.9"]),
    ("SVD eps=0.8", ["--compress", "svd", "--eps", "0.8"]),
    ("gradient filter R2", ["--compress", "gradfilter", "--patch", "2"]),
    ("gradient filter R4", ["--compress", "gradfilter", "--patch", "4"]),
]


def run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    return r.stdout + r.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--actc", default=str(ROOT / "target/release/actc"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--shape", default="64x3x32x32")
    ap.add_argument("--layers", default="2,4")
    ap.add_argument("--max-rank", default="64")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--methods", help="comma-separated labels of METHODS to run [default: all]")
    ap.add_argument(
        "--budgets", default="",
        help="also HOSVD with --budget SIZE for each of these (e.g. 40K,100K), calibrated on the training data",
    )
    ap.add_argument("--out")
    args = ap.parse_args()
    methods = [m for m in METHODS if not args.methods or m[0] in args.methods.split(",")]
    methods += [
        (f"HOSVD budget {b}", ["--compress", "hosvd", "--budget", b, "--calibration", str(DATA)])
        for b in filter(None, args.budgets.split(","))
    ]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layers in args.layers.split(","):
            for label, flags in methods:
                plan = Path(tmp) / "p.actc"
                log = Path(tmp) / "log.jsonl"
                compile_cmd = [
                    args.actc, "compile", str(ROOT / "models/mobilenetv2.onnx"),
                    "--layers", layers, "--input-shape", args.shape, "--momentum", "0.9",
                    "--max-rank", args.max_rank, *flags, "-o", str(plan),
                ]
                run(compile_cmd)
                inspect = json.loads(run([args.actc, "inspect", str(plan), "--json"]))
                train_cmd = [
                    args.actc, "train", str(plan), "--data", str(DATA), "--val", str(VAL),
                    "--epochs", str(args.epochs), "--seed", args.seed, "--quiet",
                    "--log", str(log),
                ]
                start = time.time()
                run(train_cmd)
                seconds = time.time() - start
                epochs = [
                    e for e in map(json.loads, log.read_text().splitlines())
                    if e["event"] == "epoch"
                ]
                last = epochs[-1]
                comp = last.get("compression")
                mem = inspect["memory"]
                rows.append({
                    "layers": layers,
                    "method": label,
                    "val_accuracy": [e["val"]["accuracy"] for e in epochs],
                    "final_val_accuracy": last["val"]["accuracy"],
                    "paper_bytes_mean": comp["paper_bytes_mean"] if comp else None,
                    "paper_bytes_peak": comp["paper_bytes_peak"] if comp else None,
                    "vanilla_bytes": comp["vanilla_bytes"] if comp else None,
                    "layers_report": comp["layers"] if comp else None,
                    "arena_bytes": mem["arena_bytes"],
                    "saved_bytes": mem["saved_bytes"],
                    "planned_peak_bytes": mem["planned_peak_bytes"],
                    "train_seconds": seconds,
                    "commands": [" ".join(compile_cmd), " ".join(train_cmd)],
                })
                print(f"--layers {layers} {label}: {last['val']['accuracy']:.4f}", file=sys.stderr)

    # Vanilla's paper metric: the compressed layers' inputs kept whole (same layers).
    vanilla_of = {
        r["layers"]: next(
            (x["vanilla_bytes"] for x in rows if x["layers"] == r["layers"] and x["vanilla_bytes"]),
            None,
        )
        for r in rows
    }
    print("| --layers | method | val acc (final) | paper metric mean | paper metric peak | saved (planned) | arena (planned) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mean = r["paper_bytes_mean"] if r["paper_bytes_mean"] is not None else vanilla_of[r["layers"]]
        peak = r["paper_bytes_peak"] if r["paper_bytes_peak"] is not None else vanilla_of[r["layers"]]
        kb = lambda b: f"{b / 1024:.1f} kB" if b is not None else "-"
        print(
            f"| {r['layers']} | {r['method']} | {r['final_val_accuracy']:.4f} | {kb(mean)} | {kb(peak)} "
            f"| {kb(r['saved_bytes'])} | {kb(r['arena_bytes'])} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
