"""Shared by finetune_torch.py and bench_torch.py: the MobileNetV2 of models/mobilenetv2.onnx
in eager PyTorch, the trainable-parameter selection (DESIGN.md §3) and the Fashion-MNIST data."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np

import cpu_meter
from cpu_meter import busy_seconds, foreign_share, own_cpu_seconds  # noqa: F401 (callers use common.*)
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent
sys.path.insert(0, str(MODELS))

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def mobilenetv2_torchvision() -> nn.Module:
    """torchvision MobileNetV2 + ImageNet weights + the seeded 10-way classifier, exactly as
    models/make_models.py builds it (BatchNorm kept as modules), in eval mode."""
    import make_models  # noqa: E402  (sets torch threads to 2 and deterministic algorithms)
    torch.use_deterministic_algorithms(False)
    return make_models.mobilenetv2_pretrained().eval()


def fold_bn(module: nn.Module) -> None:
    """Folds every eval-mode BatchNorm2d into the Conv2d right before it (same Sequential)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    for child in module.children():
        fold_bn(child)
    if isinstance(module, nn.Sequential):
        for k in range(len(module) - 1):
            if isinstance(module[k], nn.Conv2d) and isinstance(module[k + 1], nn.BatchNorm2d):
                module[k] = fuse_conv_bn_eval(module[k].eval(), module[k + 1].eval())
                module[k + 1] = nn.Identity()


def load_onnx_weights(model: nn.Module, onnx_path: Path) -> tuple[float, dict[str, str]]:
    """Copies the Conv/Gemm initializers of the (BN-folded) ONNX file into the folded model,
    matching Conv nodes to Conv2d modules in order, so both hold bit-identical weights.
    Returns the largest |difference| between PyTorch's own folding and the file's, and the map
    torch parameter name -> ONNX initializer name."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(onnx_path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    nodes = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm")]
    mods = [(n, x) for n, x in model.named_modules() if isinstance(x, (nn.Conv2d, nn.Linear))]
    assert len(nodes) == len(mods), (len(nodes), len(mods))
    worst, names = 0.0, {}
    with torch.no_grad():
        for node, (mod_name, mod) in zip(nodes, mods):
            for k, pn in ((1, "weight"), (2, "bias")):
                p = getattr(mod, pn)
                names[f"{mod_name}.{pn}"] = node.input[k]
                v = torch.from_numpy(inits[node.input[k]].copy())
                assert v.shape == p.shape, (node.name, v.shape, p.shape)
                worst = max(worst, float((v - p).abs().max()))
                p.copy_(v)
    return worst, names


def mobilenetv2_folded() -> tuple[nn.Module, float, dict[str, str]]:
    """The function of models/mobilenetv2.onnx: BN folded, the file's weights, eval mode (so
    the classifier's Dropout is off, as in the exported graph). Also returns the fold
    difference and the torch -> ONNX parameter names (see load_onnx_weights)."""
    model = mobilenetv2_torchvision()
    fold_bn(model)
    diff, names = load_onnx_weights(model, MODELS / "mobilenetv2.onnx")
    return model.eval(), diff, names


def select_trainable(model: nn.Module, layers: int | str) -> list[tuple[str, nn.Parameter]]:
    """DESIGN.md §3 on the torch module tree: the last `layers` Conv2d (in forward order) and
    every parameterized Conv2d/Linear after the first of them; BatchNorm never trains.
    Freezes everything else. Returns (name, parameter) pairs."""
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    n = len(convs) if layers == "all" else int(layers)
    first = convs[len(convs) - n]
    names = [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    chosen = names[names.index(first):]
    out = []
    for p in model.parameters():
        p.requires_grad_(False)
    for mod_name, m in model.named_modules():
        if mod_name in chosen:
            for pn, p in m.named_parameters(recurse=False):
                p.requires_grad_(True)
                out.append((f"{mod_name}.{pn}", p))
    return out


def read_idx_gz(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def preprocess(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W) grayscale -> (N, 3, size, size) float32 as `actc train` reads images:
    replicated to 3 channels, bilinear resize (align_corners=False), /255, ImageNet mean/std.
    Every op is per sample, so a subset gives the same values."""
    x = torch.from_numpy(images.astype(np.float32))[:, None].expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def fashion_mnist(split: str, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, size, size) float32 (see preprocess) and (N,) int64."""
    d = MODELS / "data" / "fashion-mnist"
    prefix = "train" if split == "train" else "t10k"
    x = read_idx_gz(d / f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx_gz(d / f"{prefix}-labels-idx1-ubyte.gz")
    return preprocess(x, size), torch.from_numpy(y.astype(np.int64))


def npz_images(path: Path, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """An `.npz` of uint8 grayscale images `x` ((N, H, W) or (N, 1, H, W)) and labels `y`, as
    `actc train --data` reads it."""
    d = np.load(path)
    x = d["x"]
    return preprocess(x.reshape(len(x), *x.shape[-2:]), size), torch.from_numpy(d["y"].astype(np.int64))


def machine() -> dict:
    import torchvision
    return cpu_meter.machine(torch=torch.__version__, torchvision=torchvision.__version__,
                             numpy=np.__version__)
