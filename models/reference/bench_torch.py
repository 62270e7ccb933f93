#!/usr/bin/env python3
"""Time one PyTorch training step of MobileNetV2 (last 4 convs + classifier, frozen BN, SGD).

Run from the repository root:

    .venv/bin/python models/reference/bench_torch.py                 # every config, table
    .venv/bin/python models/reference/bench_torch.py --steps 50 --json bench.json
    .venv/bin/python models/reference/bench_torch.py --shapes 8x224 --layouts channels_last

A step is forward, F.cross_entropy, zero_grad, backward, SGD(lr 0.01, momentum 0.9).step(),
on synthetic data (seeded randn input, random labels), in eval mode. Two models (`--bn`):
- `frozen`: torchvision MobileNetV2 + ImageNet weights + 10-way classifier with BatchNorm
  modules in eval mode, BN parameters frozen (DESIGN.md §6's setup); trainable = the 4 last
  conv weights (no bias) + classifier;
- `folded`: the function of models/mobilenetv2.onnx (BN folded into the convs, the file's
  weights); trainable = the 4 last conv weights and biases + classifier (what actc trains).
Each configuration runs in its own subprocess so that its peak RSS
(resource.getrusage(RUSAGE_SELF).ru_maxrss, the whole process: Python, torch, model, data)
is its own. Per config: `--warmup` untimed steps, then `--steps` timed steps (median, p10,
p90), then 5 timed no-grad forwards of the whole network (inference, for reference).
On a shared machine: during the timed steps the CPU time that *other* processes used is
measured (/proc/stat busy time minus this process's own CPU time), as a fraction of
wall time × cores (`foreign`). A run whose `foreign` exceeds `--max-foreign` is repeated (up
to `--tries` times); the cleanest/fastest run is reported, flagged when none was clean.
`--rounds R` additionally runs every configuration R times (interleaved), keeping the best.

`--epochs E` times whole epochs instead of single steps (for the side-by-side harness's
epoch columns): E epochs over models/data/fashion-mnist (2000 images; each epoch a
numpy.random.default_rng(--seed) permutation cut into full batches only, as actc does: 31
steps of 64 or 250 of 8), each batch preprocessed inside the timed epoch exactly as
common.fashion_mnist does it (common.preprocess), SGD lr 0.01 momentum 0.9; reports
each epoch's seconds and mean training loss. `--epoch-steps N` cuts epochs short (quick tests).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def pct(xs, q):
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_model(cfg):
    """The model of `cfg` in eval mode, its trainable parameters (last 4 convs + classifier),
    and whether it is channels_last; torch's threads set."""
    import torch
    sys.path.insert(0, str(HERE))
    from common import mobilenetv2_folded, mobilenetv2_torchvision, select_trainable

    torch.set_num_threads(cfg["threads"])
    if cfg["bn"] == "folded":
        model, _, _ = mobilenetv2_folded()
    else:
        model = mobilenetv2_torchvision()
    torch.set_num_threads(cfg["threads"])
    params = [p for _, p in select_trainable(model, 4)]
    model.eval()
    cl = cfg["layout"] == "channels_last"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    return model, params, cl


def run_one(cfg):
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, str(HERE))
    from cpu_meter import timed_steps

    model, params, cl = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg["batch"], 3, cfg["size"], cfg["size"], generator=g)
    y = torch.randint(0, 10, (cfg["batch"],), generator=g)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    rss_before = rss_mb()

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    run = timed_steps(step, cfg["warmup"], cfg["steps"])
    times = run["times"]
    foreign = run["foreign"]
    fwd = []
    with torch.no_grad():
        for _ in range(5):
            t0 = time.perf_counter()
            model(x)
            fwd.append((time.perf_counter() - t0) * 1e3)
    return {**cfg, "median_ms": statistics.median(times), "p10_ms": pct(times, 0.1),
            "p90_ms": pct(times, 0.9), "foreign": foreign, "forward_nograd_median_ms": statistics.median(fwd),
            "peak_rss_mb": rss_mb(), "rss_before_steps_mb": rss_before,
            "trainable_values": sum(p.numel() for p in params), "torch": torch.__version__}


def run_epochs(cfg):
    import numpy as np
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, str(HERE))
    from common import MODELS, busy_seconds, foreign_share, own_cpu_seconds, read_idx_gz
    from ref_losses_torch import preprocess

    model, params, cl = build_model(cfg)
    d = MODELS / "data" / "fashion-mnist"
    images = read_idx_gz(d / "train-images-idx3-ubyte.gz")
    labels = torch.from_numpy(read_idx_gz(d / "train-labels-idx1-ubyte.gz").astype(np.int64))
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    rng = np.random.default_rng(cfg["seed"])
    b = cfg["batch"]
    steps = len(images) // b
    if cfg.get("epoch_steps"):
        steps = min(steps, cfg["epoch_steps"])
    seconds, losses, foreign = [], [], []
    for _ in range(cfg["epochs"]):
        order = rng.permutation(len(images))
        total = 0.0
        w0, b0, c0 = time.perf_counter(), busy_seconds(), own_cpu_seconds()
        for k in range(steps):
            rows = order[k * b:(k + 1) * b]
            x = preprocess(images[rows], cfg["size"])
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), labels[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss)
        wall = time.perf_counter() - w0
        seconds.append(wall)
        losses.append(total / steps)
        foreign.append(foreign_share(wall, b0, c0))
    return {**cfg, "steps_per_epoch": steps, "epoch_seconds": seconds,
            "epoch_train_loss": losses, "epoch_foreign": foreign, "foreign": max(foreign),
            "peak_rss_mb": rss_mb(), "torch": torch.__version__}


