#!/usr/bin/env python3
"""DINOv2 ViT-S/14 fine-tuned on Fashion-MNIST at 8x3x112x112: PyTorch eager, ONNX Runtime
training and actc side by side (step time, peak RSS, accuracy).

Run from the repository root, with the main venv (after models/fetch_pretrained.py):

    .venv/bin/python models/reference/bench_vit.py                      # every part
    .venv/bin/python models/reference/bench_vit.py --only torch-steps ort-steps --steps 20
    .venv/bin/python models/reference/bench_vit.py --only torch-acc --seeds 0 1 2 --epochs 3
    ACTC=/work/target-pre/release/actc .venv/bin/python models/reference/bench_vit.py --only actc
    ACTC=... .venv/bin/python models/reference/bench_vit.py --only actc --only-actc actc-train \
        --settings layers4 --compress none hosvd:0.9 hosvd:0.99 --lr 0.001
    .venv/bin/python models/reference/bench_vit.py --settings layers4 blocks1 --json vit.json

The model is models/pretrained/dinov2_vits14_cls.onnx (backbone + class token + seeded Linear
384->10); `transformers_torch.dinov2()` is its eager PyTorch module (equal to onnxruntime on
the file within ~2e-6 of the logits' scale: `transformers_torch.py --check`). What trains, per
`--settings` (the exact ONNX initializers are in transformers_trainable.json):
- `layers4`: actc's `--layers 4`: the head and the last block's fc2, fc1 and attention output
  Linear, their biases, the last block's norm2, both LayerScale vectors and the final norm;
- `layers4_frozen_layerscale`: the same without the two LayerScale vectors (what actc trains
  today: it does not count a Mul by a constant vector as a parameterized op);
- `blocks1`: actc's `--blocks 1`: the whole last block, the final norm, the head.

Parts (`--only`, default all):
- `check`: transformers_torch.py --check (eager module vs onnxruntime) and, with .venv-ort,
  ORT training's first losses and gradients against PyTorch's on the first 8 training images.
- `torch-steps`: per setting, a fresh process: model, trainable selection, a fixed synthetic
  batch (seeded normal input, random labels), `--warmup` untimed then `--steps` timed steps
  (forward, cross-entropy, zero_grad, backward, SGD lr 0.01 momentum 0.9; and momentum 0 for
  the row beside ORT), 2 threads; median/p10/p90 ms, peak RSS (VmHWM: the whole process),
  the CPU share other processes used meanwhile (`foreign`, as bench_torch.py).
- `torch-acc`: accuracy after `--epochs` epochs (default 3) over the 2000 training images of
  models/data/fashion-mnist (preprocessing of common.fashion_mnist at 112: gray replicated to 3
  channels, bilinear resize with align_corners=False, /255, ImageNet mean/std, as actc's
  loader does), batch 8, full batches only, each epoch a numpy.random.default_rng(seed)
  permutation; validation on the 500 test images after each epoch; SGD lr 0.01 momentum 0.9;
  one run per `--seeds` (the seed changes the data order only; the head's init is the file's).
  Every setting trains only block 11, the final norm and the head, so the tokens entering
  block 11 are a fixed function of the image: they are computed once (eval, no grad; cached
  in models/pretrained/cache/, keyed by the model's and data's sha256) and the
  training runs blocks 11.. on them, which is the same function and the same SGD as running
  the whole network every step (checked: the first steps' losses of both ways are printed
  and must agree to 1e-5).
- `ort-steps`: ONNX Runtime training 1.19.2 (.venv-ort, --ort-python): generate_artifacts on
  the file with the input fixed to (8, 3, 112, 112), requires_grad = the setting's tensors,
  frozen_params = the rest, CrossEntropyLoss, SGD (no momentum: ORT 1.19 has none); steps
  timed as bench_ort.py does. The artifacts build, but ORT 1.19's training session fails on
  the graph's cubic Resize of the position embedding ("'Cubic' mode only support 2-D inputs
  ('Bicubic') or 4-D inputs with the corresponding outermost 2 scale values being 1";
  its inference session runs the same graph): the error is recorded (`ort_models`) and ORT
  then trains dinov2_vits14_cls_112.onnx (fetch_pretrained.py --bake-112: that Resize's
  output at 112 as a constant, the same function, bit for bit at inference).
- `actc`: with ACTC=path (or --actc): `actc compile MODEL --layers 4 | --blocks 1
  --input-shape 8x3x112x112 --momentum 0.9 --lr 0.01`, `actc bench --steps N --threads 2
  --json`, `actc train --data models/data/fashion-mnist --val .../t10k-images-idx3-ubyte.gz
  --epochs E --seed S --threads 2 --log`; `--compress hosvd/eps:0.9 ...` adds rows compiled
  with `--compress hosvd --rank-rule eps --eps 0.9` (`hosvd` alone: the default rule;
  `hosvd@480K`: `--budget 480K --calibration` the training data) (their last epoch's paper memory metric beside vanilla's
  bytes, and the ratio, are in the results). An actc error (e.g. an op it cannot compile yet) is
  recorded with its message and the other columns go on.
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
MODEL = MODELS / "pretrained" / "dinov2_vits14_cls.onnx"
MODEL_FILE = MODEL.name
MODEL_112 = MODELS / "pretrained" / "dinov2_vits14_cls_112.onnx"   # ORT's fallback
DATA = MODELS / "data" / "fashion-mnist"
VAL = DATA / "t10k-images-idx3-ubyte.gz"
TRAINABLE_JSON = HERE / "transformers_trainable.json"
PARTS = ["check", "torch-steps", "torch-acc", "ort-steps", "actc"]
SETTINGS = ["layers4", "layers4_frozen_layerscale", "blocks1"]
LR = 0.01
SIZE = 112
BATCH = 8
FIRST_TRAINED_BLOCK = 11   # every setting trains block 11 onwards only


def vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def pct(xs, q):
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def sha256(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def trainable(setting: str) -> list[str]:
    return json.loads(TRAINABLE_JSON.read_text())[MODEL_FILE][setting]["tensors"]


# --- PyTorch (children run with the main venv) ----------------------------------------------

def torch_model(setting: str, threads: int):
    import torch
    sys.path.insert(0, str(HERE))
    import transformers_torch as tt
    torch.set_num_threads(threads)
    model, names = tt.dinov2(MODEL, attn="sdpa")
    params = tt.select(model, names, trainable(setting))
    return model.eval(), params, names


def torch_steps(cfg: dict) -> dict:
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, str(HERE))
    from cpu_meter import timed_steps
    model, params, _ = torch_model(cfg["setting"], cfg["threads"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg["batch"], 3, cfg["size"], cfg["size"], generator=g)
    y = torch.randint(0, 10, (cfg["batch"],), generator=g)
    opt = torch.optim.SGD([p for _, p in params], lr=cfg["lr"], momentum=cfg["momentum"])
    rss_before = vmhwm_mb()

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    run = timed_steps(step, cfg["warmup"], cfg["steps"])
    times = run["times"]
    foreign = run["foreign"]
    peak = vmhwm_mb()
    fwd = []
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            model(x)
            fwd.append((time.perf_counter() - t0) * 1e3)
    return {**cfg, "system": "pytorch", "median_ms": statistics.median(times),
            "p10_ms": pct(times, 0.1), "p90_ms": pct(times, 0.9), "foreign": foreign,
            "forward_nograd_median_ms": statistics.median(fwd), "peak_rss_mb": peak,
            "rss_before_steps_mb": rss_before,
            "trainable_values": sum(p.numel() for _, p in params), "torch": torch.__version__}


def torch_acc(cfg: dict) -> dict:
    """Accuracy runs of every (setting, seed) of cfg in this process (see the docstring)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, str(HERE))
    from common import fashion_mnist
    import transformers_torch as tt
    torch.set_num_threads(cfg["threads"])
    t0 = time.perf_counter()
    x_tr, y_tr = fashion_mnist("train", cfg["size"])
    x_va, y_va = fashion_mnist("test", cfg["size"])
    base, names = tt.dinov2(MODEL, attn="sdpa")
    state0 = {k: v.clone() for k, v in base.state_dict().items()}

    def tokens_before(x):
        out = []
        with torch.no_grad():
            for k in range(0, len(x), 50):
                t = base.tokens(x[k:k + 50])
                for blk in base.blocks[:FIRST_TRAINED_BLOCK]:
                    t = blk(t)
                out.append(t)
        return torch.cat(out)

    # the block-11 inputs of every image, cached on disk (keyed by the model file's bytes,
    # the size and the data), so accuracy runs can be split into short jobs
    cache = Path(cfg["cache"]) if cfg.get("cache") else None
    key = {"model_sha256": sha256(MODEL), "size": cfg["size"], "block": FIRST_TRAINED_BLOCK,
           "data_sha256": [sha256(DATA / f) for f in sorted(os.listdir(DATA))]}
    cached = torch.load(cache) if cache and cache.exists() else None
    if cached is not None and cached["key"] == key:
        f_tr, f_va = cached["train"], cached["test"]
        from_cache = True
    else:
        f_tr, f_va = tokens_before(x_tr), tokens_before(x_va)
        from_cache = False
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"key": key, "train": f_tr, "test": f_va}, str(cache) + ".part")
            os.replace(str(cache) + ".part", cache)
    feature_seconds = time.perf_counter() - t0
    results = []
    for setting in cfg["settings"]:
        for seed in cfg["seeds"]:
            base.load_state_dict(state0)
            params = tt.select(base, names, trainable(setting))
            opt = torch.optim.SGD([p for _, p in params], lr=cfg["lr"], momentum=0.9)
            rng = np.random.default_rng(seed)
            b = cfg["batch"]
            steps = len(f_tr) // b
            if cfg.get("epoch_steps"):
                steps = min(steps, cfg["epoch_steps"])
            epochs, same_way = [], []
            for epoch in range(cfg["epochs"]):
                order = rng.permutation(len(f_tr))
                total, t_ep = 0.0, time.perf_counter()
                base.train(False)
                for k in range(steps):
                    rows = torch.from_numpy(order[k * b:(k + 1) * b])
                    loss = F.cross_entropy(base.forward_from(f_tr[rows], FIRST_TRAINED_BLOCK),
                                           y_tr[rows])
                    if epoch == 0 and k < 3 and seed == cfg["seeds"][0]:
                        with torch.no_grad():   # the whole network on the images, same weights
                            full = F.cross_entropy(base(x_tr[rows]), y_tr[rows])
                        same_way.append((float(loss), float(full)))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss)
                with torch.no_grad():
                    logits = torch.cat([base.forward_from(f_va[k:k + 100], FIRST_TRAINED_BLOCK)
                                        for k in range(0, len(f_va), 100)])
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
                            "steps_per_epoch": steps,
                            "cached_vs_full_losses": same_way,
                            "trainable_values": sum(p.numel() for _, p in params)})
    return {"system": "pytorch", "runs": results, "feature_seconds": feature_seconds,
            "features_from_cache": from_cache, "peak_rss_mb": vmhwm_mb(),
            "torch": torch.__version__, **cfg}


