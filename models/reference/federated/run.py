"""Federated fine-tuning of MobileNetV2's last layers with actc on Flower, measured against
centralized training of the same plan.

One Flower server process and K client processes on 127.0.0.1 (Flower's legacy gRPC API:
flwr.server.start_server / flwr.client.start_client), so each process's peak RSS is its own.
For each seed: centralized training on all 2000 images for ROUNDS x EPOCHS epochs, then FedAvg
over K clients with IID shards and with label-skewed (Dirichlet) shards, the aggregated
weights evaluated on the 500 test images every round. Prints the tables and writes the
measurements as JSON.

    python run.py                          # 3 seeds, IID + skew, 10 rounds of 1 local epoch
    python run.py --seeds 0 --splits iid --rounds 2   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import actc

HERE = Path(__file__).resolve().parent
MODELS = HERE.parents[1]
sys.path.insert(0, str(HERE))
import data  # noqa: E402
from mem import peak_rss_mb, rss_mb, ru_maxrss_mb  # noqa: E402

MODEL = MODELS / "mobilenetv2.onnx"
PY = sys.executable
# One thread per process for the kernels (actc's are set by Trainer(threads=1)); NumPy's
# BLAS is not used in training but would otherwise spawn a pool per process.
CHILD_ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def whole_model_bytes(path: Path) -> dict:
    """Every initializer of the ONNX model, as the raw bytes of its values."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(path))
    arrays = [numpy_helper.to_array(t) for t in m.graph.initializer]
    return {"initializers": len(arrays), "params": int(sum(a.size for a in arrays)),
            "bytes": int(sum(a.nbytes for a in arrays)), "file_bytes": path.stat().st_size}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the server did not listen on {port} within {timeout} s")


# ---------------------------------------------------------------- centralized (a subprocess)

def central(args) -> None:
    x, y = data.load("train")
    xt, yt = data.load("t10k")
    rss_before_actc = rss_mb()
    trainer = actc.Trainer(actc.load(args.plan), threads=1)
    log = Path(args.out).with_suffix(".jsonl")
    t0 = time.perf_counter()
    trainer.fit((x, y), epochs=args.epochs, val=(xt, yt), val_fraction=0, quiet=True,
                seed=args.seed, log=str(log))
    seconds = time.perf_counter() - t0
    epochs = [r for r in map(json.loads, log.read_text().splitlines()) if r["event"] == "epoch"]
    final = trainer.evaluate((xt, yt))
    Path(args.out).write_text(json.dumps({
        "seconds": seconds, "rss_before_actc_mb": rss_before_actc, "peak_rss_mb": peak_rss_mb(), "ru_maxrss_mb": ru_maxrss_mb(), "final_evaluate": final,
        "epochs": [{"epoch": r["epoch"], "accuracy": r["val"]["accuracy"], "loss": r["val"]["loss"],
                    "train_loss": r["train"]["loss"], "seconds": r["seconds"]} for r in epochs],
    }, indent=1))


# ---------------------------------------------------------------- one federated run

def federated(args, split: str, seed: int, work: Path, echo: bool = False) -> dict:
    x, y = data.load("train")
    if split == "iid":
        shards = data.iid_shards(y, args.clients, seed)
    else:
        shards = data.dirichlet_shards(y, args.clients, seed, alpha=args.alpha)
    assert len(np.unique(np.concatenate(shards))) == len(y) == sum(map(len, shards))
    tag = f"{split}-s{seed}" + ("-echo" if echo else "")
    shard_file = work / f"shards-{tag}.npz"
    np.savez(shard_file, **{f"shard{k}": s for k, s in enumerate(shards)})
    port = free_port()
    address = f"127.0.0.1:{port}"
    logs = []

    def spawn(cmd, name):
        f = open(work / f"{tag}-{name}.log", "w")
        logs.append(f)
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=CHILD_ENV,
                                stdin=subprocess.DEVNULL, cwd=work)

    t0 = time.perf_counter()
    server = spawn([PY, str(HERE / "server.py"), "--address", address, "--plan", str(args.plan_file),
                    "--clients", str(args.clients), "--rounds", str(args.rounds),
                    "--epochs", str(args.epochs), "--out", str(work / f"{tag}-server.json")]
                   + (["--client-eval"] if args.client_eval else []), "server")
    wait_for_port(port, server)
    clients = [spawn([PY, str(HERE / "client.py"), "--server", address, "--plan", str(args.plan_file),
                      "--shard", str(shard_file), "--cid", str(k), "--seed", str(seed),
                      "--out", str(work / f"{tag}-client{k}.json")]
                     + (["--keep-momentum"] if args.keep_momentum else [])
                     + (["--echo"] if echo else []), f"client{k}")
               for k in range(args.clients)]
    # Wait for all; the first process to fail (or the time limit) stops the others at once,
    # rather than leaving the server waiting for a client that is gone.
    procs = [server, *clients]
    deadline = time.time() + args.timeout
    failed = None
    while any(p.poll() is None for p in procs):
        bad = [p for p in procs if p.poll() not in (None, 0)]
        if bad or time.time() > deadline:
            failed = (f"{len(bad)} process(es) exited with {[p.returncode for p in bad]}" if bad
                      else f"timed out after {args.timeout} s")
            break
        time.sleep(0.5)
    if failed is None and any(p.returncode != 0 for p in procs):
        failed = f"exit codes {[p.returncode for p in procs]}"
    if failed:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        raise RuntimeError(f"{tag}: {failed} (logs in {work})")
    for f in logs:
        f.close()
    srv = json.loads((work / f"{tag}-server.json").read_text())
    cls = [json.loads((work / f"{tag}-client{k}.json").read_text()) for k in range(args.clients)]
    return {"split": split, "seed": seed, "echo": echo, "seconds": time.perf_counter() - t0,
            "server": srv, "clients": cls}


