#!/usr/bin/env python3
"""PyTorch reference for `actc train`: fine-tune the bundled MobileNetV2 on Fashion-MNIST.

Run from the repository root:

    .venv/bin/python models/reference/finetune_torch.py                     # defaults below
    .venv/bin/python models/reference/finetune_torch.py --epochs 10 --json out.json

The network is the function of models/mobilenetv2.onnx in eager PyTorch: torchvision's
MobileNetV2 built as models/make_models.py builds it, every BatchNorm folded into its conv
(eval mode), then the ONNX file's own initializers copied in, so the weights are bit-identical
to the file (checked against onnxruntime before training). Eval mode throughout (the
classifier's Dropout is off, as in the exported graph). Trainable (DESIGN.md §3, `--layers 4`):
weights and (folded) biases of the last 4 convs and the classifier; the rest is frozen.
Plain torch.optim.SGD, F.cross_entropy (mean over the batch).

Data: models/data/fashion-mnist (2000 train / 500 test), 28x28 grayscale -> 3 channels ->
bilinear resize to 32x32 (align_corners=False) -> /255 -> ImageNet mean/std. Each epoch visits
the training set in the order of a permutation drawn from numpy.random.default_rng(--seed)
(one generator, one permutation per epoch); the last batch is partial (2000 = 31*64 + 16)
unless --drop-last. `--data TRAIN.npz --val VAL.npz` trains on other uint8 grayscale images
(arrays x and y, as `actc train` reads them), preprocessed the same way.

`--compress hosvd` trains the paper's method (hosvd_torch.py): the trained convs' inputs are
kept as a truncated HOSVD (all four modes, recomputed every step) with ranks by actc's
`--rank-rule`: `eps` the paper's ε rule (`--eps`, `--max-rank`), `centered` the same on the
per-channel residual, `auto` (actc's default) fixed ranks on maps with a spatial extent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (busy_seconds, fashion_mnist, foreign_share, machine,  # noqa: E402
                    mobilenetv2_folded, npz_images, own_cpu_seconds, select_trainable)
from hosvd_torch import compress_convs  # noqa: E402


def check_against_onnx(model, x):
    """The eager model must compute the same function as mobilenetv2.onnx."""
    import onnx
    import onnxruntime as ort
    from common import MODELS
    m = onnx.load(str(MODELS / "mobilenetv2.onnx"))
    for d in m.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.Clear()
        d.dim_param = "hw"
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ref = sess.run(["logits"], {"input": x.numpy()})[0]
    with torch.no_grad():
        got = model(x).numpy()
    return float(np.abs(got - ref).max())


def evaluate(model, x, y, batch=250):
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(x[i:i + batch])
            loss += float(F.cross_entropy(logits, y[i:i + batch], reduction="sum"))
            correct += int((logits.argmax(1) == y[i:i + batch]).sum())
    return loss / len(x), correct / len(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--layers", default="4", help="last N convs (+ classifier) to train, or all")
    ap.add_argument("--seed", type=int, default=0, help="shuffling seed (numpy default_rng)")
    ap.add_argument("--drop-last", action="store_true", help="skip the partial last batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=32, help="input height = width")
    ap.add_argument("--data", type=Path, help="training .npz (x uint8 images, y) [default: "
                    "the bundled Fashion-MNIST subset]")
    ap.add_argument("--val", type=Path, help="validation .npz, with --data")
    ap.add_argument("--compress", choices=["none", "hosvd"], default="none")
    ap.add_argument("--eps", type=float, default=0.95,
                    help="as actc's default for the auto and centered rules")
    ap.add_argument("--max-rank", type=int, help="rank cap per mode (actc's --max-rank)")
    ap.add_argument("--rank-rule", choices=["auto", "eps", "centered"], default="auto",
                    help="as actc's: the paper's ε rule, on the per-channel residual, or fixed "
                         "ranks on maps with a spatial extent and centered on the rest")
    ap.add_argument("--json", type=Path, help="write a JSON summary here")
    ap.add_argument("--save-weights", type=Path,
                    help="write the trained tensors here (.npz, keyed by ONNX initializer name)")
    args = ap.parse_args()

    model, fold_diff, onnx_names = mobilenetv2_folded()
    torch.set_num_threads(args.threads)
    if args.data:
        xtr, ytr = npz_images(args.data, args.size)
        xte, yte = npz_images(args.val, args.size)
    else:
        xtr, ytr = fashion_mnist("train", args.size)
        xte, yte = fashion_mnist("test", args.size)
    ort_diff = check_against_onnx(model, xte[:8])
    assert ort_diff < 1e-4, ort_diff
    params = select_trainable(model, args.layers)
    compressed = []
    if args.compress == "hosvd":
        convs = sorted({n.rpartition(".")[0] for n, _ in params
                        if isinstance(model.get_submodule(n.rpartition(".")[0]), torch.nn.Conv2d)})
        compressed = compress_convs(model, convs, eps=args.eps, max_rank=args.max_rank,
                                    rule=args.rank_rule)
    n_train = sum(p.numel() for _, p in params)
    print(f"torch {torch.__version__}, {args.threads} threads; model = mobilenetv2.onnx in eager "
          f"PyTorch (|torch fold - onnx fold| {fold_diff:.1e}, |eager - onnxruntime| "
          f"{ort_diff:.1e})")
    print(f"trainable ({len(params)} tensors, {n_train} values): {[n for n, _ in params]}")
    opt = torch.optim.SGD([p for _, p in params], lr=args.lr, momentum=args.momentum,
                          weight_decay=args.weight_decay)
    rng = np.random.default_rng(args.seed)
    model.eval()

    test_loss, test_acc = evaluate(model, xte, yte)
    initial = {"test_loss": test_loss, "test_acc": test_acc}
    print(f"epoch 0: test loss {test_loss:.4f} acc {test_acc:.4f}")
    epochs, all_steps = [], []
    for epoch in range(1, args.epochs + 1):
        perm = torch.from_numpy(rng.permutation(len(xtr)))
        stop = len(xtr) - (len(xtr) % args.batch if args.drop_last else 0)
        loss_sum, correct, seen, step_ms = 0.0, 0, 0, []
        w0, b0, c0 = time.perf_counter(), busy_seconds(), own_cpu_seconds()
        for i in range(0, stop, args.batch):
            idx = perm[i:min(i + args.batch, stop)]
            x, y = xtr[idx], ytr[idx]
            t0 = time.perf_counter()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_ms.append((time.perf_counter() - t0) * 1e3)
            loss_sum += float(loss) * len(idx)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(idx)
        foreign = foreign_share(time.perf_counter() - w0, b0, c0)
        test_loss, test_acc = evaluate(model, xte, yte)
        if compressed:
            # Per compressed conv, over this epoch's full batches: mean ranks and the paper's
            # metric (a partial last batch has smaller tensors).
            def summary(log):
                epoch_log = log[-len(step_ms):]
                full = [r for r in epoch_log if r[2] == max(r[2] for r in epoch_log)]
                return {"ranks_mean": [statistics.mean(r[0][m] for r in full) for m in range(4)],
                        "paper_bytes_mean": statistics.mean(r[1] for r in full),
                        "vanilla_bytes": full[0][2]}
            comp = [summary(c.log) for c in compressed]
        else:
            comp = None
        full = step_ms if len(xtr[:stop]) % args.batch == 0 else step_ms[:-1]
        rec = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "test_loss": test_loss, "test_acc": test_acc, "steps": len(step_ms),
               "step_ms_median": statistics.median(full),
               "foreign_cpu_share": foreign, "compression": comp}
        epochs.append(rec)
        all_steps += full
        print(f"epoch {epoch}: train loss {rec['train_loss']:.4f} acc {rec['train_acc']:.4f} | "
              f"test loss {test_loss:.4f} acc {test_acc:.4f} | step {rec['step_ms_median']:.1f} ms "
              f"(median of {len(full)} full batches; other processes used {foreign:.0%} of the CPU)")
    summary = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": "models/mobilenetv2.onnx function (torchvision MobileNetV2, BN folded, ONNX weights)",
        "trainable": [n for n, _ in params], "trainable_values": n_train,
        "trainable_onnx_names": [onnx_names[n] for n, _ in params],
        "initial": initial, "epochs": epochs, "step_ms_median_all_epochs": statistics.median(all_steps),
        "machine": machine(),
    }
    print(f"median step over all epochs: {summary['step_ms_median_all_epochs']:.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    if args.save_weights:
        np.savez(args.save_weights, **{onnx_names[n]: p.detach().numpy() for n, p in params})


if __name__ == "__main__":
    main()