def torch_ref(cfg: dict) -> dict:
    """The first `steps` plain-SGD steps on the first 8 training images, for ORT's check."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, str(HERE))
    from common import fashion_mnist
    model, params, names = torch_model(cfg["setting"], cfg["threads"])
    x, y = fashion_mnist("train", cfg["size"])
    x, y = x[:cfg["batch"]].contiguous(), y[:cfg["batch"]]
    opt = torch.optim.SGD([p for _, p in params], lr=cfg["lr"], momentum=0.0)
    out, losses = {"x": x.numpy(), "y": y.numpy()}, []
    for k in range(cfg["steps"]):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        losses.append(float(loss))
        if k == 0:
            for n, p in params:   # in the ONNX initializer's layout
                g = p.grad.numpy()
                out[f"grad/{names[n]}"] = (g.T if names[n] in model.onnx_transposed else g).copy()
        opt.step()
    out["losses"] = np.array(losses)
    np.savez(cfg["out"], **out)
    return {"losses": losses}


# --- ONNX Runtime training (children run with .venv-ort) --------------------------------------

def ort_fixed_model(path: Path, batch: int, size: int):
    import onnx
    m = onnx.load(str(path))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for k, v in ((0, batch), (2, size), (3, size)):
        dims[k].Clear()
        dims[k].dim_value = v
    out = m.graph.output[0].type.tensor_type.shape.dim[0]
    out.Clear()
    out.dim_value = batch
    return m


def ort_artifacts(cfg: dict) -> dict:
    sys.path.insert(0, str(HERE))
    import bench_ort
    bench_ort.ort_training()
    from onnxruntime.training import artifacts
    d = Path(cfg["dir"])
    d.mkdir(parents=True, exist_ok=True)
    m = ort_fixed_model(Path(cfg["model"]), cfg["batch"], cfg["size"])
    names = trainable(cfg["setting"])
    frozen = [t.name for t in m.graph.initializer if t.name not in names]
    t0 = time.perf_counter()
    with bench_ort.stderr_to(d / "generate.log"):
        artifacts.generate_artifacts(
            m, requires_grad=names, frozen_params=frozen,
            loss=artifacts.LossType.CrossEntropyLoss, optimizer=artifacts.OptimType.SGD,
            artifact_directory=d)
    return {"seconds": time.perf_counter() - t0}


def ort_probe(cfg: dict) -> dict:
    """One training step on zeros: does ORT run this graph at all?"""
    import numpy as np
    sys.path.insert(0, str(HERE))
    import bench_ort
    _, _, module, opt = bench_ort.open_session(Path(cfg["dir"]), cfg["threads"], cfg["lr"])
    b, s = cfg["batch"], cfg["size"]
    loss = module(np.zeros((b, 3, s, s), np.float32), np.zeros(b, np.int64))
    opt.step()
    return {"loss": float(loss)}


def ort_check(cfg: dict) -> dict:
    import numpy as np
    sys.path.insert(0, str(HERE))
    import bench_ort
    ref = np.load(cfg["ref"])
    _, state, module, opt = bench_ort.open_session(Path(cfg["dir"]), cfg["threads"], cfg["lr"])
    losses, grad_rel = [], {}
    for k in range(len(ref["losses"])):
        losses.append(float(module(ref["x"], ref["y"].astype(np.int64))))
        if k == 0:
            for n in trainable(cfg["setting"]):
                g_t = ref[f"grad/{n}"]
                g_o = state.parameters[n].grad
                grad_rel[n] = float(np.abs(g_o - g_t).max() / np.abs(g_t).max())
        opt.step()
        module.lazy_reset_grad()
    t = [float(v) for v in ref["losses"]]
    rel = [abs(a - b) / abs(b) for a, b in zip(losses, t)]
    return {"torch_losses": t, "ort_losses": losses, "rel_diff": rel,
            "grad_rel_diff": grad_rel, "worst_grad": max(grad_rel.values()),
            "ok": rel[0] <= 1e-5 and max(rel) <= 1e-4 and max(grad_rel.values()) <= 1e-4}


def ort_steps(cfg: dict) -> dict:
    import numpy as np
    sys.path.insert(0, str(HERE))
    import bench_ort
    from cpu_meter import timed_steps
    ort, state, module, opt = bench_ort.open_session(Path(cfg["dir"]), cfg["threads"], cfg["lr"])
    b, s = cfg["batch"], cfg["size"]
    rng = np.random.default_rng(0)
    x = ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((b, 3, s, s), dtype=np.float32))
    y = ort.OrtValue.ortvalue_from_numpy(rng.integers(0, 10, b).astype(np.int64))
    rss_before = vmhwm_mb()

    def step():
        module(x, y)
        opt.step()
        module.lazy_reset_grad()

    run = timed_steps(step, cfg["warmup"], cfg["steps"])
    times = run["times"]
    return {**cfg, "system": "ort", "median_ms": statistics.median(times),
            "p10_ms": pct(times, 0.1), "p90_ms": pct(times, 0.9),
            "foreign": run["foreign"],
            "cpu_per_wall": run["cpu_per_wall"], "peak_rss_mb": vmhwm_mb(),
            "rss_before_steps_mb": rss_before, "onnxruntime": ort.__version__,
            "optimizer": f"SGD lr {cfg['lr']}, no momentum (ORT training SGDOptimizerV2)"}


CHILDREN = {"torch-steps": torch_steps, "torch-acc": torch_acc, "torch-ref": torch_ref,
            "ort-artifacts": ort_artifacts, "ort-probe": ort_probe, "ort-check": ort_check,
            "ort-steps": ort_steps}


# --- the parent: no torch, no onnxruntime ------------------------------------------------------

def child(python: str, cfg: dict, log: list) -> dict:
    """Runs one part in a fresh process; returns its JSON, or {"error": ...}."""
    out = subprocess.run([python, __file__, "--one", json.dumps(cfg)], capture_output=True,
                         text=True, cwd=ROOT)
    sys.stderr.write(out.stderr[-4000:] if out.returncode else "")
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        err = {"error": lines[-1] if lines else f"exit {out.returncode}",
               "stderr_tail": lines[-15:], **{k: v for k, v in cfg.items() if k != "kind"}}
        log.append({"part": cfg["kind"], **err})
        return err
    return json.loads(out.stdout.strip().splitlines()[-1])


def ort_prepare(ort_py: str, setting: str, work: Path, base: dict, results: dict, log: list):
    """Training artifacts for `setting`: from the model file if ORT trains it, else from the
    file with the position embedding baked for 112x112 (the same function; ORT 1.19's training
    session fails on the graph's cubic Resize). Returns the artifact folder or None."""
    tried = results["ort_models"].setdefault(setting, [])
    for path in (MODEL, MODEL_112):
        if not path.exists():
            tried.append({"model": path.name, "error": "missing (fetch_pretrained.py --bake-112)"})
            continue
        d = work / f"ort-{setting}-{path.stem}"
        r = child(ort_py, {"kind": "ort-artifacts", "setting": setting, "dir": str(d),
                           "model": str(path), **base}, log)
        if "error" not in r:
            r = child(ort_py, {"kind": "ort-probe", "setting": setting, "dir": str(d), **base},
                      log)
        tried.append({"model": path.name, **r})
        print(f"ort {setting} on {path.name}: {json.dumps(r)[:300]}", file=sys.stderr, flush=True)
        if "error" not in r:
            return d
    results.setdefault("steps", []).append({"system": "ort", "setting": setting,
                                            "error": tried[-1].get("error", "?")})
    return None


def wait_quiet(max_share: float, timeout: float) -> None:
    sys.path.insert(0, str(HERE))
    from cpu_meter import busy_seconds
    t_end = time.time() + timeout
    while time.time() < t_end:
        b0, t0 = busy_seconds(), time.perf_counter()
        time.sleep(5)
        if (busy_seconds() - b0) / ((time.perf_counter() - t0) * os.cpu_count()) <= max_share:
            return


def run_cmd(cmd: list[str], timeout: float | None = None) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, peak RSS in MiB of this child alone: os.wait4's rusage)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT)
        t_end = time.time() + (timeout or 1e9)
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                code = os.waitstatus_to_exitcode(status)
                p.returncode = code
                break
            if time.time() > t_end:
                p.kill()
                _, status, usage = os.wait4(p.pid, 0)
                p.returncode = code = -1
                break
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        o, e = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        if code == -1:
            e += f"\ntimed out after {timeout} s"
        return code, o, e, usage.ru_maxrss / 1024.0


def actc_part(args, work: Path, results: dict) -> None:
    actc = args.actc or os.environ.get("ACTC")
    if not actc:
        results["actc"] = {"error": "no actc binary: set ACTC=path or --actc"}
        print("actc: skipped (set ACTC=path or --actc)", file=sys.stderr)
        return
    rows = []
    runs = [(setting, compress) for setting in args.settings for compress in args.compress
            if setting != "layers4_frozen_layerscale"]  # its flags are layers4's
    for setting, compress in runs:
        flags = ["--layers", "4"] if setting == "layers4" else ["--blocks", "1"]
        method_spec, int8, _ = compress.partition("+int8")
        if int8:
            flags += ["--prefix-precision", "int8"]
        if method_spec != "none":
            spec, _, budget = method_spec.partition("@")
            spec, _, eps = spec.partition(":")
            method, _, rule = spec.partition("/")
            flags += ["--compress", method] + (["--rank-rule", rule] if rule else []) + \
                (["--eps", eps] if eps else [])
            if budget:
                flags += ["--budget", budget, "--calibration", str(DATA)]
        name = setting if compress == "none" else \
            f"{setting}-{compress.replace(':', '').replace('@', '-').replace('/', '-').replace('+', '-')}"
        plan = work / f"actc-{name}.actc"
        cmd = [actc, "compile", str(MODEL), *flags, "--input-shape",
               f"{BATCH}x3x{SIZE}x{SIZE}", "--momentum", "0.9", "--lr", str(args.lr),
               "--threads", "2", "-o", str(plan)]
        code, out, err, _ = run_cmd(cmd, timeout=1800)
        row = {"setting": setting, "compress": compress, "compile": " ".join(cmd[1:])}
        print(f"actc {name}: compile exit {code}", file=sys.stderr, flush=True)
        if code != 0:
            row["error"] = (err.strip().splitlines() or ["(no message)"])[-1]
            rows.append(row)
            print(f"  actc error: {row['error']}", file=sys.stderr)
            continue
        if "actc-bench" in args.only_actc:
            code, out, err, _ = run_cmd([actc, "bench", str(plan), "--steps", str(args.steps),
                                         "--warmup", str(args.warmup), "--threads", "2",
                                         "--json"], timeout=1800)
            if code == 0:
                row["bench"] = json.loads(out.strip().splitlines()[-1])
            else:
                row["bench_error"] = (err.strip().splitlines() or ["?"])[-1]
        if "actc-train" in args.only_actc:
            row["train"] = []
            for seed in args.seeds:
                log = work / f"actc-{name}-{seed}.jsonl"
                cmd = [actc, "train", str(plan), "--data", str(DATA), "--val", str(VAL),
                       "--epochs", str(args.epochs), "--seed", str(seed), "--threads", "2",
                       "--log", str(log), "--quiet"]
                code, out, err, rss = run_cmd(cmd, timeout=3600)
                if code != 0:
                    row["train"].append({"seed": seed, "error": (err.strip().splitlines()
                                                                 or ["?"])[-1]})
                    continue
                epochs = [json.loads(ln) for ln in log.read_text().splitlines()
                          if '"event": "epoch"' in ln or '"event":"epoch"' in ln]
                row["train"].append({
                    "seed": seed, "peak_rss_mib": rss,
                    "epochs": [{"epoch": e["epoch"], "seconds": e["seconds"],
                                "val_acc": e["val"].get("accuracy"),
                                "val_loss": e["val"].get("loss"),
                                "train_loss": e["train"].get("loss")} for e in epochs],
                    "final_val_acc": epochs[-1]["val"].get("accuracy") if epochs else None,
                    # The paper's memory metric of the last epoch (bytes the compressed
                    # saved inputs take, mean over steps) beside vanilla's.
                    "compression": {k: epochs[-1]["compression"][k] for k in
                                    ("paper_bytes_mean", "paper_bytes_peak", "vanilla_bytes")}
                    if epochs and "compression" in epochs[-1] else None})
        rows.append(row)
    results["actc"] = rows


def mean_std(xs):
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    s = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return m, s


def report(results: dict, args) -> None:
    print(f"\nDINOv2 ViT-S/14, Fashion-MNIST, {BATCH}x3x{SIZE}x{SIZE}, 2 threads")
    if "check" in results:
        print("check:", json.dumps(results["check"].get("summary", results["check"]))[:600])
    print(f"\n{'system':28s} {'setting':26s} {'median ms':>9s} {'p10':>7s} {'p90':>7s} "
          f"{'peak RSS':>9s} {'foreign':>8s}")
    for r in results.get("steps", []):
        name = r.get("system", "?")
        if name == "pytorch":
            name += f" (momentum {r['momentum']})"
        elif name == "ort":
            name += " (SGD, no momentum)"
        if "error" in r:
            print(f"{name:28s} {r['setting']:26s} ERROR: {r['error'][:200]}")
            continue
        print(f"{name:28s} {r['setting']:26s} {r['median_ms']:9.1f} {r['p10_ms']:7.1f} "
              f"{r['p90_ms']:7.1f} {r['peak_rss_mb']:7.0f}MiB {r['foreign']:7.0%}")
    for r in results.get("actc", []) if isinstance(results.get("actc"), list) else []:
        if "error" in r:
            print(f"{'actc':28s} {r['setting']:26s} ERROR: {r['error'][:200]}")
        elif "bench" in r:
            b = r["bench"]
            print(f"{'actc':28s} {r['setting']:26s} {b['step_ms']['median']:9.1f} "
                  f"{b['step_ms']['p10']:7.1f} {b['step_ms']['p90']:7.1f} "
                  f"{b['peak_rss_bytes'] / 2**20:7.0f}MiB          (trainable part "
                  f"{b['suffix_ms']['median']:.1f} ms; planned {b['planned_bytes'] / 1e6:.1f} MB)")
    acc = results.get("torch_acc")
    if acc and "runs" in acc:
        print(f"\naccuracy after {args.epochs} epochs (500 test images), seeds {args.seeds}:")
        for setting in args.settings:
            runs = [r for r in acc["runs"] if r["setting"] == setting]
            m, s = mean_std([r["final_val_acc"] for r in runs])
            print(f"  pytorch {setting:26s} {m:.4f} ± {s:.4f}  "
                  + " ".join(f"{r['final_val_acc']:.4f}" for r in runs))
    elif acc:
        print(f"\npytorch accuracy: ERROR {acc.get('error')}")
    for r in results.get("actc", []) if isinstance(results.get("actc"), list) else []:
        ok = [t["final_val_acc"] for t in r.get("train", []) if t.get("final_val_acc") is not None]
        if ok:
            m, s = mean_std(ok)
            label = r["setting"] + ("" if r.get("compress", "none") == "none"
                                    else f" {r['compress']}")
            mem = [t["compression"] for t in r["train"] if t.get("compression")]
            ratio = (f"  paper metric {mem[0]['vanilla_bytes'] / mem[0]['paper_bytes_mean']:.1f}x"
                     " below vanilla" if mem else "")
            print(f"  actc    {label:26s} {m:.4f} ± {s:.4f}  "
                  + " ".join(f"{v:.4f}" for v in ok) + ratio)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=PARTS, choices=PARTS)
    ap.add_argument("--settings", nargs="*", default=SETTINGS, choices=SETTINGS)
    ap.add_argument("--compress", nargs="*", default=["none"],
                    metavar="METHOD[/RULE][:EPS][@BUDGET][+int8]",
                    help="actc rows: none, or --compress METHOD with --rank-rule RULE and "
                         "--eps EPS (hosvd/eps:0.9), or with --budget BUDGET calibrated on the "
                         "training data (hosvd@480K); +int8 adds --prefix-precision int8 "
                         "(none+int8)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--epoch-steps", type=int, default=0, help="cut epochs short (tests)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--acc-threads", type=int, default=1,
                    help="torch threads of the accuracy runs (1: robust on a shared machine, "
                         "where a 2-thread torch waits for a busy core; speed is not measured)")
    ap.add_argument("--features-cache", type=Path,
                    default=MODELS / "pretrained" / "cache" / "dinov2_112_block11_inputs.pt",
                    help="the accuracy runs' cached block-11 inputs (git-ignored folder)")
    ap.add_argument("--lr", type=float, default=LR, help="SGD learning rate (all systems)")
    ap.add_argument("--momenta", type=float, nargs="*", default=[0.9, 0.0],
                    help="PyTorch step rows: SGD momentum values")
    ap.add_argument("--ort-python", default=str(ROOT / ".venv-ort" / "bin" / "python"))
    ap.add_argument("--actc", help="actc binary (default: $ACTC)")
    ap.add_argument("--only-actc", nargs="*", default=["actc-bench", "actc-train"],
                    choices=["actc-bench", "actc-train"])
    ap.add_argument("--max-foreign", type=float, default=0.05)
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    ap.add_argument("--json", type=Path, help="write every result here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        cfg = json.loads(args.one)
        print(json.dumps(CHILDREN[cfg.pop("kind")](cfg)))
        return
    if not MODEL.exists():
        raise SystemExit(f"{MODEL} is missing: run .venv/bin/python models/fetch_pretrained.py")
    py = sys.executable
    ort_py = args.ort_python if Path(args.ort_python).exists() else None
    work = Path(tempfile.mkdtemp(prefix="bench_vit."))
    results: dict = {"errors": []}
    log = results["errors"]
    try:
        base = {"batch": BATCH, "size": SIZE, "threads": args.threads, "lr": args.lr}
        ort_dirs = {}
        if ("check" in args.only or "ort-steps" in args.only) and ort_py:
            results["ort_models"] = {}
            for setting in args.settings:
                d = ort_prepare(ort_py, setting, work, base, results, log)
                if d is not None:
                    ort_dirs[setting] = d
        elif not ort_py:
            print("no .venv-ort: the ORT columns are skipped", file=sys.stderr)
        if "check" in args.only:
            code = subprocess.run([py, str(HERE / "transformers_torch.py"), "--check"],
                                  cwd=ROOT).returncode
            results["check"] = {"eager_vs_onnxruntime_ok": code == 0, "ort_training": {}}
            for setting, d in ort_dirs.items():
                ref = work / f"ref-{setting}.npz"
                child(py, {"kind": "torch-ref", "setting": setting, "steps": 3,
                           "out": str(ref), **base}, log)
                r = child(ort_py, {"kind": "ort-check", "setting": setting, "dir": str(d),
                                   "ref": str(ref), **base}, log)
                results["check"]["ort_training"][setting] = r
                print(f"ORT vs PyTorch {setting}: {json.dumps(r)[:400]}", file=sys.stderr)
        if "torch-steps" in args.only or "ort-steps" in args.only:
            steps = results.setdefault("steps", [])
            for setting in args.settings:
                if args.wait_quiet:
                    wait_quiet(args.max_foreign, args.wait_quiet)
                if "torch-steps" in args.only:
                    for mom in args.momenta:
                        r = child(py, {"kind": "torch-steps", "setting": setting,
                                       "momentum": mom, "steps": args.steps,
                                       "warmup": args.warmup, **base}, log)
                        r.setdefault("system", "pytorch")
                        r.setdefault("momentum", mom)
                        steps.append(r)
                        print(f"pytorch {setting} momentum {mom}: "
                              f"{r.get('median_ms', r.get('error'))}", file=sys.stderr, flush=True)
                if "ort-steps" in args.only and setting in ort_dirs:
                    r = child(ort_py, {"kind": "ort-steps", "setting": setting,
                                       "dir": str(ort_dirs[setting]), "steps": args.steps,
                                       "warmup": args.warmup, **base}, log)
                    r.setdefault("system", "ort")
                    r.setdefault("setting", setting)
                    r.pop("dir", None)
                    steps.append(r)
                    print(f"ort {setting}: {r.get('median_ms', r.get('error'))}",
                          file=sys.stderr, flush=True)
        if "torch-acc" in args.only:
            results["torch_acc"] = child(py, {"kind": "torch-acc", "settings": args.settings,
                                              "seeds": args.seeds, "epochs": args.epochs,
                                              "epoch_steps": args.epoch_steps,
                                              "cache": str(args.features_cache),
                                              **{**base, "threads": args.acc_threads}}, log)
        if "actc" in args.only:
            actc_part(args, work, results)
        report(results, args)
        if args.json:
            sys.path.insert(0, str(HERE))
            from cpu_meter import machine
            results["machine"] = machine()
            results["args"] = {k: (str(v) if isinstance(v, Path) else v)
                               for k, v in vars(args).items()}
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