# ---------------------------------------------------------------- tables

def mean_std(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def tables(res: dict) -> str:
    out = []
    seeds = res["settings"]["seeds"]
    central_runs = res["central"]
    fl = res["federated"]
    splits = [s for s in ("iid", "skew") if any(r["split"] == s for r in fl)]
    rounds = res["settings"]["rounds"]
    epochs = res["settings"]["local_epochs"]

    def fl_acc(split, rnd):
        return [next(x["accuracy"] for x in r["server"]["rounds"] if x["round"] == rnd)
                for r in fl if r["split"] == split]

    def central_acc(ep):
        return [next((x["accuracy"] for x in c["epochs"] if x["epoch"] == ep), None)
                for c in central_runs]

    out.append(f"Test accuracy on the 500 t10k images (mean ± std over seeds {seeds}); "
               f"round r of FedAvg = {epochs} local epoch(s) per client, beside centralized "
               f"epoch r x {epochs}.\n")
    head = "| round | " + " | ".join(f"FedAvg {s.upper()}" for s in splits) + " | centralized |"
    out += [head, "|" + "---|" * (2 + len(splits))]
    start = "| 0 (pretrained) | " + " | ".join(mean_std(fl_acc(s, 0)) for s in splits) + " | " \
        + mean_std(fl_acc(splits[0], 0)) + " |"
    out.append(start)
    for rnd in range(1, rounds + 1):
        out.append(f"| {rnd} | " + " | ".join(mean_std(fl_acc(s, rnd)) for s in splits)
                   + f" | {mean_std(central_acc(rnd * epochs))} |")
    out.append("")
    final_c = central_acc(rounds * epochs)
    for s in splits:
        gaps = [a - c for a, c in zip(fl_acc(s, rounds), final_c)]
        out.append(f"- final FedAvg {s.upper()} − centralized: per seed "
                   + ", ".join(f"{100 * g:+.1f}" for g in gaps)
                   + f" points; mean {100 * statistics.mean(gaps):+.1f}")
        last = min(3, rounds)
        tail_fl = [statistics.mean(fl_acc(s, k)[i] for k in range(rounds - last + 1, rounds + 1))
                   for i in range(len(fl_acc(s, rounds)))]
        tail_c = [statistics.mean(c[i] for c in (central_acc((k) * epochs)
                                                 for k in range(rounds - last + 1, rounds + 1)))
                  for i in range(len(final_c))]
        out.append(f"  mean of the last {last} rounds: FedAvg {s.upper()} {mean_std(tail_fl)}, centralized "
                   f"{mean_std(tail_c)} (last {last} epochs); difference "
                   f"{100 * (statistics.mean(tail_fl) - statistics.mean(tail_c)):+.1f} points")
        best_fl = [max(x["accuracy"] for x in r["server"]["rounds"] if x["round"] > 0)
                   for r in fl if r["split"] == s]
        out.append(f"  best round of FedAvg {s.upper()}: {mean_std(best_fl)}; best centralized epoch: "
                   f"{mean_std([max(x['accuracy'] for x in c['epochs']) for c in central_runs])}")
    out.append("")

    out.append("Clients' own training accuracy in their last local epoch (mean over clients "
               "and seeds), beside the aggregated model's test accuracy:\n")
    out.append("| round | " + " | ".join(f"{s.upper()} local train | {s.upper()} global test" for s in splits) + " |")
    out.append("|---|" + "---|---|" * len(splits))
    for rnd in range(1, rounds + 1):
        cells = []
        for s in splits:
            local = [c["train_accuracy"] for r in fl if r["split"] == s
                     for c in r["server"]["clients"] if c["round"] == rnd and "train_accuracy" in c]
            cells += [mean_std([statistics.mean(local)]) if local else "—", mean_std(fl_acc(s, rnd))]
        out.append(f"| {rnd} | " + " | ".join(cells) + " |")
    out.append("")

    wm = res["whole_model"]
    r0 = fl[0]
    up = r0["server"]["clients"][0]
    down = r0["server"]["down"][0]
    out.append("Bytes per client per round (every client and round sends the same):\n")
    out.append("| what | bytes |")
    out.append("|---|---|")
    out.append(f"| trainable weights sent by a client (sum of array nbytes, "
               f"{r0['server']['trainable_params']:,} float32) | {up['array_bytes']:,} |")
    out.append(f"| … as Flower serialized them (np.save bytes of the arrays) | {up['tensor_bytes']:,} |")
    out.append(f"| … the whole ClientMessage.fit_res protobuf (with metrics) | {up['message_bytes']:,} |")
    out.append(f"| global weights received (ServerMessage.fit_ins protobuf) | {down['message_bytes']:,} |")
    out.append(f"| whole model: all {wm['initializers']} initializers of mobilenetv2.onnx "
               f"({wm['params']:,} float32) | {wm['bytes']:,} |")
    out.append(f"| mobilenetv2.onnx file | {wm['file_bytes']:,} |")
    out.append(f"\nTrainable share: {up['array_bytes'] / wm['bytes']:.1%} of the whole model's weights "
               f"({wm['bytes'] / up['array_bytes']:.1f}x fewer bytes per round).\n")

    n = res["settings"]["clients"]
    out.append("Peak RSS (VmHWM of each process, MB), max over seeds; in brackets the RSS "
               "before actc was used (Python, NumPy, Flower, the data):\n")
    out.append("| run | server | " + " | ".join(f"client {k}" for k in range(n)) + " |")
    out.append("|---|---|" + "---|" * n)
    for s in splits:
        runs = [r for r in fl if r["split"] == s]
        cells = [f"{max(r['server']['peak_rss_mb'] for r in runs):.1f} "
                 f"({max(r['server']['rss_before_actc_mb'] for r in runs):.0f})"]
        cells += [f"{max(r['clients'][k]['peak_rss_mb'] for r in runs):.1f} "
                  f"({max(r['clients'][k]['rss_before_actc_mb'] for r in runs):.0f})" for k in range(n)]
        out.append(f"| FedAvg {s.upper()} | " + " | ".join(cells) + " |")
    if res.get("echo"):
        r = res["echo"]
        out.append(f"| Flower only: echo clients, no actc (seed {r['seed']}) | "
                   f"{r['server']['peak_rss_mb']:.1f} ({r['server']['rss_before_actc_mb']:.0f}) | "
                   + " | ".join(f"{c['peak_rss_mb']:.1f} ({c['rss_before_actc_mb']:.0f})" for c in r["clients"])
                   + " |")
    out.append(f"| centralized (one process, no Flower) | "
               f"{max(c['peak_rss_mb'] for c in central_runs):.1f} "
               f"({max(c['rss_before_actc_mb'] for c in central_runs):.0f}) |" + " |" * n)
    out.append("")
    out.append("Wall time (s), mean over seeds:\n")
    out.append("| run | total | per round | client fit per round (mean) |")
    out.append("|---|---|---|---|")
    for s in splits:
        runs = [r for r in fl if r["split"] == s]
        fits = [x["fit_seconds"] for r in runs for x in r["server"]["clients"]]
        out.append(f"| FedAvg {s.upper()} | {statistics.mean(r['seconds'] for r in runs):.0f} | "
                   f"{statistics.mean(r['seconds'] for r in runs) / rounds:.1f} | {statistics.mean(fits):.1f} |")
    out.append(f"| centralized | {statistics.mean(c['seconds'] for c in central_runs):.0f} | "
               f"{statistics.mean(c['seconds'] for c in central_runs) / (rounds * epochs):.1f} per epoch | |")
    for s in splits:
        runs = [r for r in fl if r["split"] == s]
        out.append(f"\nShards ({s}, seed {runs[0]['seed']}): samples and label histograms")
        for c in runs[0]["clients"]:
            out.append(f"- client {c['cid']}: {c['samples']} samples, labels {c['labels']}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    c = sub.add_parser("central", help="(internal) centralized training in its own process")
    c.add_argument("--plan", required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--epochs", type=int, default=10)
    c.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--splits", nargs="+", default=["iid", "skew"], choices=["iid", "skew"])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (skew)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=32, help="input height and width")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--keep-momentum", action="store_true",
                    help="clients keep one trainer (and its momentum) for the whole run")
    ap.add_argument("--client-eval", action="store_true",
                    help="clients also evaluate the global weights on their shard each round")
    ap.add_argument("--no-central", action="store_true")
    ap.add_argument("--no-echo", action="store_true",
                    help="skip the Flower-only run (echo clients without actc, seed 0, IID)")
    ap.add_argument("--malloc-tuned", action="store_true",
                    help="children run with MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per federated run")
    ap.add_argument("--work", default="/tmp/actc-federated", help="plans, shards, logs")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args()
    if args.cmd == "central":
        return central(args)

    import flwr
    if args.malloc_tuned:
        CHILD_ENV.update(MALLOC_ARENA_MAX="2", MALLOC_MMAP_THRESHOLD_="131072")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    shape = (args.batch, 3, args.size, args.size)
    plan = actc.compile(MODEL, layers=args.layers, input_shape=shape, momentum=args.momentum, lr=args.lr)
    args.plan_file = work / "plan.actc"
    plan.save(args.plan_file)
    res = {
        "settings": {"model": MODEL.name, "layers": args.layers, "input_shape": shape,
                     "lr": args.lr, "momentum": args.momentum, "optimizer": "sgd",
                     "clients": args.clients, "rounds": args.rounds, "local_epochs": args.epochs,
                     "seeds": args.seeds, "splits": args.splits, "dirichlet_alpha": args.alpha,
                     "fresh_optimizer_per_round": not args.keep_momentum, "threads_per_process": 1,
                     "malloc_tuned": args.malloc_tuned},
        "versions": {"python": platform.python_version(), "flwr": flwr.__version__,
                     "numpy": np.__version__, "actc_format": actc.FORMAT_VERSION},
        "whole_model": whole_model_bytes(MODEL),
        "central": [], "federated": [], "echo": None,
    }
    for seed in args.seeds:
        if not args.no_central:
            out = work / f"central-s{seed}.json"
            t0 = time.perf_counter()
            with open(work / f"central-s{seed}.log", "w") as f:
                subprocess.run([PY, __file__, "central", "--plan", str(args.plan_file), "--seed", str(seed),
                                "--epochs", str(args.rounds * args.epochs), "--out", str(out)],
                               check=True, env=CHILD_ENV, stdout=f, stderr=subprocess.STDOUT)
            res["central"].append(json.loads(out.read_text()))
            accs = [e["accuracy"] for e in res["central"][-1]["epochs"]]
            print(f"seed {seed} centralized: {time.perf_counter() - t0:.0f} s, accuracy per epoch "
                  + " ".join(f"{a:.3f}" for a in accs), flush=True)
        for split in args.splits:
            r = federated(args, split, seed, work)
            res["federated"].append(r)
            accs = [x["accuracy"] for x in r["server"]["rounds"]]
            print(f"seed {seed} FedAvg {split}: {r['seconds']:.0f} s, accuracy per round "
                  + " ".join(f"{a:.3f}" for a in accs), flush=True)
            Path(args.out).write_text(json.dumps(res, indent=1))
    if not args.no_echo:
        r = federated(args, "iid", args.seeds[0], work, echo=True)
        res["echo"] = r
        print(f"Flower only (echo clients, no actc): {r['seconds']:.0f} s, peak RSS server "
              f"{r['server']['peak_rss_mb']:.0f} MB, clients "
              + " ".join(f"{c['peak_rss_mb']:.0f}" for c in r["clients"]) + " MB", flush=True)
    res["seconds"] = time.perf_counter() - t_all
    Path(args.out).write_text(json.dumps(res, indent=1))
    if res["central"] and res["federated"]:
        print()
        print(tables(res))
    print(f"\ntotal {res['seconds']:.0f} s; measurements in {args.out}")


if __name__ == "__main__":
    main()
