#!/usr/bin/env python3
"""Golden gradients for actc: one SGD step of the last N layers of each bundled model, in
float32, computed by PyTorch autograd through an ONNX -> PyTorch evaluator (onnx_torch.py).

Run from the repository root (about 10 s on 1 thread):

    .venv/bin/python models/golden/make_golden.py            # verify evaluator, write *.npz
    .venv/bin/python models/golden/make_golden.py --only tiny_cnn tiny_mlp
    .venv/bin/python models/golden/make_golden.py --verify-only
    ACTC=target/release/actc .venv/bin/python models/golden/make_golden.py --only tiny_cnn_lowrank
    .venv/bin/python models/golden/make_golden.py --only tiny_multi_output_mse

With ACTC set to an actc binary, it also checks that `actc decompose --energy 1
--even-if-larger` gives each model's function (onnxruntime on both, relative L2 difference
<= 1e-4; written to index.json `lowrank_energy1`), and that the export of a LoRA-trained
tiny_mlp runs in onnxruntime as the evaluator runs it (`lora_export`).

Steps:
1. the evaluator is checked against onnxruntime on every bundled model (every graph output,
   max |diff| <= 1e-5; the script stops otherwise);
2. for each case `{model}__layers_{N}`: select the trainable initializers exactly as DESIGN.md
   §3 (see `trainable_names`), run forward, loss = F.cross_entropy(logits, labels) (mean), where
   logits is the output `logits`, or the input of the final Softmax when `logits` is one;
   loss.backward(); one torch.optim.SGD(lr=0.1) step (no momentum, no weight decay);
3. the same gradients are recomputed in float64 and in float32 with the batch reversed (a
   different summation order) to measure how far two correct float32 implementations can be
   apart; the observed differences go to index.json (and README.md);
   Regression cases (`MSE_CASES`, `actc compile --train-output a,b --loss mse
   --loss-weights ...`): loss = sum over the trained outputs of weight * F.mse_loss(output,
   target) (each a mean), the targets seeded normal values; the .npz holds them as
   `targets`, one row per sample with the outputs' values back to back (what actc feeds);
4. each case is written as a DEFLATE-compressed, byte-reproducible .npz (fixed zip
   timestamps).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import tempfile
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent
sys.path.insert(0, str(HERE))
from onnx_torch import OnnxTorch  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

LR = 0.1
BATCH = 2
NUM_CLASSES = 10
ORT_TOL = 1e-5

# Golden cases: model -> (input shape without batch, layer counts)
CASES = {
    "mobilenetv2": ((3, 32, 32), [1, 4, "all"]),
    "resnet18": ((3, 32, 32), [1, 4, "all"]),
    "mcunet": ((3, 32, 32), [1, 4, "all"]),
    "tiny_cnn": ((3, 16, 16), [1, 4, "all"]),
    "tiny_mlp": ((64,), [1, 2, "all"]),
    "tiny_matmul": ((64,), [1, 2, "all"]),
    "tiny_layernorm": ((8, 16), [1, 2, "all"]),
    "tiny_layernorm_decomposed": ((8, 16), [1, 2, "all"]),
    "tiny_gelu": ((8, 16), [1, 2, "all"]),
    "tiny_gelu_erf": ((8, 16), [1, 2, "all"]),
    "tiny_vit": ((3, 16, 16), [1, 4, "all"]),
    "tiny_vit_decomposed": ((3, 16, 16), [1, 4, "all"]),
    # Text encoders: (sequence length,); three int64 inputs, fed to actc packed (see
    # `text_feeds`).
    "tiny_bert": ((16,), [1, 4, "all"]),
    "tiny_bert_decomposed": ((16,), [1, 4, "all"]),
    "tiny_decoder": ((3, 16, 16), [1, 4, "all"]),
    # Decomposed by `actc decompose` (models/README.md): a layer's factors count as one layer.
    "tiny_cnn_lowrank": ((3, 16, 16), [1, 4, "all"]),
    "tiny_mlp_lowrank": ((64,), [1, 2, "all"]),
}
# Regression cases: name -> (model, input shape without batch, layer counts, the outputs the
# MSE sums, their weights).
MSE_CASES = {
    "tiny_multi_output_mse": ("tiny_multi_output", (3, 16, 16), [1, "all"],
                              ["logits", "embedding"], [1.0, 0.5]),
    # landmarks is (batch, 5, 2): actc reshapes it to rows before the concatenation.
    "tiny_landmarks_mse": ("tiny_landmarks", (3, 16, 16), [1, "all"],
                           ["landmarks", "presence"], [1.0, 2.0]),
}
# Models that are the same function with the same weights as another one, written with other
# ops: their trainable tensors must be the same ones (compared by value, as the exporter
# names some differently), and their gradients are compared too (index.json `same_as`).
SAME_AS = {"tiny_layernorm_decomposed": "tiny_layernorm", "tiny_gelu_erf": "tiny_gelu",
           "tiny_vit_decomposed": "tiny_vit", "tiny_bert_decomposed": "tiny_bert"}
# Every bundled model, for the onnxruntime check.
ALL_MODELS = ["mobilenetv2", "mobilenetv2_bn", "resnet18", "mcunet", "tiny_mlp", "tiny_matmul",
              "tiny_cnn", "tiny_constants", "tiny_multi_output", "tiny_landmarks",
              "tiny_unsupported",
              "tiny_layernorm", "tiny_layernorm_decomposed", "tiny_cnn_lowrank",
              "tiny_mlp_lowrank", "tiny_gelu", "tiny_gelu_erf", "tiny_vit", "tiny_vit_decomposed",
              "tiny_bert", "tiny_bert_decomposed", "tiny_decoder"]
# `actc decompose --energy 1 --even-if-larger` must give the model's function (onnxruntime on
# both, at the model's declared input shape). Run when ACTC names an actc binary.
LOWRANK_ENERGY1 = ["tiny_cnn", "tiny_mlp", "tiny_matmul", "mcunet", "mobilenetv2", "resnet18"]
LOWRANK_TOL = 1e-4
# Size budget: `updated/` tensors are stored only for cases with at most this many trainable
# values (all but mobilenetv2 layers 4/all and resnet18 layers all); the others hold grads
# only (updated = w - 0.1*grad, with w from the .onnx).
MAX_UPDATED_VALUES = 600_000


# ------------------------------------------------------------------ onnxruntime check

def default_shape(m: onnx.ModelProto):
    return [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim[1:]]


def is_text(model: onnx.ModelProto):
    """A text encoder: integer token inputs (input_ids, attention_mask, token_type_ids)."""
    return model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64


TEXT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def text_feeds(batch, seq, seed):
    """Token ids (padding 0 past each sample's length), the attention mask and token types
    (0 for the first half of the tokens, 1 after), int64 [batch, seq]."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 100, (batch, seq))
    lengths = rng.integers(seq // 2, seq + 1, batch)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    types = (np.arange(seq)[None, :] >= (lengths // 2)[:, None]).astype(np.int64) * mask
    return dict(zip(TEXT_INPUTS, (ids * mask, mask, types)))


def packed(feeds):
    """The rows actc feeds a model with several inputs: each sample's values of every input
    in turn, as float32."""
    return np.concatenate([feeds[n].reshape(len(feeds[n]), -1) for n in TEXT_INPUTS],
                          axis=1).astype(np.float32)


def verify_against_ort(name):
    """Every graph output must agree within ORT_TOL; every intermediate float tensor is
    compared too (reported as max |diff| / max(1, max |ort|) over all of them)."""
    import onnxruntime as ort
    path = MODELS / f"{name}.onnx"
    ev = OnnxTorch(path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    free = onnx.load(str(path))  # the conv nets fix H, W: free them so other sizes run too
    dims = free.graph.input[0].type.tensor_type.shape.dim
    for d in dims[2:] if len(dims) == 4 else []:
        d.Clear()
        d.dim_param = "hw"
    outs = [o.name for o in free.graph.output]
    inferred = onnx.shape_inference.infer_shapes(free)
    inter = [v for v in inferred.graph.value_info
             if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and v.name not in outs]
    free.graph.output.extend(inter)
    inter = [v.name for v in inter]
    sess = ort.InferenceSession(free.SerializeToString(), so, providers=["CPUExecutionProvider"])
    text = is_text(ev.model)
    shapes = [[BATCH, 16], [BATCH, 11]] if text else [[BATCH] + default_shape(ev.model)]
    if name in CASES and [BATCH] + list(CASES[name][0]) not in shapes:
        shapes.append([BATCH] + list(CASES[name][0]))
    report = []
    for shape in shapes:
        if text:
            feeds = text_feeds(shape[0], shape[1], 123)
        else:
            feeds = {"input": np.random.default_rng(123).standard_normal(shape, dtype=np.float32)}
        got = dict(zip(outs + inter, sess.run(outs + inter, feeds)))
        with torch.no_grad():
            env = ev.run({k: torch.from_numpy(v) for k, v in feeds.items()})
        worst = max(float(np.abs(env[o].numpy() - got[o]).max()) for o in outs)
        scale = max(float(np.abs(got[o]).max()) for o in outs)
        inter_rel = max([float(np.abs(env[t].numpy() - got[t]).max()) / max(1.0, float(np.abs(got[t]).max()))
                         for t in inter] or [0.0])
        report.append({"shape": shape, "max_abs_diff": worst, "max_abs_output": scale,
                       "intermediates": len(inter), "intermediate_max_scaled_diff": inter_rel})
        status = "ok" if worst <= ORT_TOL else "FAIL"
        print(f"  {name:25s} {str(shape):18s} {outs}: max|torch-ort| {worst:.2e} "
              f"(max|out| {scale:.2f}); {len(inter)} intermediates: max scaled diff "
              f"{inter_rel:.1e}  {status}")
        if worst > ORT_TOL:
            sys.exit(f"evaluator disagrees with onnxruntime on {name} at {shape}")
    return report


def verify_lowrank_energy1(actc):
    """`actc decompose --energy 1 --even-if-larger` of each model in LOWRANK_ENERGY1, and the
    original, both run by onnxruntime on the same input: relative L2 difference of the output."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    report = {}
    for name in LOWRANK_ENERGY1:
        src = MODELS / f"{name}.onnx"
        shape = default_shape(onnx.load(str(src)))
        x = np.random.default_rng(123).standard_normal([BATCH, *shape], dtype=np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"{name}_full.onnx"
            subprocess.run([actc, "decompose", str(src), "-o", str(out), "--energy", "1",
                            "--even-if-larger", "--input-shape", "x".join(map(str, [BATCH, *shape]))],
                           check=True, capture_output=True)
            factors = sum(1 for n in onnx.load(str(out)).graph.node if "/lowrank" in n.name)
            ys = []
            for path in (src, out):
                sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                ys.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
        rel = float(np.linalg.norm(ys[1] - ys[0]) / np.linalg.norm(ys[0]))
        status = "ok" if rel <= LOWRANK_TOL else "FAIL"
        print(f"  {name:12s} {factors:3d} factor nodes: relative difference {rel:.2e}  {status}")
        if rel > LOWRANK_TOL:
            sys.exit(f"the energy-1 decomposition of {name} is not the model's function")
        report[name] = {"factor_nodes": factors, "relative_difference": rel}
    return report


def verify_lora_export(actc):
    """`compile --lora 2`, one epoch on the bundled digits, `export`: onnxruntime runs the
    merged model (the original graph, adapters folded into the weights), and it agrees with
    this script's evaluator on it."""
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        plan, out = Path(tmp) / "m.actc", Path(tmp) / "m.onnx"
        for args in (["compile", str(MODELS / "tiny_mlp.onnx"), "--layers", "all", "--lora", "2",
                      "--batch", "32", "-o", str(plan)],
                     ["train", str(plan), "--data", str(MODELS / "data" / "digits.npz"),
                      "--scale", "0.0625", "--epochs", "1", "-q"],
                     ["export", str(plan), "--weights", str(Path(tmp) / "m.best.actc"), "-o", str(out)]):
            subprocess.run([actc, *args], check=True, capture_output=True)
        model = onnx.load(str(out))
        x = np.random.default_rng(123).standard_normal((32, 64), dtype=np.float32)
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        with torch.no_grad():
            want = OnnxTorch(out).run({"input": torch.from_numpy(x)})["logits"].numpy()
    diff = float(np.abs(got - want).max())
    ops = sorted({n.op_type for n in model.graph.node})
    print(f"  tiny_mlp --lora 2: export of {len(model.graph.node)} nodes {ops}, "
          f"onnxruntime vs evaluator max |diff| {diff:.2e}  {'ok' if diff <= ORT_TOL else 'FAIL'}")
    if diff > ORT_TOL:
        sys.exit("the merged LoRA export does not run as the evaluator runs it")
    return {"nodes": len(model.graph.node), "max_abs_diff": diff}


def op_selftest():
    """Single-node models for the attribute combinations the bundled models do not use,
    each checked against onnxruntime."""
    import onnxruntime as ort
    from onnx import TensorProto as TP, helper as h
    rng = np.random.default_rng(7)
    x4 = rng.standard_normal((2, 3, 7, 9), dtype=np.float32)
    x2 = rng.standard_normal((4, 5), dtype=np.float32)
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    f32 = lambda *v: np.array(v, dtype=np.float32)  # noqa: E731
    w = rng.standard_normal((6, 1, 3, 2), dtype=np.float32)
    ln_rng = np.random.default_rng(8)  # its own generator: the cases above keep their data
    ln_s = ln_rng.uniform(0.5, 1.5, 3 * 7 * 9).astype(np.float32)
    ln_b = ln_rng.standard_normal(3 * 7 * 9, dtype=np.float32)
    dec_rng = np.random.default_rng(9)  # the decoder ops' own data, likewise
    wt = lambda *shape: dec_rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
    none = np.zeros(0, dtype=np.float32)  # an absent roi or scales
    decoder_cases = [
        ("ConvTranspose asym pads, output_padding, dilation", "ConvTranspose", [x4, wt(3, 4, 3, 2), wt(4)], dict(strides=[2, 1], pads=[1, 0, 1, 2], output_padding=[1, 0], dilations=[1, 2]), 13),
        ("ConvTranspose group 3, output_padding", "ConvTranspose", [x4, wt(3, 2, 3, 3)], dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1], group=3), 13),
        ("ConvTranspose output_shape", "ConvTranspose", [x4, wt(3, 2, 3, 3), wt(2)], dict(strides=[2, 2], output_shape=[14, 18]), 13),
        ("ConvTranspose auto_pad SAME_UPPER", "ConvTranspose", [x4, wt(3, 2, 3, 3)], dict(strides=[2, 2], auto_pad="SAME_UPPER"), 13),
        ("ConvTranspose auto_pad SAME_LOWER", "ConvTranspose", [x4, wt(3, 2, 3, 3)], dict(strides=[2, 2], auto_pad="SAME_LOWER"), 13),
        ("Resize nearest asymmetric floor x2", "Resize", [x4, none, f32(1, 1, 2, 2)], dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), 13),
        ("Resize nearest half_pixel round_prefer_floor", "Resize", [x4, none, f32(1, 1, 1.5, 0.5)], dict(mode="nearest"), 13),
        ("Resize nearest align_corners round_prefer_ceil sizes", "Resize", [x4, none, none, i64(2, 3, 4, 13)], dict(mode="nearest", coordinate_transformation_mode="align_corners", nearest_mode="round_prefer_ceil"), 13),
        ("Resize nearest tf_half_pixel_for_nn ceil", "Resize", [x4, none, f32(1, 1, 2.5, 1.7)], dict(mode="nearest", coordinate_transformation_mode="tf_half_pixel_for_nn", nearest_mode="ceil"), 11),
        ("Resize nearest pytorch_half_pixel to 1 row", "Resize", [x4, none, none, i64(2, 3, 1, 5)], dict(mode="nearest", coordinate_transformation_mode="pytorch_half_pixel", nearest_mode="floor"), 13),
        ("Resize linear half_pixel x2", "Resize", [x4, none, f32(1, 1, 2, 2)], dict(mode="linear"), 13),
        ("Resize linear pytorch_half_pixel 1.5, 0.75", "Resize", [x4, none, f32(1, 1, 1.5, 0.75)], dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"), 13),
        ("Resize linear half_pixel sizes", "Resize", [x4, none, none, i64(2, 3, 5, 12)], dict(mode="linear"), 13),
        ("Resize linear align_corners sizes", "Resize", [x4, none, none, i64(2, 3, 10, 4)], dict(mode="linear", coordinate_transformation_mode="align_corners"), 13),
        ("Resize linear asymmetric", "Resize", [x4, none, f32(1, 1, 0.6, 1.4)], dict(mode="linear", coordinate_transformation_mode="asymmetric"), 13),
        ("Resize linear pytorch_half_pixel to 1 row", "Resize", [x4, none, none, i64(2, 3, 1, 9)], dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"), 13),
        ("Resize opset 10 nearest", "Resize", [x4, f32(1, 1, 2, 3)], dict(mode="nearest"), 10),
        ("Resize opset 10 linear", "Resize", [x4, f32(1, 1, 2, 1.5)], dict(mode="linear"), 10),
        ("Upsample opset 9 nearest", "Upsample", [x4, f32(1, 1, 2, 2)], dict(mode="nearest"), 9),
        ("Upsample opset 7 linear", "Upsample", [x4], dict(mode="linear", scales=[1.0, 1.0, 2.0, 1.5]), 7),
    ]
    cases = [  # (label, op, inputs (the first is the data input), attrs, opset[, outputs])
        ("Conv asym pads, group 3, dilation", "Conv", [x4, w], dict(pads=[0, 1, 2, 1], group=3, dilations=[2, 1], strides=[1, 2]), 13),
        ("AveragePool ceil, count_include_pad", "AveragePool", [x4], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1), 19),
        ("AveragePool ceil, exclude pad", "AveragePool", [x4], dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1), 19),
        ("AveragePool asym pads", "AveragePool", [x4], dict(kernel_shape=[3, 3], pads=[0, 1, 2, 0], strides=[2, 1]), 13),
        ("AveragePool asym pads incl", "AveragePool", [x4], dict(kernel_shape=[3, 3], pads=[0, 1, 2, 0], count_include_pad=1), 13),
        ("MaxPool asym pads, dilation, ceil", "MaxPool", [x4], dict(kernel_shape=[2, 3], pads=[1, 0, 0, 1], strides=[2, 2], dilations=[1, 2]), 13),
        ("MaxPool ceil", "MaxPool", [x4], dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), 13),
        ("Gemm transA alpha beta", "Gemm", [x2, rng.standard_normal((4, 3), dtype=np.float32), f32(1, 2, 3)], dict(transA=1, alpha=0.5, beta=2.0), 13),
        ("Gemm transB C 2-D", "Gemm", [x2, rng.standard_normal((3, 5), dtype=np.float32), rng.standard_normal((4, 3), dtype=np.float32)], dict(transB=1), 13),
        ("Clip attrs (opset 6)", "Clip", [x4], dict(min=-0.5, max=0.7), 6),
        ("Clip min only", "Clip", [x4, f32(0.1).reshape(())], {}, 13),
        ("Softmax opset 11 axis 1", "Softmax", [x4], dict(axis=1), 11),
        ("Softmax axis 2", "Softmax", [x4], dict(axis=2), 13),
        ("LeakyRelu default", "LeakyRelu", [x4], {}, 13),
        ("HardSigmoid default", "HardSigmoid", [x4 * 4], {}, 13),
        ("HardSwish", "HardSwish", [x4 * 4], {}, 14),
        ("PRelu scalar slope", "PRelu", [x4, f32(0.3)], {}, 13),
        ("Flatten axis 2", "Flatten", [x4], dict(axis=2), 13),
        ("Flatten axis 0", "Flatten", [x4], dict(axis=0), 13),
        ("Reshape 0 and -1", "Reshape", [x4, i64(0, -1, 9)], {}, 13),
        ("Reshape allowzero", "Reshape", [x4, i64(2, 3, 63)], dict(allowzero=1), 14),
        ("Transpose default", "Transpose", [x4], {}, 13),
        ("Squeeze axes input", "Squeeze", [x4[:, :1], i64(1)], {}, 13),
        ("Squeeze axes attr", "Squeeze", [x4[:, :1], ], dict(axes=[1]), 11),
        ("Unsqueeze axes input", "Unsqueeze", [x2, i64(0, -1)], {}, 13),
        ("Unsqueeze axes attr", "Unsqueeze", [x2], dict(axes=[1]), 11),
        ("ReduceMean axes attr keepdims 0", "ReduceMean", [x4], dict(axes=[1, 3], keepdims=0), 13),
        ("ReduceMean axes input", "ReduceMean", [x4, i64(-1, -2)], dict(keepdims=1), 18),
        ("ReduceMean all", "ReduceMean", [x4], {}, 13),
        ("Pad constant value", "Pad", [x4, i64(0, 0, 1, 2, 0, 0, 2, 0), f32(1.5).reshape(())], {}, 13),
        ("Pad reflect", "Pad", [x4, i64(0, 0, 1, 2, 0, 0, 2, 1)], dict(mode="reflect"), 13),
        ("Pad edge, negative", "Pad", [x4, i64(0, 0, 1, -2, 0, 0, 2, 1)], dict(mode="edge"), 13),
        ("Pad axes input", "Pad", [x4, i64(1, 2, 3, 0), f32(0.0).reshape(()), i64(-1, 2)], {}, 18),
        ("Pad attrs (opset 2)", "Pad", [x4], dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], value=2.0), 2),
        ("Slice negative step", "Slice", [x4, i64(-1, 5), i64(-100, 1), i64(3, 2), i64(-2, -1)], {}, 13),
        ("Slice big ends", "Slice", [x4, i64(1), i64(2**62)], {}, 13),
        ("Slice attrs (opset 1)", "Slice", [x4], dict(starts=[1, 0], ends=[3, -1], axes=[2, 3]), 1),
        ("Gather axis 1 negative", "Gather", [x4, i64(-1, 0)], dict(axis=1), 13),
        ("Div", "Div", [x4, x4 + 5], {}, 13), ("Sub broadcast", "Sub", [x4, x4[0, 0, 0]], {}, 13),
        ("Sin", "Sin", [x4], {}, 13), ("MatMul batched", "MatMul", [x4, x4.transpose(0, 1, 3, 2)], {}, 13),
        ("Shape start/end", "Shape", [x4], dict(start=1, end=-1), 15),
        ("ConstantOfShape", "ConstantOfShape", [i64(2, 3)], dict(value=h.make_tensor("v", TP.FLOAT, [1], [0.25])), 13),
        ("Cast to int64", "Cast", [x4 * 3], dict(to=TP.INT64), 13),
        ("GlobalAveragePool", "GlobalAveragePool", [x4], {}, 13),
        ("BatchNormalization", "BatchNormalization", [x4, f32(1, 2, 3), f32(0, 1, 0), f32(.1, .2, .3), f32(1, 2, .5)], dict(epsilon=1e-3), 15),
        ("LayerNormalization default axis", "LayerNormalization", [x4 + 3, ln_s[-9:], ln_b[-9:]], {}, 17),
        ("LayerNormalization axis 1, no bias, 3 outputs", "LayerNormalization", [x4, ln_s.reshape(3, 7, 9)], dict(axis=1, epsilon=1e-3), 17, 3),
        ("LayerNormalization axis -2, 3 outputs", "LayerNormalization", [x4, ln_s[:63].reshape(7, 9), ln_b[:63].reshape(7, 9)], dict(axis=-2), 17, 3),
        ("LayerNormalization axis 0", "LayerNormalization", [x4, ln_s.reshape(1, 3, 7, 9).repeat(2, 0), ln_b.reshape(1, 3, 7, 9).repeat(2, 0)], dict(axis=0), 17),
        ("Pow 2", "Pow", [x4, f32(2.0).reshape(())], {}, 13), ("Pow 0.5", "Pow", [np.abs(x4), f32(0.5)], {}, 13),
        ("Pow int64 exponent", "Pow", [x4, i64(3)], {}, 13), ("Sqrt", "Sqrt", [np.abs(x4)], {}, 13),
        ("ReduceMean negative axes attr", "ReduceMean", [x4], dict(axes=[-2, -1]), 13),
    ] + decoder_cases
    worst_all = 0.0
    for label, op, arrays, attrs, opset, *n_out in cases:
        names = [f"in{i}" for i in range(len(arrays))]
        outs = ["out"] + [f"out{i}" for i in range(1, n_out[0] if n_out else 1)]
        node = h.make_node(op, names, outs, **attrs)
        ins = [h.make_tensor_value_info(names[0], h.np_dtype_to_tensor_dtype(arrays[0].dtype), arrays[0].shape)]
        inits = [onnx.numpy_helper.from_array(a, n) for n, a in zip(names[1:], arrays[1:])]
        graph = h.make_graph([node], "t", ins, [h.make_empty_tensor_value_info(o) for o in outs], inits)
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
        model.ir_version = 7 if opset < 15 else 8 if opset < 18 else 9
        try:
            so = ort.SessionOptions()
            so.log_severity_level = 3  # opset-1 models make the transpose optimizer warn
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            refs = sess.run(outs, {names[0]: arrays[0]})
            env = OnnxTorch(model).run({names[0]: torch.from_numpy(arrays[0])})
        except Exception as e:
            sys.exit(f"op self-test '{label}': {type(e).__name__}: {e}")
        for o, ref in zip(outs, refs):
            got = env[o].numpy()
            assert got.shape == ref.shape and got.dtype == ref.dtype, (label, o, got.shape, ref.shape, got.dtype, ref.dtype)
            d = float(np.abs(got.astype(np.float64) - ref).max()) if ref.size else 0.0
            worst_all = max(worst_all, d)
            if d > ORT_TOL:
                sys.exit(f"op self-test '{label}' ({o}): max |diff| {d:.2e}")
    print(f"  op self-test: {len(cases)} single-node models, max |torch-ort| {worst_all:.2e}")
    return {"cases": len(cases), "max_abs_diff": worst_all}


