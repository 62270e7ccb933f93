#!/usr/bin/env python3
"""Time ONNX Runtime training steps of MobileNetV2 (last 4 convs + classifier, folded BN, SGD).

Run from the repository root with the ORT venv (see README.md: `.venv-ort`, made from
requirements-ort.txt; onnxruntime-training-cpu 1.19.2, no torch):

    .venv-ort/bin/python models/reference/bench_ort.py                   # check + both shapes
    .venv-ort/bin/python models/reference/bench_ort.py --steps 50 --rounds 3 --json ort.json
    .venv-ort/bin/python models/reference/bench_ort.py --epochs 2 --json ort-epochs.json
    .venv-ort/bin/python models/reference/bench_ort.py --check-only

Per shape BxS, `onnxruntime.training.artifacts.generate_artifacts` turns models/mobilenetv2.onnx,
with its input fixed to (B, 3, S, S), into training artifacts: requires_grad = the weights and
biases of the last 4 Conv nodes and of the Gemm (10 tensors, 895 370 values; the same set as
common.select_trainable(model, 4) and actc's --layers 4), frozen_params = every other
initializer, LossType.CrossEntropyLoss (SoftmaxCrossEntropyLoss, mean), OptimType.SGD.
ORT 1.19's training SGD (SGDOptimizerV2) has **no momentum**: plain SGD, lr 0.01.
A step is `loss = module(x, labels)` (forward + backward), `optimizer.step()`,
`module.lazy_reset_grad()` on a fixed synthetic batch (seeded normal input, random labels),
fed as OrtValues. Threads: SessionOptions intra_op_num_threads = --threads (2),
inter_op_num_threads = 1, sequential execution; the Module and the Optimizer both take them.

Every configuration runs in its own subprocess, so its peak RSS (VmHWM of /proc/self/status:
the whole process, Python + onnxruntime + model + data) is its own; the artifacts are made by the
parent beforehand. Per config: --warmup untimed steps, --steps timed ones (median, p10, p90),
then 5 timed forwards of the eval model (no gradients; it includes the loss node). Peak RSS
is read after the timed steps, before those forwards (the eval session's own buffers come
on top: `peak_rss_with_eval_mb`). The CPU
time other processes used during the timed steps is measured as in bench_torch.py
(`foreign`); --max-foreign/--tries/--wait-quiet/--rounds work the same way.

--check (on unless --no-check) first proves that ORT trains the same function as PyTorch:
ref_losses_torch.py, run with the main venv's python (--torch-python), takes the first B
Fashion-MNIST training images (common.py's preprocessing), computes the eager model's loss
and gradients and takes 3 plain-SGD steps (lr 0.01); this script runs ORT's artifacts on the
same batch and fails unless the first loss agrees to 1e-5 relative, the gradients of the first
step to 1e-4 (|diff|/|grad|, or twice PyTorch's own difference between 1 and 2 threads where
that is larger: kinks make it ~1e-3 at 8x224 on some CPUs) and the later losses to 1e-4. It also
compares its own numpy preprocessing (used by --epochs) with PyTorch's on that batch.

--epochs E: instead of timing steps, trains E epochs over models/data/fashion-mnist (2000
images; numpy.random.default_rng(--seed) permutation per epoch, full batches only, so 31
steps of 64 or 250 of 8) and reports each epoch's seconds. Batches are preprocessed inside
the timed epoch (numpy: replicate to 3 channels, bilinear resize as
F.interpolate(align_corners=False), /255, ImageNet mean/std), as actc loads its batches.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

import cpu_meter
from cpu_meter import busy_seconds, foreign_share, own_cpu_seconds, timed_steps

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent
ROOT = MODELS.parent
MODEL = MODELS / "mobilenetv2.onnx"
DATA = MODELS / "data" / "fashion-mnist"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LR = 0.01
TRAINABLE_VALUES = 895_370
OPTIMIZER = "SGD lr 0.01, no momentum (ORT training SGDOptimizerV2)"


def ort_training():
    """Imports onnxruntime.training's `artifacts` and `api` without torch.

    onnxruntime/training/__init__.py imports its `amp` and `optim` packages, which import
    torch (for ORTModule); `artifacts`, `onnxblock` and `api` do not need it. So the package
    is registered as an empty module with the right __path__ and its __init__ is skipped."""
    import onnxruntime as ort
    ort.set_default_logger_severity(3)
    if "onnxruntime.training" not in sys.modules:
        spec = importlib.util.find_spec("onnxruntime.training")
        if spec is None:
            raise SystemExit("onnxruntime.training is missing: run this with .venv-ort "
                             "(models/reference/requirements-ort.txt)")
        pkg = types.ModuleType("onnxruntime.training")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        pkg.__file__ = spec.origin
        sys.modules["onnxruntime.training"] = pkg
    from onnxruntime.training import api
    return ort, api


# --- the model and its artifacts ---------------------------------------------------------

def fixed_model(batch: int, size: int):
    import onnx
    m = onnx.load(str(MODEL))
    assert len(m.graph.input) == 1 and len(m.graph.output) == 1
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for k, v in ((0, batch), (2, size), (3, size)):
        dims[k].Clear()
        dims[k].dim_value = v
    out = m.graph.output[0].type.tensor_type.shape.dim[0]
    out.Clear()
    out.dim_value = batch
    return m


def trainable_names(m) -> list[str]:
    """Weights and biases of the last 4 Conv nodes and of the Gemm (DESIGN.md §3, --layers 4)."""
    from onnx import numpy_helper
    convs = [n for n in m.graph.node if n.op_type == "Conv"][-4:]
    gemms = [n for n in m.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 1 and all(len(n.input) == 3 for n in convs + gemms)
    names = [name for n in convs + gemms for name in n.input[1:]]
    sizes = {t.name: numpy_helper.to_array(t).size for t in m.graph.initializer}
    assert sum(sizes[n] for n in names) == TRAINABLE_VALUES, names
    return names


@contextlib.contextmanager
def stderr_to(path: Path):
    """Sends file descriptor 2 to `path` (the gradient builder logs every pass at INFO)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def make_artifacts(batch: int, size: int, root: Path) -> Path:
    ort, _ = ort_training()
    from onnxruntime.training import artifacts
    d = root / f"{batch}x{size}"
    d.mkdir(parents=True, exist_ok=True)
    m = fixed_model(batch, size)
    names = trainable_names(m)
    frozen = [t.name for t in m.graph.initializer if t.name not in names]
    with stderr_to(d / "generate.log"):
        artifacts.generate_artifacts(
            m, requires_grad=names, frozen_params=frozen,
            loss=artifacts.LossType.CrossEntropyLoss, optimizer=artifacts.OptimType.SGD,
            artifact_directory=d)
    (d / "trainable.json").write_text(json.dumps(names) + "\n")
    return d


