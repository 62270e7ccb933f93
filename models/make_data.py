#!/usr/bin/env python3
"""Build the small, deterministic data sets under models/data/ (needs numpy; scikit-learn
for digits.npz). Run from the repository root:

    python models/make_data.py

* data/fashion-mnist/: a seeded, class-balanced subset of Fashion-MNIST (2000 training images,
  200 per class; 500 test images, 50 per class) in the original IDX format, gzipped. Source:
  the Debian package `dataset-fashion-mnist` (files under /usr/share/datasets/fashion-mnist;
  override with --fashion-dir). Within each split the chosen samples keep their original
  relative order.
* data/digits.npz: scikit-learn's bundled 8x8 digits, x float32 (1797, 64) with values 0..16
  (not normalised), y int64 (1797,).

Output files are byte-for-byte reproducible (gzip/zip timestamps are fixed).
"""

from __future__ import annotations

import argparse
import gzip
import io
import struct
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SEED = 20240601
NUM_CLASSES = 10

IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    assert zero == 0 and dtype in IDX_DTYPES, (path, zero, dtype)
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    arr = np.frombuffer(raw, dtype=IDX_DTYPES[dtype], offset=4 + 4 * ndim)
    return arr.reshape(dims)


def write_idx_gz(path: Path, arr: np.ndarray) -> None:
    assert arr.dtype == np.uint8
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    payload = header + np.ascontiguousarray(arr).tobytes()
    with open(path, "wb") as raw:
        # filename="" and mtime=0 keep the gzip header free of the path and the time.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
            f.write(payload)


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picks = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        assert len(idx) >= per_class, (c, len(idx))
        picks.append(rng.choice(idx, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


def make_fashion_mnist(src: Path, n_train: int, n_test: int) -> None:
    out = DATA / "fashion-mnist"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = read_idx(src / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")
        assert images.shape[1:] == (28, 28) and len(images) == len(labels)
        assert n % NUM_CLASSES == 0
        keep = balanced_subset(labels, n // NUM_CLASSES, rng)
        write_idx_gz(out / f"{prefix}-images-idx3-ubyte.gz", images[keep])
        write_idx_gz(out / f"{prefix}-labels-idx1-ubyte.gz", labels[keep])
        counts = np.bincount(labels[keep], minlength=NUM_CLASSES)
        print(f"  fashion-mnist/{prefix}: {len(keep)} of {len(labels)} images, "
              f"per class {counts.tolist()}")


def save_npz_deterministic(path: Path, **arrays: np.ndarray) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps (reproducible bytes)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def make_digits() -> None:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = d.data.astype(np.float32)
    y = d.target.astype(np.int64)
    assert x.shape == (1797, 64) and y.shape == (1797,)
    DATA.mkdir(parents=True, exist_ok=True)
    save_npz_deterministic(DATA / "digits.npz", x=x, y=y)
    print(f"  digits.npz: x {x.dtype}{x.shape} in [{x.min():.0f}, {x.max():.0f}], "
          f"y {y.dtype}{y.shape}, per class {np.bincount(y).tolist()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fashion-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--skip-digits", action="store_true")
    args = ap.parse_args()
    make_fashion_mnist(args.fashion_dir, args.train, args.test)
    if not args.skip_digits:
        make_digits()


if __name__ == "__main__":
    main()