# ------------------------------------------------------------------ what trains (DESIGN §3)

PARAM_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,),
                "PRelu": (1,), "LayerNormalization": (1, 2)}


def decomposed_layernorms(model, consts):
    """LayerNorms written as exporters write them before opset 17 (torch's legacy exporter at
    opset < 17):

        m = ReduceMean(x, axes); d = Sub(x, m); v = ReduceMean(Pow(d, 2), axes)
        y = Add(Mul(Div(d, Sqrt(Add(v, eps))), scale), bias)

    with eps and 2 constants (initializers or Constant nodes), scale and bias float
    initializers (in `consts`), the same axes in both ReduceMeans, and those the last ones of
    x (axes [-k, ..., -1], or the same as non-negative indices: a LayerNormalization with
    axis -k), and every intermediate result used only by the next node(s) of the chain (d by
    Pow and Div). actc's compiler rewrites this pattern into one LayerNormalization node
    before it selects what trains, so the Mul's scale and the Add's bias are that node's
    parameters. Returns {node index: parameter input positions} for the Mul (scale) and the
    Add (bias) of each pattern."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    nodes = list(graph.node)
    prod = {o: i for i, n in enumerate(nodes) for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in [*graph.input, *graph.value_info, *graph.output]
             if v.type.tensor_type.HasField("shape")}
    uses = {}  # consumers of each tensor, graph outputs included
    for t in [i for n in nodes for i in n.input] + [o.name for o in graph.output]:
        uses[t] = uses.get(t, 0) + 1

    def node(t, op):
        """The node producing t, if it is `op`."""
        i = prod.get(t)
        return nodes[i] if i is not None and nodes[i].op_type == op else None

    def other(n, t):
        """The input of the two-input node n that is not t."""
        return n.input[1] if n.input[0] == t else n.input[0]

    def axes(n):
        """ReduceMean's axes attribute as negative indices, if they are the last ones of its
        input, else None (also for axes as an input, opset 18, which the exporters that
        write this pattern do not write)."""
        ax = next((list(a.ints) for a in n.attribute if a.name == "axes"), None)
        rank = ranks.get(n.input[0])
        if len(n.input) != 1 or not ax or (rank is None and max(ax) >= 0):
            return None
        ax = sorted(a - rank if a >= 0 else a for a in ax)
        return ax if ax == list(range(-len(ax), 0)) else None

    def used_once(*ns):
        return all(uses.get(n.output[0], 0) == 1 for n in ns)

    def const_value(t):
        """The value of a one-element constant (initializer or Constant node), else None."""
        i = prod.get(t)
        if t in inits:
            a = onnx.numpy_helper.to_array(inits[t])
        elif i is not None and nodes[i].op_type == "Constant" and nodes[i].attribute[0].name == "value":
            a = onnx.numpy_helper.to_array(nodes[i].attribute[0].t)
        else:
            return None
        return float(a.reshape(-1)[0]) if a.size == 1 else None

    found = {}
    for k, mul in enumerate(nodes):
        if mul.op_type != "Mul":
            continue
        div = next((d for t in mul.input if (d := node(t, "Div"))), None)
        if div is None or not used_once(div, mul):
            continue
        scale = other(mul, div.output[0])
        adds = [j for j, n in enumerate(nodes) if n.op_type == "Add" and mul.output[0] in n.input]
        if scale not in consts or len(adds) != 1:
            continue
        bias = other(nodes[adds[0]], mul.output[0])
        sub, sqrt = node(div.input[0], "Sub"), node(div.input[1], "Sqrt")
        add_eps = sqrt and node(sqrt.input[0], "Add")
        var = add_eps and next((v for t in add_eps.input if (v := node(t, "ReduceMean"))), None)
        pow_ = var and node(var.input[0], "Pow")
        mean = sub and node(sub.input[1], "ReduceMean")
        if not (bias in consts and var and pow_ and mean
                and const_value(other(add_eps, var.output[0])) is not None
                and pow_.input[0] == sub.output[0] and const_value(pow_.input[1]) == 2.0
                and mean.input[0] == sub.input[0] and axes(mean) is not None
                and axes(mean) == axes(var) and uses[sub.output[0]] == 2
                and used_once(mean, pow_, var, add_eps, sqrt)):
            continue
        found[k] = (list(mul.input).index(scale),)
        found[adds[0]] = (list(nodes[adds[0]].input).index(bias),)
    return found


def needed_nodes(ev, output):
    """Indices (file order) of the nodes the output depends on."""
    producer = {o: i for i, n in enumerate(ev.graph.node) for o in n.output}
    seen, stack = set(), [output]
    while stack:
        i = producer.get(stack.pop())
        if i is not None and i not in seen:
            seen.add(i)
            stack.extend(t for t in ev.graph.node[i].input if t)
    return sorted(seen)


def matmul_biases(ev, nodes, consts):
    """Add nodes that add a constant vector (one value per output feature) to the output of a
    MatMul with a constant weight: nn.Linear on N-D input, exported as MatMul + Add. The
    vector is the layer's bias and trains; and Mul nodes that scale such a layer's output
    (after its bias) by a constant vector: LayerScale (DINOv2), whose vector trains too
    (node index -> its input position)."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}

    def linear_width(t):
        """The output features of the linear layer computing `t` (None: no such layer)."""
        p = producer.get(t)
        if p is None or nodes[p].op_type not in ("MatMul", "Gemm") or nodes[p].input[1] not in consts:
            return None
        w = ev.inits[nodes[p].input[1]].shape
        trans_b = any(a.name == "transB" and a.i for a in nodes[p].attribute)
        return w[0] if trans_b else w[-1]

    def vector_of(b, width):
        shape = tuple(ev.inits[b].shape)
        return len(shape) >= 1 and shape[-1] == width and all(d == 1 for d in shape[:-1])

    out = {}
    for op in ("Add", "Mul"):  # the scales read the biases' Adds: those first
        for i, n in enumerate(nodes):
            if n.op_type != op:
                continue
            for k, other in ((1, 0), (0, 1)):
                b = n.input[k]
                width = linear_width(n.input[other])
                p = producer.get(n.input[other])
                if width is None and op == "Mul" and p in out and nodes[p].op_type == "Add":
                    q = nodes[p].input[1 - out[p][0]]
                    width = linear_width(q)
                if b in consts and width is not None and vector_of(b, width):
                    out[i] = (k,)
                    break
    return out