def open_session(d: Path, threads: int, lr: float = LR):
    ort, api = ort_training()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    state = api.CheckpointState.load_checkpoint(str(d / "checkpoint"))
    module = api.Module(str(d / "training_model.onnx"), state, str(d / "eval_model.onnx"),
                        device="cpu", session_options=so)
    opt = api.Optimizer(str(d / "optimizer_model.onnx"), module)
    opt.set_learning_rate(lr)
    module.train()
    return ort, state, module, opt


# --- data --------------------------------------------------------------------------------

def read_idx_gz(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of F.interpolate(mode="bilinear", align_corners=False,
    antialias=False) along one axis (PyTorch's source index and lambdas, in float32)."""
    scale = np.float32(n_in / n_out)
    src = np.maximum(scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5))
                     - np.float32(0.5), np.float32(0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    l1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    w = np.zeros((n_out, n_in), np.float32)
    np.add.at(w, (np.arange(n_out), i0), np.float32(1) - l1)
    np.add.at(w, (np.arange(n_out), i1), l1)
    return w


class Preprocess:
    """common.fashion_mnist's preprocessing in numpy: uint8 (N, 28, 28) -> float32
    (N, 3, S, S): replicate to 3 channels, bilinear resize, /255, ImageNet mean/std."""

    def __init__(self, n_in: int, size: int):
        self.wh = bilinear_matrix(n_in, size)
        self.wwt = np.ascontiguousarray(bilinear_matrix(n_in, size).T)
        self.mean = np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
        self.std = np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = (self.wh @ images.astype(np.float32) @ self.wwt) / np.float32(255.0)
        return np.ascontiguousarray((x[:, None] - self.mean) / self.std, dtype=np.float32)


# --- shared machine ----------------------------------------------------------------------

def wait_quiet(max_share: float, timeout: float) -> None:
    t_end = time.time() + timeout
    while time.time() < t_end:
        b0, t0 = busy_seconds(), time.perf_counter()
        time.sleep(5)
        if (busy_seconds() - b0) / ((time.perf_counter() - t0) * os.cpu_count()) <= max_share:
            return


def rss_mb() -> float:
    """Peak RSS of this process: VmHWM of /proc/self/status. Not ru_maxrss: Linux carries the
    parent's peak over into a child's ru_maxrss at exec, and this script's parent process
    holds the check's ORT sessions (~240 MB) when it starts the measured children."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pct(xs, q):
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def machine() -> dict:
    import onnx
    import onnxruntime
    return cpu_meter.machine(onnxruntime=onnxruntime.__version__, onnx=onnx.__version__,
                             numpy=np.__version__)


# --- one configuration, in a subprocess ---------------------------------------------------

def run_steps(cfg: dict) -> dict:
    ort, state, module, opt = open_session(Path(cfg["artifacts"]), cfg["threads"])
    b, s = cfg["batch"], cfg["size"]
    rng = np.random.default_rng(0)
    x = ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((b, 3, s, s), dtype=np.float32))
    y = ort.OrtValue.ortvalue_from_numpy(rng.integers(0, 10, b).astype(np.int64))
    rss_before = rss_mb()

    def step():
        loss = module(x, y)
        opt.step()
        module.lazy_reset_grad()
        return loss

    run = timed_steps(step, cfg["warmup"], cfg["steps"])
    times = run["times"]
    cpu_per_wall, foreign = run["cpu_per_wall"], run["foreign"]
    peak = rss_mb()
    module.eval()
    fwd = []
    for _ in range(5):
        t0 = time.perf_counter()
        module(x, y)
        fwd.append((time.perf_counter() - t0) * 1e3)
    return {**cfg, "layout": "ort", "median_ms": statistics.median(times),
            "p10_ms": pct(times, 0.1), "p90_ms": pct(times, 0.9), "foreign": foreign,
            "cpu_per_wall": cpu_per_wall, "forward_nograd_median_ms": statistics.median(fwd),
            "peak_rss_mb": peak, "rss_before_steps_mb": rss_before,
            "peak_rss_with_eval_mb": rss_mb(),
            "trainable_values": sum(state.parameters[n].data.size for n, _ in state.parameters
                                    if state.parameters[n].requires_grad),
            "optimizer": OPTIMIZER, "onnxruntime": ort.__version__}


def run_epochs(cfg: dict) -> dict:
    ort, state, module, opt = open_session(Path(cfg["artifacts"]), cfg["threads"])
    b, s = cfg["batch"], cfg["size"]
    images = read_idx_gz(DATA / "train-images-idx3-ubyte.gz")
    labels = read_idx_gz(DATA / "train-labels-idx1-ubyte.gz").astype(np.int64)
    prep = Preprocess(images.shape[1], s)
    rng = np.random.default_rng(cfg["seed"])
    steps = len(images) // b
    if cfg.get("epoch_steps"):
        steps = min(steps, cfg["epoch_steps"])
    seconds, losses, foreign, cpu_per_wall = [], [], [], []
    for _ in range(cfg["epochs"]):
        order = rng.permutation(len(images))
        total = 0.0
        w0, b0, c0 = time.perf_counter(), busy_seconds(), own_cpu_seconds()
        for k in range(steps):
            rows = order[k * b:(k + 1) * b]
            loss = module(prep(images[rows]), labels[rows])
            opt.step()
            module.lazy_reset_grad()
            total += float(loss)
        wall = time.perf_counter() - w0
        seconds.append(wall)
        losses.append(total / steps)
        cpu_per_wall.append((own_cpu_seconds() - c0) / wall)
        foreign.append(foreign_share(wall, b0, c0))
    return {**cfg, "layout": "ort", "steps_per_epoch": steps, "epoch_seconds": seconds,
            "epoch_train_loss": losses, "epoch_foreign": foreign, "foreign": max(foreign),
            "cpu_per_wall": cpu_per_wall, "peak_rss_mb": rss_mb(), "optimizer": OPTIMIZER,
            "onnxruntime": ort.__version__}


# --- the equality check with PyTorch ------------------------------------------------------

def check(shapes: list[tuple[int, int]], dirs: dict, args) -> dict:
    torch_py = Path(args.torch_python)
    if not torch_py.exists():
        raise SystemExit(f"--check needs the main venv's python ({torch_py}, see "
                         "models/README.md); or pass --no-check")
    ref_path = Path(args.workdir) / "ref_losses.npz"
    cmd = [str(torch_py), str(HERE / "ref_losses_torch.py"), "--steps", str(args.check_steps),
           "--lr", str(LR), "--momentum", "0", "--threads", str(args.threads),
           "--out", str(ref_path), "--shapes", *[f"{b}x{s}" for b, s in shapes]]
    print("check: " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    ref = np.load(ref_path)
    # PyTorch against itself: the same steps on one thread. Where its own gradients move
    # with the thread count (ReLU6 kinks flipped by rounding in the frozen prefix: ~1e-3 at
    # 8x224 on an AVX-512 machine), ORT is held to that spread instead of a fixed 1e-4.
    ref1_path = Path(args.workdir) / "ref_losses_1thread.npz"
    cmd1 = [*cmd[:cmd.index("--threads")], "--threads", "1", "--out", str(ref1_path),
            "--shapes", *[f"{b}x{s}" for b, s in shapes]]
    subprocess.run(cmd1, check=True, cwd=ROOT)
    ref1 = np.load(ref1_path)
    norm_rel = lambda a, b: float(np.linalg.norm((a - b).astype(np.float64))
                                  / max(np.linalg.norm(b.astype(np.float64)), 1e-30))
    images = read_idx_gz(DATA / "train-images-idx3-ubyte.gz")
    report, failures = {}, []
    for b, s in shapes:
        key = f"{b}x{s}"
        x, y, t_losses = ref[f"x_{key}"], ref[f"y_{key}"], ref[f"losses_{key}"]
        names = json.loads((dirs[key] / "trainable.json").read_text())
        if sorted(names) != sorted(str(n) for n in ref[f"trainable_{key}"]):
            failures.append(f"{key}: trainable sets differ")
        prep_diff = float(np.abs(Preprocess(images.shape[1], s)(images[:b]) - x).max())
        _, state, module, opt = open_session(dirs[key], args.threads)
        o_losses, grad_rel, grad_norm, torch_spread = [], {}, {}, {}
        for k in range(len(t_losses)):
            o_losses.append(float(module(x, y)))
            if k == 0:
                for n in names:
                    g_t = ref[f"grad_{key}/{n}"]
                    g_o = state.parameters[n].grad
                    grad_rel[n] = float(np.abs(g_o - g_t).max() / np.abs(g_t).max())
                    grad_norm[n] = norm_rel(g_o, g_t)
                    torch_spread[n] = norm_rel(ref1[f"grad_{key}/{n}"], g_t)
            opt.step()
            module.lazy_reset_grad()
        rel = [abs(o - t) / abs(t) for o, t in zip(o_losses, t_losses)]
        worst = max(grad_rel, key=grad_rel.get)
        limit = {n: max(1e-4, 2 * torch_spread[n]) for n in names}
        over = [n for n in names if grad_norm[n] > limit[n]]
        print(f"check {key}: numpy preprocessing vs PyTorch's, max |diff| {prep_diff:.2e} "
              f"(both systems then train on PyTorch's batch: first {b} training images)")
        print(f"  {'step':>4} {'PyTorch loss':>14} {'ORT loss':>14} {'rel diff':>9}")
        for k, (t, o, r) in enumerate(zip(t_losses, o_losses, rel)):
            print(f"  {k + 1:>4} {t:14.8f} {o:14.8f} {r:9.1e}")
        print(f"  gradients of step 1: worst max|diff|/max|grad| {grad_rel[worst]:.1e} ({worst}); "
              f"|diff|/|grad| worst {max(grad_norm.values()):.1e} against PyTorch's own 1- vs "
              f"2-thread spread up to {max(torch_spread.values()):.1e}")
        if rel[0] > 1e-5:
            failures.append(f"{key}: first loss differs by {rel[0]:.2e} relative (limit 1e-5)")
        if max(rel[1:], default=0) > 1e-4:
            failures.append(f"{key}: later losses differ by {max(rel[1:]):.2e} (limit 1e-4)")
        for n in over:
            failures.append(f"{key}: gradient of {n} differs by {grad_norm[n]:.2e} (norm; "
                            f"limit {limit[n]:.1e}: 1e-4 or twice PyTorch's own spread)")
        if prep_diff > 1e-5:
            failures.append(f"{key}: numpy preprocessing differs from PyTorch's by {prep_diff:.2e}")
        report[key] = {"torch_losses": [float(v) for v in t_losses], "ort_losses": o_losses,
                       "rel_diff": rel, "grad_rel_diff": grad_rel,
                       "grad_norm_rel_diff": grad_norm, "torch_thread_spread": torch_spread,
                       "preprocess_max_abs_diff": prep_diff,
                       "torch": str(ref["torch_version"])}
    if failures:
        for f in failures:
            print(f"CHECK FAILED: {f}", file=sys.stderr)
        raise SystemExit(1)
    print("check passed: ORT trains the same function as PyTorch (same first loss, gradients "
          "and plain-SGD updates)")
    return report


# --- main --------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", nargs="*", default=["64x32", "8x224"], help="BATCHxSIZE")
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
                    help="before each run, wait up to this long for the machine to be quiet")
    ap.add_argument("--check", dest="check", action="store_true", default=True,
                    help="compare the first losses and gradients with PyTorch first (default)")
    ap.add_argument("--no-check", dest="check", action="store_false")
    ap.add_argument("--check-only", action="store_true", help="only the check")
    ap.add_argument("--check-steps", type=int, default=3)
    ap.add_argument("--torch-python", default=str(ROOT / ".venv" / "bin" / "python"),
                    help="python of the main venv, for the check's PyTorch side")
    ap.add_argument("--artifacts", type=Path,
                    help="keep the training artifacts here [default: a temporary folder]")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one config (JSON) here
    args = ap.parse_args()
    if args.one:
        cfg = json.loads(args.one)
        print(json.dumps(run_epochs(cfg) if cfg.get("epochs") else run_steps(cfg)))
        return
    shapes = [tuple(int(v) for v in sh.split("x")) for sh in args.shapes]
    args.workdir = tempfile.mkdtemp(prefix="bench_ort.")
    try:
        root = args.artifacts or Path(args.workdir)
        dirs = {f"{b}x{s}": make_artifacts(b, s, root) for b, s in shapes}
        check_report = check(shapes, dirs, args) if args.check or args.check_only else None
        if args.check_only:
            if args.json:
                args.json.write_text(json.dumps({"check": check_report, "machine": machine()},
                                                indent=1) + "\n")
            return
        run_all(args, shapes, dirs, check_report)
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)


def run_all(args, shapes, dirs, check_report):
    configs = []
    for b, s in shapes:
        cfg = {"batch": b, "size": s, "threads": args.threads,
               "artifacts": str(dirs[f"{b}x{s}"])}
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
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    sys.stderr.write(out.stderr)
                    raise SystemExit(f"bench_ort.py: the run of {cfg} failed")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                del r["artifacts"]
                r.update(round=rnd, attempt=attempt, clean=r["foreign"] <= args.max_foreign)
                runs[i].append(r)
                what = (" ".join(f"{v:.1f}s" for v in r["epoch_seconds"]) if args.epochs
                        else f"{r['median_ms']:.1f} ms")
                print(f"  round {rnd} try {attempt} ort {cfg['batch']}x{cfg['size']}: {what} "
                      f"(foreign CPU {r['foreign']:.0%})", file=sys.stderr, flush=True)
                if r["clean"]:
                    break
                if not args.wait_quiet:
                    time.sleep(20)
    best = [min(rs, key=lambda r: (not r["clean"], key(r))) for rs in runs]
    if args.epochs:
        print(f"{'system':7s} {'batch x shape':15s} {'steps/epoch':>11s} "
              + " ".join(f"{f'epoch {e + 1}':>9s}" for e in range(args.epochs))
              + f" {'peak RSS':>9s} {'foreign':>8s}")
        for r in best:
            shape = f"{r['batch']}x3x{r['size']}x{r['size']}"
            print(f"{'ort':7s} {shape:15s} {r['steps_per_epoch']:>11d} "
                  + " ".join(f"{v:8.2f}s" for v in r["epoch_seconds"])
                  + f" {r['peak_rss_mb']:7.0f}MB {r['foreign']:7.0%}"
                  + ("" if r["clean"] else " (disturbed)"))
    else:
        print(f"{'system':7s} {'batch x shape':15s} {'median':>8s} {'p10':>8s} {'p90':>8s} "
              f"{'fwd(no grad)':>12s} {'peak RSS':>9s} {'cpu/wall':>8s} {'foreign':>8s}")
        for r in best:
            shape = f"{r['batch']}x3x{r['size']}x{r['size']}"
            print(f"{'ort':7s} {shape:15s} {r['median_ms']:6.1f}ms {r['p10_ms']:6.1f}ms "
                  f"{r['p90_ms']:6.1f}ms {r['forward_nograd_median_ms']:10.1f}ms "
                  f"{r['peak_rss_mb']:7.0f}MB {r['cpu_per_wall']:8.2f} {r['foreign']:7.0%}"
                  + ("" if r["clean"] else " (disturbed)"))
    if args.json:
        args.json.write_text(json.dumps({
            "best": best, "all_runs": runs, "check": check_report, "machine": machine(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("one", "workdir")}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
