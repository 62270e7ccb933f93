#!/usr/bin/env python3
"""PyTorch side of bench_ort.py's equality check: the first training steps of the eager model
of common.py on a fixed Fashion-MNIST batch, written to an .npz for the ORT venv to compare.

Run from the repository root with the main venv (bench_ort.py --check calls it):

    .venv/bin/python models/reference/ref_losses_torch.py --shapes 64x32 8x224 --out ref.npz

Per shape BxS: the batch is the first B training images of models/data/fashion-mnist,
preprocessed as common.fashion_mnist does it (common.preprocess on the first B images; at
32x32 checked bit for bit against the whole set's), with
their labels. The model is common.mobilenetv2_folded() (the function of mobilenetv2.onnx),
trainable = common.select_trainable(model, 4), eval mode. `--steps` times: loss (mean
cross-entropy) before the step, gradients of the first step, then an SGD step with `--lr` and
`--momentum` (default 0: ONNX Runtime's training SGD has no momentum; with PyTorch's momentum
the first update is the same as plain SGD's, so the second loss would be identical too).
Written per shape: x_BxS, y_BxS, losses_BxS, and grad_BxS/<ONNX initializer name>.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (MODELS, fashion_mnist, mobilenetv2_folded, preprocess,  # noqa: E402
                    read_idx_gz, select_trainable)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="*", default=["64x32", "8x224"], help="BATCHxSIZE")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d = MODELS / "data" / "fashion-mnist"
    images = read_idx_gz(d / "train-images-idx3-ubyte.gz")
    labels = read_idx_gz(d / "train-labels-idx1-ubyte.gz").astype(np.int64)
    out = {}
    ref32, _ = fashion_mnist("train", 32)
    for shape in args.shapes:
        b, s = (int(v) for v in shape.split("x"))
        x = preprocess(images[:b], s)
        if s == 32:
            assert torch.equal(x, ref32[:b]), "preprocess() differs from common.fashion_mnist"
        y = torch.from_numpy(labels[:b])
        model, _, names = mobilenetv2_folded()
        torch.set_num_threads(args.threads)
        params = select_trainable(model, 4)
        model.eval()
        opt = torch.optim.SGD([p for _, p in params], lr=args.lr, momentum=args.momentum)
        losses = []
        for k in range(args.steps):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            losses.append(float(loss))
            if k == 0:
                for n, p in params:
                    out[f"grad_{shape}/{names[n]}"] = p.grad.numpy().copy()
            opt.step()
        out[f"x_{shape}"] = x.numpy()
        out[f"y_{shape}"] = y.numpy()
        out[f"losses_{shape}"] = np.array(losses, dtype=np.float64)
        out[f"trainable_{shape}"] = np.array([names[n] for n, _ in params])
        print(f"torch {shape}: losses {' '.join(f'{v:.8f}' for v in losses)}", file=sys.stderr)
    out["torch_version"] = np.array(torch.__version__)
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