def trainable_names(ev, layers, outputs=("logits",)):
    """Initializer names trained by `--layers layers`, in node (file) order, weight before bias,
    the layers counted over what any of `outputs` needs.
    (Weights must be initializers: no golden case has weights in Constant nodes.)"""
    nodes = ev.graph.node
    consts = {name for name, t in ev.inits.items() if t.is_floating_point()}
    order = sorted({i for out in outputs for i in needed_nodes(ev, out)})
    layernorm_params = decomposed_layernorms(ev.model, consts)
    linear_biases = matmul_biases(ev, nodes, consts)

    def params(i):
        n = nodes[i]
        ks = layernorm_params.get(i, linear_biases.get(i, PARAM_INPUTS.get(n.op_type, ())))
        return [n.input[k] for k in ks if k < len(n.input) and n.input[k] in consts]

    # A decoder's ConvTranspose is a conv layer too.
    convs = [i for i in order if nodes[i].op_type in ("Conv", "ConvTranspose")]
    dense = [i for i in order if nodes[i].op_type in ("Gemm", "MatMul")
             and len(nodes[i].input) > 1 and nodes[i].input[1] in consts]
    # A transformer (a ViT's patch embedding is a Conv) has linear layers over tokens (rank-3
    # inputs) after its last conv: they are its layers.
    ranks = input_ranks(ev, order) if convs and dense else {}
    over_tokens = any(i > convs[-1] and ranks[i] >= 3 for i in dense) if convs else False
    layer_ix = dense if not convs or over_tokens else convs
    # The factors `actc decompose` made of one layer (`<layer>/lowrank<i>`, one after another)
    # are that one layer.
    def stem(i):
        m = re.fullmatch(r"(.*)/lowrank[0-9]+", nodes[i].name)
        return m.group(1) if m else None
    groups = []
    for i in layer_ix:
        if groups and stem(i) is not None and stem(i) == stem(groups[-1][-1]):
            groups[-1].append(i)
        else:
            groups.append([i])
    count = len(groups)
    n = count if layers == "all" else int(layers)
    assert 1 <= n <= count, (layers, count)
    first = groups[count - n][0]
    names = []
    for i in order:
        if i >= first:  # the last n layers and every parameterized node after the first
            for p in params(i):
                if p not in names:
                    names.append(p)
    return names, count


