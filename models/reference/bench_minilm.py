#!/usr/bin/env python3
"""paraphrase-MiniLM-L3-v2 fine-tuned on the movie-review sentiment set (models/data/sentiment,
2000 train / 500 test sentences, 2 classes) at batch 8, sequence length 64: PyTorch eager,
ONNX Runtime training and actc (step time, peak RSS, accuracy over seeds).

Run from the repository root with the main venv (after models/fetch_pretrained.py):

    .venv/bin/python models/reference/bench_minilm.py                    # every part
    .venv/bin/python models/reference/bench_minilm.py --only torch-acc --seeds 0 1 2
    ACTC=/work/target-pre/release/actc .venv/bin/python models/reference/bench_minilm.py --only actc

The model is models/pretrained/minilm_l3_cls.onnx (encoder, sentence-transformers' mean
pooling, seeded Linear 384->2); `transformers_torch.minilm()` is its eager module (equal to
onnxruntime within ~2e-7: `transformers_torch.py --check`). Settings (tensors in
transformers_trainable.json): `layers4` = actc's `--layers 4` (the head, layer 2's output
dense (fc2), intermediate dense (fc1) and attention output dense, their biases and layer 2's
two LayerNorms), `blocks1` = the whole of layer 2 and the head.

Data: models/data/sentiment/{train,test}.npz (made by models/make_text.py: input_ids and
attention_mask int64 (N, 64), y). Protocol as bench_vit.py: SGD lr 0.01 momentum 0.9 (and
momentum 0 for the step row beside ORT, whose training SGD has none), 2 threads, batch 8, full
batches only (250 steps per epoch), each epoch a numpy.random.default_rng(seed) permutation,
validation on the 500 test sentences after each epoch, `--epochs` 3, `--seeds` 0 1 2 (the data
order; the head's init is the file's). Both settings train layer 2 onwards only, so the hidden
states entering layer 2 are computed once (eval, no grad) and training runs layer 2, the
pooling and the head on them (the same function; the first steps' losses of both ways are
compared). Steps are timed on the first 8 training sentences (whole network each step).
ORT: generate_artifacts with the two int64 inputs fixed to (8, 64); an error is recorded.
actc: `actc compile MODEL --layers 4|--blocks 1 --batch 8 --input-shape 8x64 ...`; if actc
cannot compile or train the model yet, its message is recorded and the rest goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent
ROOT = MODELS.parent
MODEL = MODELS / "pretrained" / "minilm_l3_cls.onnx"
DATA = MODELS / "data" / "sentiment"
PARTS = ["torch-steps", "torch-acc", "ort-steps", "actc"]
SETTINGS = ["layers4", "blocks1"]
LR = 0.01
BATCH = 8
SEQ = 64
FIRST_TRAINED_LAYER = 2

sys.path.insert(0, str(HERE))
from bench_vit import mean_std, pct, run_cmd, vmhwm_mb  # noqa: E402


def trainable(setting: str) -> list[str]:
    return json.loads((HERE / "transformers_trainable.json").read_text())[MODEL.name][setting]["tensors"]


def load(split: str):
    import numpy as np
    d = np.load(DATA / f"{split}.npz")
    return d["input_ids"], d["attention_mask"], d["y"]


# --- PyTorch ------------------------------------------------------------------------------

def torch_steps(cfg: dict) -> dict:
    import torch
    import torch.nn.functional as F
    import transformers_torch as tt
    from cpu_meter import timed_steps
    torch.set_num_threads(cfg["threads"])
    model, names = tt.minilm(MODEL)
    params = tt.select(model, names, trainable(cfg["setting"]))
    ids, mask, y = (torch.from_numpy(a[:cfg["batch"]]) for a in load("train"))
    opt = torch.optim.SGD([p for _, p in params], lr=cfg["lr"], momentum=cfg["momentum"])
    rss_before = vmhwm_mb()

    def step():
        loss = F.cross_entropy(model(ids, mask), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    run = timed_steps(step, cfg["warmup"], cfg["steps"])
    times = run["times"]
    return {**cfg, "system": "pytorch", "median_ms": statistics.median(times),
            "p10_ms": pct(times, 0.1), "p90_ms": pct(times, 0.9),
            "foreign": run["foreign"], "peak_rss_mb": vmhwm_mb(),
            "rss_before_steps_mb": rss_before,
            "trainable_values": sum(p.numel() for _, p in params), "torch": torch.__version__}


def torch_acc(cfg: dict) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    import transformers_torch as tt
    torch.set_num_threads(cfg["threads"])
    base, names = tt.minilm(MODEL)
    state0 = {k: v.clone() for k, v in base.state_dict().items()}
    data = {s: [torch.from_numpy(a) for a in load(s)] for s in ("train", "test")}

    def hidden_before(ids, mask):
        with torch.no_grad():
            out = []
            for k in range(0, len(ids), 100):
                x = base.embed(ids[k:k + 100])
                bias = base.mask_bias(mask[k:k + 100])
                for layer in base.layers[:FIRST_TRAINED_LAYER]:
                    x = layer(x, bias)
                out.append(x)
            return torch.cat(out)

    t0 = time.perf_counter()
    h = {s: hidden_before(d[0], d[1]) for s, d in data.items()}
    feature_seconds = time.perf_counter() - t0
    (_, m_tr, y_tr), (_, m_va, y_va) = data["train"], data["test"]
    results = []
    for setting in cfg["settings"]:
        for seed in cfg["seeds"]:
            base.load_state_dict(state0)
            params = tt.select(base, names, trainable(setting))
            opt = torch.optim.SGD([p for _, p in params], lr=cfg["lr"], momentum=0.9)
            rng = np.random.default_rng(seed)
            b = cfg["batch"]
            steps = len(y_tr) // b
            if cfg.get("epoch_steps"):
                steps = min(steps, cfg["epoch_steps"])
            epochs, same_way = [], []
            for epoch in range(cfg["epochs"]):
                order = rng.permutation(len(y_tr))
                total, t_ep = 0.0, time.perf_counter()
                for k in range(steps):
                    rows = torch.from_numpy(order[k * b:(k + 1) * b])
                    loss = F.cross_entropy(base.forward_from(h["train"][rows], m_tr[rows],
                                                             FIRST_TRAINED_LAYER), y_tr[rows])
                    if epoch == 0 and k < 3 and seed == cfg["seeds"][0]:
                        with torch.no_grad():
                            full = F.cross_entropy(base(data["train"][0][rows], m_tr[rows]),
                                                   y_tr[rows])
                        same_way.append((float(loss), float(full)))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss)
                with torch.no_grad():
                    logits = torch.cat([base.forward_from(h["test"][k:k + 100], m_va[k:k + 100],
                                                          FIRST_TRAINED_LAYER)
                                        for k in range(0, len(y_va), 100)])
                    val_loss = float(F.cross_entropy(logits, y_va))
                    acc = float((logits.argmax(1) == y_va).float().mean())
                epochs.append({"epoch": epoch + 1, "train_loss": total / steps,
                               "val_loss": val_loss, "val_acc": acc,
                               "seconds": time.perf_counter() - t_ep})
                print(f"  torch {setting} seed {seed} epoch {epoch + 1}: train loss "
                      f"{total / steps:.4f}, val loss {val_loss:.4f}, val acc {acc:.4f}",
                      file=sys.stderr, flush=True)
            for a, f in same_way:
                assert abs(a - f) <= 1e-5 * max(1.0, abs(f)), (a, f)
            results.append({"setting": setting, "seed": seed, "epochs": epochs,
                            "final_val_acc": epochs[-1]["val_acc"],
                            "best_val_acc": max(e["val_acc"] for e in epochs),
                            "steps_per_epoch": steps, "cached_vs_full_losses": same_way,
                            "trainable_values": sum(p.numel() for _, p in params)})
    # before any training: the head on the frozen model
    base.load_state_dict(state0)
    with torch.no_grad():
        logits = base.forward_from(h["test"], m_va, FIRST_TRAINED_LAYER)
        acc0 = float((logits.argmax(1) == y_va).float().mean())
    return {"system": "pytorch", "runs": results, "feature_seconds": feature_seconds,
            "val_acc_before_training": acc0, "peak_rss_mb": vmhwm_mb(),
            "torch": torch.__version__, **cfg}


# --- ONNX Runtime training ------------------------------------------------------------------

def ort_artifacts(cfg: dict) -> dict:
    import onnx
    import bench_ort
    bench_ort.ort_training()
    from onnxruntime.training import artifacts
    d = Path(cfg["dir"])
    d.mkdir(parents=True, exist_ok=True)
    m = onnx.load(str(MODEL))
    for vi in m.graph.input:
        dims = vi.type.tensor_type.shape.dim
        for k, v in ((0, cfg["batch"]), (1, SEQ)):
            dims[k].Clear()
            dims[k].dim_value = v
    out = m.graph.output[0].type.tensor_type.shape.dim[0]
    out.Clear()
    out.dim_value = cfg["batch"]
    if cfg.get("ln_outputs"):
        # ORT 1.19's LayerNormalization gradient reads the node's Mean and InvStdDev outputs,
        # which the exporter left out (they are optional): name them (same function).
        for n in m.graph.node:
            if n.op_type == "LayerNormalization" and len(n.output) == 1:
                n.output.extend([n.output[0] + "_mean", n.output[0] + "_invstddev"])
    names = trainable(cfg["setting"])
    frozen = [t.name for t in m.graph.initializer if t.name not in names]
    with bench_ort.stderr_to(d / "generate.log"):
        artifacts.generate_artifacts(
            m, requires_grad=names, frozen_params=frozen,
            loss=artifacts.LossType.CrossEntropyLoss, optimizer=artifacts.OptimType.SGD,
            artifact_directory=d)
    return {"ok": True}


def ort_steps(cfg: dict) -> dict:
    import numpy as np
    import bench_ort
    from cpu_meter import timed_steps
    ort, state, module, opt = bench_ort.open_session(Path(cfg["dir"]), cfg["threads"], cfg["lr"])
    ids, mask, y = (np.ascontiguousarray(a[:cfg["batch"]]) for a in load("train"))
    feeds = [ort.OrtValue.ortvalue_from_numpy(a) for a in (ids, mask, y.astype(np.int64))]
    rss_before = vmhwm_mb()
    first = []

    def step():
        loss = module(*feeds)
        opt.step()
        module.lazy_reset_grad()
        return loss

    for k in range(cfg["warmup"]):
        loss = step()
        if k < 3:
            first.append(float(loss.numpy() if hasattr(loss, "numpy") else loss))
    run = timed_steps(step, 0, cfg["steps"])
    times = run["times"]
    return {**cfg, "system": "ort", "median_ms": statistics.median(times),
            "p10_ms": pct(times, 0.1), "p90_ms": pct(times, 0.9),
            "foreign": run["foreign"], "peak_rss_mb": vmhwm_mb(),
            "rss_before_steps_mb": rss_before, "first_losses": first,
            "onnxruntime": ort.__version__,
            "optimizer": f"SGD lr {cfg['lr']}, no momentum (ORT training SGDOptimizerV2)"}


def torch_first_losses(cfg: dict) -> dict:
    """Plain-SGD losses of the first 3 steps on the timed batch (for ORT's first_losses)."""
    import torch
    import torch.nn.functional as F
    import transformers_torch as tt
    torch.set_num_threads(cfg["threads"])
    model, names = tt.minilm(MODEL)
    params = tt.select(model, names, trainable(cfg["setting"]))
    ids, mask, y = (torch.from_numpy(a[:cfg["batch"]]) for a in load("train"))
    opt = torch.optim.SGD([p for _, p in params], lr=cfg["lr"], momentum=0.0)
    out = []
    for _ in range(3):
        loss = F.cross_entropy(model(ids, mask), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out.append(float(loss))
    return {"losses": out}


CHILDREN = {"torch-steps": torch_steps, "torch-acc": torch_acc, "torch-first": torch_first_losses,
            "ort-artifacts": ort_artifacts, "ort-steps": ort_steps}


# --- actc -----------------------------------------------------------------------------------

def actc_part(args, work: Path, results: dict) -> None:
    actc = args.actc or os.environ.get("ACTC")
    if not actc:
        results["actc"] = {"error": "no actc binary: set ACTC=path or --actc"}
        return
    rows = []
    for setting in args.settings:
        flags = ["--layers", "4"] if setting == "layers4" else ["--blocks", "1"]
        plan = work / f"actc-minilm-{setting}.actc"
        cmd = [actc, "compile", str(MODEL), *flags, "--input-shape", f"{BATCH}x{SEQ}",
               "--momentum", "0.9", "--lr", str(args.lr), "--threads", "2", "-o", str(plan)]
        code, out, err, _ = run_cmd(cmd, timeout=1800)
        row = {"setting": setting, "compile": " ".join(cmd[1:])}
        if code != 0:
            row["error"] = (err.strip().splitlines() or ["(no message)"])[-1]
            rows.append(row)
            print(f"actc {setting}: {row['error']}", file=sys.stderr)
            continue
        code, out, err, _ = run_cmd([actc, "bench", str(plan), "--steps", str(args.steps),
                                     "--threads", "2", "--json"], timeout=1800)
        row["bench"] = json.loads(out.strip().splitlines()[-1]) if code == 0 else None
        if code != 0:
            row["bench_error"] = (err.strip().splitlines() or ["?"])[-1]
        row["train"] = []
        for seed in args.seeds:
            log = work / f"actc-minilm-{setting}-{seed}.jsonl"
            code, out, err, rss = run_cmd(
                [actc, "train", str(plan), "--data", str(DATA / "train.npz"), "--val",
                 str(DATA / "test.npz"), "--epochs", str(args.epochs), "--seed", str(seed),
                 "--threads", "2", "--log", str(log), "--quiet"], timeout=3600)
            if code != 0:
                row["train"].append({"seed": seed, "error": (err.strip().splitlines() or ["?"])[-1]})
                continue
            epochs = [json.loads(ln) for ln in log.read_text().splitlines() if '"epoch"' in ln
                      and json.loads(ln).get("event") == "epoch"]
            row["train"].append({"seed": seed, "peak_rss_mib": rss,
                                 "final_val_acc": epochs[-1]["val"].get("accuracy") if epochs else None,
                                 "epochs": epochs})
        rows.append(row)
    results["actc"] = rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=PARTS, choices=PARTS)
    ap.add_argument("--settings", nargs="*", default=SETTINGS, choices=SETTINGS)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--epoch-steps", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--lr", type=float, default=LR, help="SGD learning rate (all systems)")
    ap.add_argument("--acc-threads", type=int, default=1,
                    help="torch threads of the accuracy runs (1: robust on a shared machine)")
    ap.add_argument("--momenta", type=float, nargs="*", default=[0.9, 0.0])
    ap.add_argument("--ort-python", default=str(ROOT / ".venv-ort" / "bin" / "python"))
    ap.add_argument("--actc", help="actc binary (default: $ACTC)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        cfg = json.loads(args.one)
        print(json.dumps(CHILDREN[cfg.pop("kind")](cfg)))
        return
    if not MODEL.exists():
        raise SystemExit(f"{MODEL} is missing: run .venv/bin/python models/fetch_pretrained.py")
    py, me = sys.executable, Path(__file__)
    ort_py = args.ort_python if Path(args.ort_python).exists() else None
    work = Path(tempfile.mkdtemp(prefix="bench_minilm."))
    results: dict = {"errors": [], "steps": []}
    log = results["errors"]
    base = {"batch": BATCH, "threads": args.threads, "lr": args.lr}

    def run(python, cfg):
        out = subprocess.run([python, str(me), "--one", json.dumps(cfg)], capture_output=True,
                             text=True, cwd=ROOT)
        if out.returncode != 0:
            sys.stderr.write(out.stderr[-3000:])
            lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
            r = {"error": lines[-1] if lines else f"exit {out.returncode}"}
            log.append({"part": cfg["kind"], **r})
            return r
        return json.loads(out.stdout.strip().splitlines()[-1])

    try:
        for setting in args.settings:
            if "torch-steps" in args.only:
                for mom in args.momenta:
                    r = run(py, {"kind": "torch-steps", "setting": setting, "momentum": mom,
                                 "steps": args.steps, "warmup": args.warmup, **base})
                    r.setdefault("system", "pytorch")
                    r.update(setting=setting, momentum=mom)
                    results["steps"].append(r)
                    print(f"pytorch {setting} momentum {mom}: {r.get('median_ms', r.get('error'))}",
                          file=sys.stderr, flush=True)
            if "ort-steps" in args.only and ort_py:
                d = work / f"ort-{setting}"
                r = run(ort_py, {"kind": "ort-artifacts", "setting": setting, "dir": str(d), **base})
                if "error" in r:
                    # the model as exported fails; record why, then retry with the
                    # LayerNormalization nodes' optional outputs named
                    results.setdefault("ort_errors", {})[setting] = r["error"]
                    d = work / f"ort-{setting}-ln"
                    r = run(ort_py, {"kind": "ort-artifacts", "setting": setting, "dir": str(d),
                                     "ln_outputs": True, **base})
                    r["ort_model"] = "LayerNormalization Mean/InvStdDev outputs named"
                if "error" not in r:
                    r = run(ort_py, {"kind": "ort-steps", "setting": setting, "dir": str(d),
                                     "steps": args.steps, "warmup": max(args.warmup, 3), **base})
                    t = run(py, {"kind": "torch-first", "setting": setting, **base})
                    r["torch_first_losses"] = t.get("losses")
                    if "first_losses" in r and t.get("losses"):
                        r["first_losses_rel_diff"] = max(
                            abs(a - b) / abs(b) for a, b in zip(r["first_losses"], t["losses"]))
                        print(f"ORT vs PyTorch, plain SGD on the timed batch, losses of steps "
                              f"1-3: {r['first_losses']} vs {t['losses']} (max rel diff "
                              f"{r['first_losses_rel_diff']:.1e})", file=sys.stderr)
                r.setdefault("system", "ort")
                r["setting"] = setting
                r.pop("dir", None)
                results["steps"].append(r)
                print(f"ort {setting}: {json.dumps(r)[:300]}", file=sys.stderr, flush=True)
        if "torch-acc" in args.only:
            results["torch_acc"] = run(py, {"kind": "torch-acc", "settings": args.settings,
                                            "seeds": args.seeds, "epochs": args.epochs,
                                            "epoch_steps": args.epoch_steps,
                                            **{**base, "threads": args.acc_threads}})
        if "actc" in args.only:
            actc_part(args, work, results)
        print(f"\nparaphrase-MiniLM-L3-v2, sentiment, batch {BATCH} x {SEQ} tokens, 2 threads")
        print(f"{'system':26s} {'setting':9s} {'median ms':>9s} {'p10':>7s} {'p90':>7s} "
              f"{'peak RSS':>9s} {'foreign':>8s}")
        for r in results["steps"]:
            name = r["system"] + (f" (momentum {r['momentum']})" if r["system"] == "pytorch"
                                  else " (SGD, no momentum)")
            if "error" in r:
                print(f"{name:26s} {r['setting']:9s} ERROR: {r['error'][:200]}")
            else:
                print(f"{name:26s} {r['setting']:9s} {r['median_ms']:9.1f} {r['p10_ms']:7.1f} "
                      f"{r['p90_ms']:7.1f} {r['peak_rss_mb']:7.0f}MiB {r['foreign']:7.0%}")
        for r in results.get("actc", []) if isinstance(results.get("actc"), list) else []:
            if "error" in r:
                print(f"{'actc':26s} {r['setting']:9s} ERROR: {r['error'][:200]}")
            elif r.get("bench"):
                b = r["bench"]
                print(f"{'actc':26s} {r['setting']:9s} {b['step_ms']['median']:9.1f} "
                      f"{b['step_ms']['p10']:7.1f} {b['step_ms']['p90']:7.1f} "
                      f"{b['peak_rss_bytes'] / 2**20:7.0f}MiB")
        acc = results.get("torch_acc")
        if acc and "runs" in acc:
            print(f"\naccuracy after {args.epochs} epochs (500 test sentences), seeds {args.seeds}; "
                  f"before training {acc['val_acc_before_training']:.4f}")
            for setting in args.settings:
                runs = [r for r in acc["runs"] if r["setting"] == setting]
                m, s = mean_std([r["final_val_acc"] for r in runs])
                print(f"  pytorch {setting:9s} {m:.4f} ± {s:.4f}  "
                      + " ".join(f"{r['final_val_acc']:.4f}" for r in runs))
        for r in results.get("actc", []) if isinstance(results.get("actc"), list) else []:
            ok = [t["final_val_acc"] for t in r.get("train", []) if t.get("final_val_acc") is not None]
            if ok:
                m, s = mean_std(ok)
                print(f"  actc    {r['setting']:9s} {m:.4f} ± {s:.4f}")
        if args.json:
            from cpu_meter import machine
            results["machine"] = machine()
            results["args"] = {k: (str(v) if isinstance(v, Path) else v)
                               for k, v in vars(args).items()}
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