def wait_quiet(max_share, timeout):
    """Sleeps until the machine's busy share over 5 s is at most max_share (or timeout).
    Reads /proc/stat itself: common.py imports torch, and the parent process must not hold
    torch when it starts the measured children (Linux carries a parent's peak RSS over into
    a child's ru_maxrss at exec)."""

    def busy_seconds():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v[:8]) - v[3] - (v[4] if len(v) > 4 else 0)) / os.sysconf("SC_CLK_TCK")

    t_end = time.time() + timeout
    while time.time() < t_end:
        b0, t0 = busy_seconds(), time.perf_counter()
        time.sleep(5)
        if (busy_seconds() - b0) / ((time.perf_counter() - t0) * os.cpu_count()) <= max_share:
            return


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", nargs="*", default=["64x32", "8x224"], help="BATCHxSIZE")
    ap.add_argument("--layouts", nargs="*", default=["nchw", "channels_last"],
                    choices=["nchw", "channels_last"])
    ap.add_argument("--bn", nargs="*", default=["frozen", "folded"], choices=["frozen", "folded"])
    ap.add_argument("--epochs", type=int, default=0,
                    help="time this many epochs over Fashion-MNIST instead of single steps")
    ap.add_argument("--epoch-steps", type=int, default=0, metavar="N",
                    help="stop each epoch after N steps (quick tests; 0 = the whole epoch)")
    ap.add_argument("--seed", type=int, default=0, help="shuffling seed of --epochs")
    ap.add_argument("--rounds", type=int, default=1, help="repeat all configs, keep the best")
    ap.add_argument("--max-foreign", type=float, default=0.05,
                    help="repeat a run when other processes used more than this CPU share")
    ap.add_argument("--tries", type=int, default=10, help="max runs per config and round")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="before each run, wait up to this long for the other processes' CPU "
                         "share to fall below --max-foreign (sampled over 5 s)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one config (JSON) in this process
    args = ap.parse_args()
    if args.one:
        cfg = json.loads(args.one)
        print(json.dumps(run_epochs(cfg) if cfg.get("epochs") else run_one(cfg)))
        return
    configs = []
    for bn in args.bn:
        for shape in args.shapes:
            b, s = (int(v) for v in shape.split("x"))
            for layout in args.layouts:
                cfg = {"bn": bn, "batch": b, "size": s, "layout": layout,
                       "threads": args.threads}
                if args.epochs:
                    cfg.update(epochs=args.epochs, seed=args.seed, epoch_steps=args.epoch_steps)
                else:
                    cfg.update(steps=args.steps, warmup=args.warmup)
                configs.append(cfg)
    key = (lambda r: sum(r["epoch_seconds"])) if args.epochs else (lambda r: r["median_ms"])
    runs = [[] for _ in configs]
    for rnd in range(args.rounds):
        for i, cfg in enumerate(configs):
            for attempt in range(args.tries):
                if args.wait_quiet:
                    wait_quiet(args.max_foreign, args.wait_quiet)
                out = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r.update(round=rnd, attempt=attempt, clean=r["foreign"] <= args.max_foreign)
                runs[i].append(r)
                what = (" ".join(f"{v:.1f}s" for v in r["epoch_seconds"]) if args.epochs
                        else f"{r['median_ms']:.1f} ms")
                print(f"  round {rnd} try {attempt} {cfg['bn']} {cfg['batch']}x{cfg['size']} "
                      f"{cfg['layout']}: {what} (foreign CPU {r['foreign']:.0%})",
                      file=sys.stderr, flush=True)
                if r["clean"]:
                    break
                if not args.wait_quiet:
                    time.sleep(20)
    best = [min(rs, key=lambda r: (not r["clean"], key(r))) for rs in runs]
    if args.epochs:
        print(f"{'bn':7s} {'batch x shape':15s} {'layout':14s} {'steps/epoch':>11s} "
              + " ".join(f"{f'epoch {e + 1}':>9s}" for e in range(args.epochs))
              + f" {'peak RSS':>9s} {'foreign':>8s}")
        for r in best:
            shape = f"{r['batch']}x3x{r['size']}x{r['size']}"
            print(f"{r['bn']:7s} {shape:15s} {r['layout']:14s} {r['steps_per_epoch']:>11d} "
                  + " ".join(f"{v:8.2f}s" for v in r["epoch_seconds"])
                  + f" {r['peak_rss_mb']:7.0f}MB {r['foreign']:7.0%}"
                  + ("" if r["clean"] else " (disturbed)"))
    else:
        print_steps(best)
    if args.json:
        write_json(args, best, runs)


def print_steps(best):
    print(f"{'bn':7s} {'batch x shape':15s} {'layout':14s} {'median':>8s} {'p10':>8s} {'p90':>8s} "
          f"{'fwd(no grad)':>12s} {'peak RSS':>9s} {'foreign':>8s}")
    for r in best:
        shape = f"{r['batch']}x3x{r['size']}x{r['size']}"
        print(f"{r['bn']:7s} {shape:15s} {r['layout']:14s} {r['median_ms']:6.1f}ms "
              f"{r['p10_ms']:6.1f}ms {r['p90_ms']:6.1f}ms {r['forward_nograd_median_ms']:10.1f}ms "
              f"{r['peak_rss_mb']:7.0f}MB {r['foreign']:7.0%}{'' if r['clean'] else ' (disturbed)'}")


def write_json(args, best, runs):
    sys.path.insert(0, str(HERE))
    from common import machine
    args.json.write_text(json.dumps({"best": best, "all_runs": runs, "machine": machine(),
                                     "args": {k: (str(v) if isinstance(v, Path) else v)
                                              for k, v in vars(args).items()}},
                                    indent=1) + "\n")


if __name__ == "__main__":
    main()