def input_ranks(ev, order):
    """Rank of each node's first input, from one run on a batch of the model's input shape."""
    shape = [BATCH] + [d.dim_value for d in ev.graph.input[0].type.tensor_type.shape.dim[1:]]
    with torch.no_grad():
        env = ev.run({"input": torch.zeros(shape)})
    return {i: env[ev.graph.node[i].input[0]].dim() for i in order if ev.graph.node[i].input}


def logits_name(ev):
    """`logits`, or the input of the final Softmax when `logits` is a softmax output."""
    prod = next(n for n in ev.graph.node if "logits" in n.output)
    return prod.input[0] if prod.op_type == "Softmax" else "logits"


# ------------------------------------------------------------------ one training step

def train_step(ev, names, x, y):
    """One SGD step; `x` is the input tensor, or a dict of them for several inputs."""
    params = {n: ev.inits[n].clone().requires_grad_(True) for n in names}
    env = ev.run(x if isinstance(x, dict) else {"input": x}, overrides=params)
    logits = env[logits_name(ev)]
    loss = F.cross_entropy(logits, y)
    loss.backward()
    grads = {n: params[n].grad.detach().clone() for n in names}
    opt = torch.optim.SGD(list(params.values()), lr=LR, momentum=0.0, weight_decay=0.0)
    opt.step()
    updated = {n: params[n].detach().clone() for n in names}
    return logits.detach(), loss.detach(), grads, updated


