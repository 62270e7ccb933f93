#!/usr/bin/env python3
"""The paper's experiment with actc (Nguyen et al., NeurIPS 2024, Fashion-MNIST rows):
ImageNet-pretrained MobileNetV2 fine-tuned at --layers 2 and 4 with vanilla, HOSVD (eps 0.8,
0.9), SVD (eps 0.8) and gradient filtering (R2, R4), and optionally HOSVD under --budget;
validation accuracy, the paper's memory metric (mean and peak per step over the last epoch)
and the true planned arena of each.

Runs the release binary, and with --torch the PyTorch reference of the same methods
(finetune_torch.py; the paper's HOSVD in hosvd_torch.py) on the same function and data, over
--seeds; needs numpy (the venv of models/README.md):

    cargo build --release
    .venv/bin/python models/reference/paper_experiment.py --epochs 5 --seeds 0,1,2 --torch \
        --out results_paper.json

Prints a Markdown table of means ± standard deviations over the seeds; --out keeps every run
(and its commands) as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "models/data/fashion-mnist"
VAL = DATA / "t10k-images-idx3-ubyte.gz"

TORCH = ROOT / ".venv/bin/python"


def methods(max_rank: str) -> list[tuple[str, list[str], list[str] | None]]:
    """(label, actc compile flags, finetune_torch.py flags or None where PyTorch has no
    counterpart here)."""
    def hosvd(eps: str, centered: bool):
        rule = ["--rank-rule", "centered" if centered else "eps"]
        actc = ["--compress", "hosvd", "--eps", eps, *rule]
        torch = ["--compress", "hosvd", "--eps", eps, "--max-rank", max_rank]
        return actc, torch + ["--rank-rule", "centered" if centered else "eps"]
    out = [("vanilla", [], ["--compress", "none"])]
    out.append(("HOSVD default (auto)", ["--compress", "hosvd"],
                ["--compress", "hosvd", "--max-rank", max_rank, "--rank-rule", "auto"]))
    out += [(f"HOSVD eps={e}", *hosvd(e, False)) for e in ("0.8", "0.9")]
    out += [(f"HOSVD centered eps={e}", *hosvd(e, True)) for e in ("0.8", "0.9", "0.95", "0.99")]
    out += [
        ("SVD eps=0.8", ["--compress", "svd", "--eps", "0.8"], None),
        ("gradient filter R2", ["--compress", "gradfilter", "--patch", "2"], None),
        ("gradient filter R4", ["--compress", "gradfilter", "--patch", "4"], None),
        # The frozen prefix in int8 (issue 20): the same training on int8 boundary features.
        ("vanilla (int8 prefix)", ["--prefix-precision", "int8"], None),
        ("HOSVD default (int8 prefix)", ["--compress", "hosvd", "--prefix-precision", "int8"], None),
    ]
    return out


def run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    return r.stdout + r.stderr


def digits_npz(tmp: Path) -> tuple[Path, Path]:
    """scikit-learn's 8×8 digits (models/data/digits.npz, 0..16) as uint8 images ×16, split
    1297 / 500 after a fixed shuffle: data the models script did not make."""
    d = np.load(ROOT / "models/data/digits.npz")
    x = np.clip(d["x"] * 16, 0, 255).astype(np.uint8).reshape(-1, 1, 8, 8)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], d["y"][order].astype(np.int64)
    train, val = tmp / "digits_train.npz", tmp / "digits_val.npz"
    np.savez(train, x=x[:-500], y=y[:-500])
    np.savez(val, x=x[-500:], y=y[-500:])
    return train, val


def actc_run(args, label, flags, layers, seed, data, val, tmp) -> dict:
    plan, log = tmp / "p.actc", tmp / "log.jsonl"
    calibration = ["--calibration", str(data)] if "--budget" in flags else []
    compile_cmd = [
        args.actc, "compile", str(ROOT / "models/mobilenetv2.onnx"),
        "--layers", layers, "--input-shape", args.shape, "--momentum", "0.9",
        "--lr", str(args.lr), "--max-rank", args.max_rank, *flags, *calibration,
        "-o", str(plan),
    ]
    run(compile_cmd)
    inspect = json.loads(run([args.actc, "inspect", str(plan), "--json"]))
    train_cmd = [
        args.actc, "train", str(plan), "--data", str(data), "--val", str(val),
        "--epochs", str(args.epochs), "--seed", str(seed), "--quiet", "--log", str(log),
    ]
    start = time.time()
    run(train_cmd)
    seconds = time.time() - start
    epochs = [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "epoch"]
    last = epochs[-1]
    comp = last.get("compression")
    mem = inspect["memory"]
    return {
        "impl": "actc", "layers": layers, "method": label, "seed": seed,
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
    }


def torch_run(args, label, flags, layers, seed, data, val, tmp) -> dict:
    batch, _, size, _ = (int(v) for v in args.shape.split("x"))
    out = tmp / "torch.json"
    cmd = [
        str(TORCH), str(HERE / "finetune_torch.py"), "--epochs", str(args.epochs),
        "--batch", str(batch), "--size", str(size), "--layers", layers, "--lr", str(args.lr),
        "--seed", str(seed), "--drop-last", *flags, "--json", str(out),
    ]
    if data != DATA:
        cmd += ["--data", str(data), "--val", str(val)]
    run(cmd)
    r = json.loads(out.read_text())
    last = r["epochs"][-1]
    comp = last["compression"]
    return {
        "impl": "torch", "layers": layers, "method": label, "seed": seed,
        "val_accuracy": [e["test_acc"] for e in r["epochs"]],
        "final_val_accuracy": last["test_acc"],
        "paper_bytes_mean": sum(c["paper_bytes_mean"] for c in comp) if comp else None,
        "vanilla_bytes": sum(c["vanilla_bytes"] for c in comp) if comp else None,
        "ranks_mean": [c["ranks_mean"] for c in comp] if comp else None,
        "commands": [" ".join(cmd)],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--actc", default=str(ROOT / "target/release/actc"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--shape", default="64x3x32x32")
    ap.add_argument("--layers", default="2,4")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--max-rank", default="64")
    ap.add_argument("--seeds", default="0", help="comma-separated shuffling seeds")
    ap.add_argument("--data", choices=["fashion-mnist", "digits"], default="fashion-mnist",
                    help="the bundled Fashion-MNIST subset, or scikit-learn's digits")
    ap.add_argument("--torch", action="store_true",
                    help="also train each method PyTorch has (finetune_torch.py) on the same data")
    ap.add_argument("--methods", help="comma-separated labels to run [default: all]")
    ap.add_argument(
        "--budgets", default="",
        help="also HOSVD with --budget SIZE for each of these (e.g. 40K,100K), calibrated on "
             "the training data, with either rank rule",
    )
    ap.add_argument("--out")
    args = ap.parse_args()
    chosen = [m for m in methods(args.max_rank)
              if not args.methods or m[0] in args.methods.split(",")]
    for b in filter(None, args.budgets.split(",")):
        chosen.append((f"HOSVD budget {b}", ["--compress", "hosvd", "--budget", b], None))
        chosen.append((f"HOSVD centered budget {b}",
                       ["--compress", "hosvd", "--rank-rule", "centered", "--budget", b], None))
    seeds = [int(s) for s in args.seeds.split(",")]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, val = (DATA, VAL) if args.data == "fashion-mnist" else digits_npz(tmp)
        for layers in args.layers.split(","):
            for label, flags, torch_flags in chosen:
                for seed in seeds:
                    runs = [(actc_run, flags)]
                    if args.torch and torch_flags is not None:
                        runs.append((torch_run, torch_flags))
                    for fn, f in runs:
                        r = fn(args, label, f, layers, seed, data, val, tmp)
                        rows.append(r)
                        print(f"--layers {layers} {label} {r['impl']} seed {seed}: "
                              f"{r['final_val_accuracy']:.4f}", file=sys.stderr)
                if args.out:
                    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print_table(rows)


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def print_table(rows: list[dict]) -> None:
    """Per (--layers, method): actc's and PyTorch's final accuracy over the seeds (mean ±
    sample standard deviation), the paper's metric against vanilla's, the planned memory."""
    kb = lambda b: f"{b / 1024:.1f} kB" if b is not None else "-"
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["layers"], r["method"]), {}).setdefault(r["impl"], []).append(r)
    print("| --layers | method | seeds | actc val acc | PyTorch val acc | paper metric (mean) "
          "| below vanilla | saved (planned) | arena (planned) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (layers, method), impls in groups.items():
        a = impls["actc"]
        t = impls.get("torch", [])
        vanilla = next((r["vanilla_bytes"] for r in rows
                        if r["layers"] == layers and r["impl"] == "actc" and r["vanilla_bytes"]),
                       None)
        paper = [r["paper_bytes_mean"] for r in a if r["paper_bytes_mean"] is not None]
        metric = statistics.mean(paper) if paper else vanilla
        ratio = f"{vanilla / metric:.1f}×" if metric and vanilla else "-"
        print(f"| {layers} | {method} | {len(a)} | {mean_std([r['final_val_accuracy'] for r in a])} "
              f"| {mean_std([r['final_val_accuracy'] for r in t]) if t else '-'} | {kb(metric)} "
              f"| {ratio} | {kb(a[0]['saved_bytes'])} | {kb(a[0]['arena_bytes'])} |")


if __name__ == "__main__":
    main()
