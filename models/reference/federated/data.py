"""Fashion-MNIST subset bundled in models/data/fashion-mnist, read with NumPy, and its split
into disjoint client shards (IID or label-skewed by a Dirichlet draw)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "data" / "fashion-mnist"
CLASSES = 10


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip'd or not): 2 zero bytes, a type code (0x08 = uint8), the number of
    dimensions, each dimension as a big-endian uint32, then the data."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an IDX file of uint8 (header {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} bytes of data for dimensions {dims}")
    return data.reshape(dims)


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """('train' | 't10k') -> uint8 images (N, 28, 28), int64 labels (N,)."""
    x = read_idx(DATA / f"{split}-images-idx3-ubyte.gz")
    y = read_idx(DATA / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
    if len(x) != len(y):
        raise ValueError(f"{split}: {len(x)} images but {len(y)} labels")
    return np.ascontiguousarray(x), y


def iid_shards(labels: np.ndarray, clients: int, seed: int) -> list[np.ndarray]:
    """A seeded shuffle cut into `clients` disjoint shards of (nearly) equal size."""
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, clients)]


def dirichlet_shards(
    labels: np.ndarray, clients: int, seed: int, alpha: float = 0.5, min_size: int = 64
) -> list[np.ndarray]:
    """Label skew: for each class, the share each client gets is drawn from
    Dirichlet(alpha, ..., alpha), and the class's samples (in a seeded shuffle) are cut at
    those shares. Draws that leave a client under `min_size` samples (two batches of 32) are
    redrawn, so every client takes at least two steps per local epoch."""
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for c in range(CLASSES):
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).round().astype(int)
            for k, piece in enumerate(np.split(idx, cuts)):
                parts[k].append(piece)
        shards = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(s) for s in shards) >= min_size:
            return shards
    raise RuntimeError(f"no Dirichlet({alpha}) split with every client >= {min_size} samples")


def histogram(labels: np.ndarray) -> list[int]:
    return np.bincount(labels, minlength=CLASSES).tolist()