def train_step_mse(ev, names, x, targets, outputs, weights):
    """One SGD step on the weighted sum of each output's mean squared error."""
    params = {n: ev.inits[n].clone().requires_grad_(True) for n in names}
    env = ev.run({"input": x}, overrides=params)
    loss = sum(w * F.mse_loss(env[o], t) for o, t, w in zip(outputs, targets, weights))
    loss.backward()
    grads = {n: params[n].grad.detach().clone() for n in names}
    opt = torch.optim.SGD(list(params.values()), lr=LR, momentum=0.0, weight_decay=0.0)
    opt.step()
    updated = {n: params[n].detach().clone() for n in names}
    return loss.detach(), grads, updated


def compare_same_function(ev, names, other_model, layers, x, y, loss, grads):
    """`ev` computes the same function as `other_model` with other ops (SAME_AS): check that
    the two train the same tensors (pairwise equal values, in the same order), and measure
    how far their float32 loss and gradients are apart."""
    other = OnnxTorch(MODELS / f"{other_model}.onnx")
    other_names, _ = trainable_names(other, layers)
    assert len(other_names) == len(names), (names, other_names)
    for a, b in zip(names, other_names):
        assert torch.equal(ev.inits[a], other.inits[b]), f"{a} is not {other_model}'s {b}"
    _, other_loss, other_grads, _ = train_step(other, other_names, x, y)
    floor = NOISE * max(float(other_grads[b].abs().max()) for b in other_names)
    rel = max(diff_stats(grads[a], other_grads[b], floor)[1]
              for a, b in zip(names, other_names))
    print(f"    same function as {other_model}: same trainable tensors; loss diff "
          f"{abs(float(loss) - float(other_loss)):.1e}, max rel grad diff {rel:.1e}")
    return {"case": f"{other_model}__layers_{layers}",
            "trainable": other_names,
            "loss_abs_diff": abs(float(loss) - float(other_loss)),
            "max_rel_grad_diff": rel}


def case_input(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH,) + tuple(shape), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=BATCH).astype(np.int64)
    return x, y


# A gradient that is zero in exact arithmetic (a key's bias: softmax ignores a shift shared by
# all keys) is rounding noise: relative differences use at least this share of the case's
# largest gradient as the scale (tests/tests/it/parity.rs does the same).
NOISE = 1e-4


def diff_stats(a, b, floor=0.0):
    """max|a-b| and max|a-b| / max(max|b|, floor) (b the reference), and max|b|."""
    d = float((a.double() - b.double()).abs().max())
    s = float(b.double().abs().max())
    scale = max(s, floor)
    return d, (d / scale if scale > 0 else 0.0), s


def tensor_report(name, g, g64, grev, floor):
    """One gradient's record in index.json: its scale and how far the float64 and the
    batch-reversed float32 runs land from it."""
    d64, r64, s = diff_stats(g, g64, floor)
    drev, rrev, _ = diff_stats(g, grev, floor)
    return {"name": name, "shape": list(g.shape), "max_abs_grad": s,
            "f32_vs_f64_abs": d64, "f32_vs_f64_rel": r64,
            "f32_vs_f32rev_abs": drev, "f32_vs_f32rev_rel": rrev}


def write_npz(path, arrays):
    """np.savez_compressed, but with fixed zip timestamps so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)


def run_case(model, layers):
    shape, _ = CASES[model]
    name = f"{model}__layers_{layers}"
    path = MODELS / f"{model}.onnx"
    ev = OnnxTorch(path)
    names, count = trainable_names(ev, layers)
    if is_text(ev.model):
        feeds = text_feeds(BATCH, shape[0], 0)
        y = np.random.default_rng(1).integers(0, 4, size=BATCH).astype(np.int64)
        xt = {k: torch.from_numpy(v) for k, v in feeds.items()}
        x, x64, xrev = packed(feeds), xt, {k: v.flip(0) for k, v in xt.items()}
    else:
        x, y = case_input(shape)
        xt = torch.from_numpy(x)
        x64, xrev = xt.double(), xt.flip(0)
    yt = torch.from_numpy(y)
    logits, loss, grads, updated = train_step(ev, names, xt, yt)

    # Same step in float64, and in float32 with the batch reversed (other summation order).
    ev64 = OnnxTorch(path, torch.float64)
    _, loss64, grads64, _ = train_step(ev64, names, x64, yt)
    _, loss_rev, grads_rev, _ = train_step(ev, names, xrev, yt.flip(0))

    same_as = None
    if model in SAME_AS:
        same_as = compare_same_function(ev, names, SAME_AS[model], layers, xt, yt, loss, grads)

    n_values = sum(grads[n].numel() for n in names)
    store_updated = n_values <= MAX_UPDATED_VALUES
    compiled = [BATCH] + list(shape)  # the shape actc compiles (text: each input's)
    arrays = {"input": x, "labels": y, "input_shape": np.array(compiled, dtype=np.int64),
              "loss": loss.numpy().astype(np.float32), "logits": logits.numpy(),
              "trainable": np.array(names)}
    per_tensor = []
    floor = NOISE * max(float(grads[n].abs().max()) for n in names)
    for n in names:
        g = grads[n]
        arrays[f"grad/{n}"] = g.numpy()
        if store_updated:
            arrays[f"updated/{n}"] = updated[n].numpy()
        per_tensor.append(tensor_report(n, g, grads64[n], grads_rev[n], floor))
    out = HERE / f"{name}.npz"
    write_npz(out, arrays)
    info = {
        "file": out.name, "model": f"{model}.onnx", "layers": str(layers), "total_layers": count,
        "input_shape": compiled, "labels": y.tolist(), "loss": float(loss),
        "loss_f64": float(loss64), "loss_f32_batch_reversed": float(loss_rev),
        "logits_tensor": logits_name(ev), "trainable": names,
        "num_trainable_values": int(n_values),
        "updated_stored": store_updated, "bytes": out.stat().st_size,
        "max_rel_f32_vs_f64": max(t["f32_vs_f64_rel"] for t in per_tensor),
        "max_rel_f32_vs_f32rev": max(t["f32_vs_f32rev_rel"] for t in per_tensor),
        "tensors": per_tensor,
    }
    if same_as is not None:
        info["same_as"] = same_as
    print(f"  {name:26s} {len(names):3d} tensors {info['num_trainable_values']:8d} values  "
          f"loss {float(loss):.6f}  rel f32/f64 {info['max_rel_f32_vs_f64']:.1e}  "
          f"rel f32/f32rev {info['max_rel_f32_vs_f32rev']:.1e}  {out.stat().st_size} B")
    return name, info


def run_mse_case(case, layers):
    """A regression case of MSE_CASES: one step on several outputs' summed MSE."""
    model, shape, _, outputs, weights = MSE_CASES[case]
    name = f"{case}__layers_{layers}"
    path = MODELS / f"{model}.onnx"
    ev = OnnxTorch(path)
    names, count = trainable_names(ev, layers, outputs)
    x, _ = case_input(shape)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        env = ev.run({"input": xt})
    rng = np.random.default_rng(2)
    targets = [rng.standard_normal(tuple(env[o].shape), dtype=np.float32) for o in outputs]
    tt = [torch.from_numpy(t) for t in targets]
    loss, grads, updated = train_step_mse(ev, names, xt, tt, outputs, weights)
    ev64 = OnnxTorch(path, torch.float64)
    loss64, grads64, _ = train_step_mse(ev64, names, xt.double(), [t.double() for t in tt],
                                        outputs, weights)
    loss_rev, grads_rev, _ = train_step_mse(ev, names, xt.flip(0), [t.flip(0) for t in tt],
                                            outputs, weights)
    rows = np.concatenate([t.reshape(BATCH, -1) for t in targets], axis=1)
    compiled = [BATCH] + list(shape)
    arrays = {"input": x, "targets": rows, "input_shape": np.array(compiled, dtype=np.int64),
              "loss": loss.numpy().astype(np.float32), "trainable": np.array(names)}
    per_tensor = []
    floor = NOISE * max(float(grads[n].abs().max()) for n in names)
    for n in names:
        arrays[f"grad/{n}"] = grads[n].numpy()
        arrays[f"updated/{n}"] = updated[n].numpy()
        per_tensor.append(tensor_report(n, grads[n], grads64[n], grads_rev[n], floor))
    out = HERE / f"{name}.npz"
    write_npz(out, arrays)
    info = {
        "file": out.name, "model": f"{model}.onnx", "layers": str(layers), "total_layers": count,
        "input_shape": compiled, "loss_kind": "mse", "outputs": outputs,
        "loss_weights": weights, "loss": float(loss), "loss_f64": float(loss64),
        "loss_f32_batch_reversed": float(loss_rev), "trainable": names,
        "num_trainable_values": int(sum(grads[n].numel() for n in names)),
        "updated_stored": True, "bytes": out.stat().st_size,
        "max_rel_f32_vs_f64": max(t["f32_vs_f64_rel"] for t in per_tensor),
        "max_rel_f32_vs_f32rev": max(t["f32_vs_f32rev_rel"] for t in per_tensor),
        "tensors": per_tensor,
    }
    print(f"  {name:26s} {len(names):3d} tensors {info['num_trainable_values']:8d} values  "
          f"loss {float(loss):.6f}  rel f32/f64 {info['max_rel_f32_vs_f64']:.1e}  "
          f"rel f32/f32rev {info['max_rel_f32_vs_f32rev']:.1e}  {out.stat().st_size} B")
    return name, info


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=[*CASES, *MSE_CASES],
                    help="golden cases of these models (or regression cases)")
    ap.add_argument("--verify-only", action="store_true", help="only the onnxruntime check")
    args = ap.parse_args()
    import onnxruntime
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, numpy {np.__version__}")
    t0 = time.time()
    print("evaluator vs onnxruntime (ORT_DISABLE_ALL, 1 thread):")
    ort_report = {m: verify_against_ort(m) for m in ALL_MODELS}
    ort_report["op_selftest"] = op_selftest()
    lowrank = lora = None
    if os.environ.get("ACTC"):
        print(f"actc decompose --energy 1 vs the model (onnxruntime; {os.environ['ACTC']}):")
        lowrank = verify_lowrank_energy1(os.environ["ACTC"])
        print("actc compile --lora, train, export; onnxruntime runs the export:")
        lora = verify_lora_export(os.environ["ACTC"])
    if args.verify_only:
        return
    index_path = HERE / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() and args.only else {}
    index.setdefault("cases", {})
    if lowrank is not None:
        index["lowrank_energy1"] = lowrank
        index["lora_export"] = lora
    if args.only:  # merged: the other models keep the numbers of the run that wrote them
        models = [MSE_CASES[k][0] if k in MSE_CASES else k for k in args.only]
        ort_report = {**index.get("ort_check", {}),
                      **{k: ort_report[k] for k in [*models, "op_selftest"]}}
    index["ort_check"] = {k: ort_report[k] for k in [*ALL_MODELS, "op_selftest"]}
    print("golden cases:")
    for model in args.only or [*CASES, *MSE_CASES]:
        if model in MSE_CASES:
            for layers in MSE_CASES[model][2]:
                name, info = run_mse_case(model, layers)
                index["cases"][name] = info
            continue
        for layers in CASES[model][1]:
            name, info = run_case(model, layers)
            index["cases"][name] = info
    index["cases"] = dict(sorted(index["cases"].items()))
    index["versions"] = {"torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    index_path.write_text(json.dumps(index, indent=1, sort_keys=False) + "\n")
    total = sum(p.stat().st_size for p in HERE.glob("*.npz"))
    print(f"total npz size {total} bytes; {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
