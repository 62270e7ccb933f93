#!/usr/bin/env python3
"""Eager PyTorch modules of the two pretrained transformers of models/fetch_pretrained.py,
their weights loaded from the ONNX files, and the trainable selection of actc's `--layers N`
and `--blocks N` on them (DESIGN.md §3), computed on the ONNX graph.

Run from the repository root (after `.venv/bin/python models/fetch_pretrained.py`):

    .venv/bin/python models/reference/transformers_torch.py --check        # vs onnxruntime
    .venv/bin/python models/reference/transformers_torch.py --write-trainable
        # -> models/reference/transformers_trainable.json (the exact tensor lists)

* `dinov2()`: DINOv2 ViT-S/14 as `models/pretrained/dinov2_vits14_cls.onnx` computes it
  (Hugging Face's Dinov2Model, which the file was exported from): patch embedding (Conv 14x14
  stride 14, 3->384), class token, position embedding (37x37 grid, resized to the input's
  (H/14, W/14) by bicubic interpolation, align_corners=False, as HF's
  `interpolate_pos_encoding` and the graph's cubic Resize do, then the class position
  prepended), 12 pre-LN blocks (LayerNorm eps 1e-6; attention with separate query, key and
  value Linear layers, 6 heads of 64, softmax(q k^T / 8); output Linear; LayerScale (a
  per-feature vector multiplying the branch); residual; LayerNorm; MLP 384->1536, exact GELU,
  1536->384; LayerScale; residual), final LayerNorm, class token, head Linear 384->10.
* `minilm()`: paraphrase-MiniLM-L3-v2 as `models/pretrained/minilm_l3_cls.onnx` computes it
  (BERT): word + token-type (row 0: the model has no token_type_ids input) + position
  embeddings, LayerNorm (eps 1e-12), 3 post-LN layers (12 heads of 32, softmax(q k^T /
  sqrt(32) + (1 - mask) * float32.min), output Linear, residual, LayerNorm, MLP 384->1536
  exact GELU ->384, residual, LayerNorm), sentence-transformers' mean pooling
  (sum(h * mask) / clamp(sum(mask), 1e-9)), head Linear 384->2.

Attention runs as torch.nn.functional.scaled_dot_product_attention (`attn="sdpa"`, what
current PyTorch code uses) or as explicit matmul + softmax (`attn="math"`, the ONNX graph's
own form); `--check` runs both. Every weight is copied from the ONNX initializers (the
MatMul weights, stored (in, out), transposed into nn.Linear's (out, in)); `names` maps each
torch parameter to its ONNX initializer; `model.onnx_transposed` holds the ONNX names whose
tensor is the transpose of the parameter (gradients compare after `.T`).

What trains (DESIGN.md §3 for transformers): a *layer* is a MatMul/Gemm whose second input is
an initializer, counted in topological (file) order from the output, the head included.
`--layers N` trains the last N layers and every parameterized op after the first of them:
the biases of those linear layers (the Add of a constant vector right after a trained MatMul),
LayerNorm scales and biases, the head, and (DINOv2 only) the LayerScale vectors, which are
parameters of the PyTorch module (`Dinov2LayerScale.lambda1`) but in ONNX a Mul by a constant
vector: actc today does not count that Mul as a parameterized op, so
`transformers_trainable.json` lists both variants (`layers4` with them, `layers4_frozen_layerscale`
without). `--blocks N` trains the last N transformer blocks whole and everything after them
(final LayerNorm, head); the blocks are found here from the exporter's node names
(`/layer.11/`, `/layer.2/`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent
PRETRAINED = MODELS / "pretrained"
DINO = PRETRAINED / "dinov2_vits14_cls.onnx"
DINO_112 = PRETRAINED / "dinov2_vits14_cls_112.onnx"
MINILM = PRETRAINED / "minilm_l3_cls.onnx"
TRAINABLE_JSON = HERE / "transformers_trainable.json"


# --- modules ------------------------------------------------------------------------------

class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, attn: str):
        super().__init__()
        self.heads, self.attn = heads, attn
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads

        def split(t):
            return t.view(b, n, h, d // h).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        if self.attn == "sdpa":
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            s = (q @ k.transpose(-1, -2)) / math.sqrt(d // h)
            if bias is not None:
                s = s + bias
            ctx = s.softmax(-1) @ v
        return self.proj(ctx.transpose(1, 2).reshape(b, n, d))


class DinoBlock(nn.Module):
    def __init__(self, dim: int, heads: int, attn: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, heads, attn)
        self.ls1 = nn.Parameter(torch.ones(dim))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.ls2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x)) * self.ls1
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)))) * self.ls2


class DinoV2(nn.Module):
    """DINOv2 ViT-S/14 with a 10-way head on the class token (see the module docstring)."""

    def __init__(self, attn: str = "sdpa", dim: int = 384, depth: int = 12, heads: int = 6,
                 patch: int = 14, grid: int = 37, classes: int = 10):
        super().__init__()
        self.patch = patch
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_grid = nn.Parameter(torch.zeros(1, dim, grid, grid))
        self.blocks = nn.ModuleList(DinoBlock(dim, heads, attn) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def pos_embed(self, h: int, w: int) -> torch.Tensor:
        grid = F.interpolate(self.pos_grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([self.pos_cls, grid.flatten(2).transpose(1, 2)], dim=1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The embedded tokens before block 0: (B, 1 + h*w, 384)."""
        h, w = x.shape[2] // self.patch, x.shape[3] // self.patch
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), t], dim=1)
        return t + self.pos_embed(h, w)

    def forward_from(self, t: torch.Tensor, first_block: int) -> torch.Tensor:
        """Blocks first_block.. on tokens t, then the final norm and the head."""
        for blk in self.blocks[first_block:]:
            t = blk(t)
        return self.head(self.norm(t)[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.tokens(x), 0)


class BertLayer(nn.Module):
    def __init__(self, dim: int, heads: int, attn: str):
        super().__init__()
        self.attn = SelfAttention(dim, heads, attn)
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x, bias))
        return self.norm2(x + self.fc2(F.gelu(self.fc1(x))))


class MiniLM(nn.Module):
    """paraphrase-MiniLM-L3-v2 + mean pooling + a 2-way head (see the module docstring)."""

    def __init__(self, attn: str = "sdpa", vocab: int = 30522, positions: int = 512,
                 dim: int = 384, depth: int = 3, heads: int = 12, classes: int = 2):
        super().__init__()
        self.word = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(positions, dim)
        self.token_type = nn.Embedding(2, dim)
        self.emb_norm = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(dim, heads, attn) for _ in range(depth))
        self.head = nn.Linear(dim, classes)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1])
        x = self.word(ids) + self.token_type.weight[0] + self.position(pos)[None]
        return self.emb_norm(x)

    @staticmethod
    def mask_bias(mask: torch.Tensor) -> torch.Tensor:
        return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min

    def forward_from(self, x: torch.Tensor, mask: torch.Tensor, first_layer: int) -> torch.Tensor:
        bias = self.mask_bias(mask)
        for layer in self.layers[first_layer:]:
            x = layer(x, bias)
        m = mask[..., None].float()
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self.head(pooled)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.embed(ids), mask, 0)


# --- loading the ONNX weights ---------------------------------------------------------------

class OnnxGraph:
    def __init__(self, path: Path):
        import onnx
        from onnx import numpy_helper
        self.model = onnx.load(str(path))
        g = self.model.graph
        self.nodes = list(g.node)
        self.by_name = {n.name: n for n in self.nodes}
        self.inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def init_input(self, node) -> str:
        names = [i for i in node.input if i in self.inits]
        assert len(names) == 1, (node.name, list(node.input))
        return names[0]

    def linear(self, matmul_name: str) -> tuple[str, str]:
        """(weight, bias) initializer names of a MatMul with a constant weight and the Add of a
        constant vector that consumes its output."""
        mm = self.by_name[matmul_name]
        w = mm.input[1]
        assert w in self.inits, matmul_name
        adds = [n for n in self.consumers[mm.output[0]] if n.op_type == "Add"]
        assert len(adds) == 1, matmul_name
        return w, self.init_input(adds[0])


class Loader:
    """Copies initializers into parameters, remembering torch name -> (ONNX name, transposed)."""

    def __init__(self, model: nn.Module, graph: OnnxGraph):
        self.params = dict(model.named_parameters())
        self.graph = graph
        self.names: dict[str, str] = {}
        self.transposed: set[str] = set()   # ONNX names stored (in, out): MatMul weights

    def set(self, torch_name: str, onnx_name: str, transform=lambda a: a) -> None:
        p = self.params[torch_name]
        v = torch.from_numpy(np.array(transform(self.graph.inits[onnx_name]), copy=True, order="C"))
        assert v.shape == p.shape, (torch_name, onnx_name, tuple(v.shape), tuple(p.shape))
        with torch.no_grad():
            p.copy_(v)
        self.names[torch_name] = onnx_name

    def linear(self, prefix: str, matmul: str) -> None:
        w, b = self.graph.linear(matmul)
        self.set(f"{prefix}.weight", w, lambda a: a.T)
        self.transposed.add(w)
        self.set(f"{prefix}.bias", b)

    def done(self, model: nn.Module) -> dict[str, str]:
        missing = set(self.params) - set(self.names)
        assert not missing, f"parameters without ONNX weights: {sorted(missing)}"
        model.onnx_transposed = frozenset(self.transposed)
        return self.names


def dinov2(path: Path = DINO, attn: str = "sdpa") -> tuple[DinoV2, dict[str, str]]:
    """The eval-mode module computing dinov2_vits14_cls.onnx, and torch name -> ONNX name."""
    g = OnnxGraph(path)
    model = DinoV2(attn=attn)
    ld = Loader(model, g)
    conv = next(n for n in g.nodes if n.op_type == "Conv")
    ld.set("patch_embed.weight", conv.input[1])
    ld.set("patch_embed.bias", conv.input[2])
    ld.set("cls_token", "backbone.embeddings.cls_token")
    pos_cls = g.by_name["/backbone/embeddings/Concat_6"].input[0]
    ld.set("pos_cls", pos_cls)
    grid = g.by_name["/backbone/embeddings/Reshape_1"].input[0]      # (1, 1369, 384)
    ld.set("pos_grid", grid, lambda a: a.reshape(1, 37, 37, 384).transpose(0, 3, 1, 2))
    for i in range(12):
        p = f"/backbone/encoder/layer.{i}"
        t = f"blocks.{i}"
        for part, ln in (("norm1", "norm1"), ("norm2", "norm2")):
            ld.set(f"{t}.{ln}.weight", g.by_name[f"{p}/{part}/Mul"].input[1])
            ld.set(f"{t}.{ln}.bias", g.by_name[f"{p}/{part}/Add_1"].input[1])
        for q in ("query", "key", "value"):
            ld.linear(f"{t}.attn.{q}", f"{p}/attention/attention/{q}/MatMul")
        ld.linear(f"{t}.attn.proj", f"{p}/attention/output/dense/MatMul")
        ld.set(f"{t}.ls1", g.init_input(g.by_name[f"{p}/layer_scale1/Mul"]))
        ld.linear(f"{t}.fc1", f"{p}/mlp/fc1/MatMul")
        ld.linear(f"{t}.fc2", f"{p}/mlp/fc2/MatMul")
        ld.set(f"{t}.ls2", g.init_input(g.by_name[f"{p}/layer_scale2/Mul"]))
        scale = g.by_name[f"{p}/attention/attention/Mul"].input[1]
        del scale  # q and k^T are each multiplied by 64**-0.25 in the graph: q k^T / 8 here
    ld.set("norm.weight", g.by_name["/backbone/layernorm/Mul"].input[1])
    ld.set("norm.bias", g.by_name["/backbone/layernorm/Add_1"].input[1])
    gemm = g.by_name["/head/Gemm"]
    ld.set("head.weight", gemm.input[1])
    ld.set("head.bias", gemm.input[2])
    return model.eval(), ld.done(model)


def minilm(path: Path = MINILM, attn: str = "sdpa") -> tuple[MiniLM, dict[str, str]]:
    """The eval-mode module computing minilm_l3_cls.onnx, and torch name -> ONNX name."""
    g = OnnxGraph(path)
    model = MiniLM(attn=attn)
    ld = Loader(model, g)
    e = "/model/model.0/auto_model/embeddings"
    ld.set("word.weight", g.by_name[f"{e}/word_embeddings/Gather"].input[0])
    ld.set("position.weight", g.by_name[f"{e}/position_embeddings/Gather"].input[0])
    ld.set("token_type.weight", g.by_name[f"{e}/token_type_embeddings/Gather"].input[0])
    ln = g.by_name[f"{e}/LayerNorm/LayerNormalization"]
    ld.set("emb_norm.weight", ln.input[1])
    ld.set("emb_norm.bias", ln.input[2])
    for i in range(3):
        p = f"/model/model.0/auto_model/encoder/layer.{i}"
        t = f"layers.{i}"
        for q in ("query", "key", "value"):
            ld.linear(f"{t}.attn.{q}", f"{p}/attention/self/{q}/MatMul")
        ld.linear(f"{t}.attn.proj", f"{p}/attention/output/dense/MatMul")
        ld.linear(f"{t}.fc1", f"{p}/intermediate/dense/MatMul")
        ld.linear(f"{t}.fc2", f"{p}/output/dense/MatMul")
        for norm, part in (("norm1", "attention/output"), ("norm2", "output")):
            ln = g.by_name[f"{p}/{part}/LayerNorm/LayerNormalization"]
            ld.set(f"{t}.{norm}.weight", ln.input[1])
            ld.set(f"{t}.{norm}.bias", ln.input[2])
    gemm = g.by_name["/head/Gemm"]
    ld.set("head.weight", gemm.input[1])
    ld.set("head.bias", gemm.input[2])
    return model.eval(), ld.done(model)


# --- what trains ----------------------------------------------------------------------------

def trainable_onnx(path: Path, setting: str) -> dict:
    """The initializers actc's `--layers N` / `--blocks N` train on this ONNX file (module
    docstring), found on the graph. setting: "layersN", "layersN_frozen_layerscale" or
    "blocksN". Returns {"tensors": [names in graph order], "values": count, "layers": [...]}."""
    g = OnnxGraph(path)
    nodes = g.nodes
    producer = {o: n for n in nodes for o in n.output}
    linear = [n for n in nodes if n.op_type in ("MatMul", "Gemm") and n.input[1] in g.inits
              and g.inits[n.input[1]].dtype == np.float32]
    # what each initializer after the start is, structurally
    def kind_of(node, name) -> str:
        if node.op_type in ("MatMul", "Gemm"):
            return "linear"
        other = [i for i in node.input if i != name][0]
        src = producer.get(other)
        if node.op_type == "LayerNormalization":
            return "layernorm"
        if node.op_type == "Add" and src is not None and src in linear:
            return "bias"
        if node.op_type == "Mul" and src is not None and src.op_type == "Div":
            return "layernorm"   # the decomposed LayerNorm's scale: Div(x - mean, std) * w
        if node.op_type == "Add" and src is not None and src.op_type == "Mul" and \
                producer.get(src.input[0]) is not None and producer[src.input[0]].op_type == "Div":
            return "layernorm"   # ... + b
        if node.op_type == "Mul" and src is not None and src.op_type == "Add" and \
                any(producer.get(i) in linear for i in src.input):
            return "layerscale"
        return f"other ({node.op_type} {node.name})"

    if setting.startswith("layers"):
        n = int(setting[len("layers"):].split("_")[0])
        first = linear[-n]
        start = nodes.index(first)
        layers = [x.name for x in linear[-n:]]
    else:
        n = int(setting[len("blocks"):])
        prefixes = sorted({x.name.split("/layer.")[1].split("/")[0] for x in nodes
                           if "/layer." in x.name}, key=int)
        first_block = prefixes[-n]
        start = next(k for k, x in enumerate(nodes) if f"/layer.{first_block}/" in x.name)
        layers = [x.name for x in linear if nodes.index(x) >= start]
    tensors, kinds = [], {}
    for node in nodes[start:]:
        for name in node.input:
            if name in g.inits and g.inits[name].dtype == np.float32 and name not in tensors:
                if node.op_type == "Gather" and name not in (node.input[0],):
                    continue
                k = kind_of(node, name)
                if g.inits[name].ndim == 0:
                    continue
                assert not k.startswith("other"), (name, k)
                if k == "layerscale" and setting.endswith("_frozen_layerscale"):
                    continue
                if setting.startswith("layers") and k == "linear" and node not in linear[-n:]:
                    continue
                tensors.append(name)
                kinds[name] = k
    return {"tensors": tensors, "kinds": kinds,
            "values": int(sum(g.inits[t].size for t in tensors)), "layers": layers,
            "total_layers": len(linear)}


def write_trainable(path: Path = TRAINABLE_JSON) -> dict:
    out = {"_doc": "Initializers actc's --layers/--blocks must train (models/reference/"
                   "transformers_torch.py --write-trainable; rule in its docstring). "
                   "'torch' maps them to the eager modules' parameters.",
           "dinov2_vits14_cls.onnx": {}, "minilm_l3_cls.onnx": {}}
    _, dn = dinov2()
    _, mn = minilm()
    for file, names, settings in (
            (DINO, dn, ("layers4", "layers4_frozen_layerscale", "blocks1")),
            (MINILM, mn, ("layers4", "blocks1"))):
        inv = {v: k for k, v in names.items()}
        for s in settings:
            r = trainable_onnx(file, s)
            r["torch"] = [inv[t] for t in r["tensors"]]
            out[file.name][s] = r
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def select(model: nn.Module, names: dict[str, str], onnx_tensors: list[str]):
    """Freezes everything but the parameters of `onnx_tensors`; returns [(torch name, p)]."""
    inv = {v: k for k, v in names.items()}
    chosen = [inv[t] for t in onnx_tensors]
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(False)
    for n in chosen:
        params[n].requires_grad_(True)
    return [(n, params[n]) for n in chosen]


def load_trainable(model_file: str, setting: str) -> list[str]:
    return json.loads(TRAINABLE_JSON.read_text())[model_file][setting]["tensors"]


# --- the check against onnxruntime ---------------------------------------------------------

def ort_session(path_or_model, threads=2):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    data = path_or_model.SerializeToString() if hasattr(path_or_model, "graph") else str(path_or_model)
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def with_input_dims(path: Path, dims: dict):
    import onnx
    m = onnx.load(str(path))
    for vi in m.graph.input:
        if vi.name in dims:
            shape = vi.type.tensor_type.shape
            for d, v in zip(shape.dim, dims[vi.name]):
                d.Clear()
                if isinstance(v, str):
                    d.dim_param = v
                else:
                    d.dim_value = v
    return m


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def check() -> bool:
    torch.manual_seed(0)
    ok = True
    rng = np.random.default_rng(0)
    sys.path.insert(0, str(HERE))
    from common import fashion_mnist
    for size in (224, 112):
        x_img, _ = fashion_mnist("test", size)
        xs = {"random": rng.standard_normal((4, 3, size, size), dtype=np.float32),
              "fashion-mnist": x_img[:4].numpy()}
        sess = ort_session(with_input_dims(DINO, {"input": ["batch", 3, size, size]}))
        for attn in ("sdpa", "math"):
            model, _ = dinov2(attn=attn)
            for what, x in xs.items():
                ref = sess.run(["logits"], {"input": x})[0]
                with torch.no_grad():
                    out = model(torch.from_numpy(x)).numpy()
                r = rel(out, ref)
                ok &= r < 1e-4
                print(f"dinov2 {size}x{size} {attn:4s} {what:13s}: max |torch - ort| "
                      f"{np.abs(out - ref).max():.2e}, relative to max |logit| {r:.1e}")
    # the baked 112 file is the same function at 112
    if DINO_112.exists():
        x = rng.standard_normal((4, 3, 112, 112), dtype=np.float32)
        a = ort_session(DINO_112).run(["logits"], {"input": x})[0]
        b = ort_session(with_input_dims(DINO, {"input": ["batch", 3, 112, 112]})).run(
            ["logits"], {"input": x})[0]
        print(f"dinov2_vits14_cls_112.onnx vs dinov2_vits14_cls.onnx at 112: {np.abs(a - b).max():.1e}")
    # position embedding: PyTorch bicubic vs the graph's cubic Resize
    import onnx
    from onnx import helper
    model, _ = dinov2()
    for size in (224, 112):
        m = with_input_dims(DINO, {"input": [1, 3, size, size]})
        m.graph.output.append(helper.make_empty_tensor_value_info("/backbone/embeddings/Concat_6_output_0"))
        pos = ort_session(m).run(["/backbone/embeddings/Concat_6_output_0"],
                                 {"input": np.zeros((1, 3, size, size), np.float32)})[0]
        with torch.no_grad():
            tp = model.pos_embed(size // 14, size // 14).numpy()
        print(f"position embedding at {size}: F.interpolate(bicubic) vs ONNX Resize(cubic): "
              f"max |diff| {np.abs(tp - pos).max():.1e} (values up to {np.abs(pos).max():.2f})")
    del onnx
    # MiniLM
    ids = torch.from_numpy(rng.integers(1000, 30000, (4, 24)).astype(np.int64))
    ids[:, 0] = 101
    mask = torch.ones(4, 24, dtype=torch.int64)
    mask[1, 12:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    sess = ort_session(MINILM)
    ref = sess.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    for attn in ("sdpa", "math"):
        model, _ = minilm(attn=attn)
        with torch.no_grad():
            out = model(ids, mask).numpy()
        r = rel(out, ref)
        ok &= r < 1e-4
        print(f"minilm {attn:4s}: max |torch - ort| {np.abs(out - ref).max():.2e}, relative {r:.1e}")
    print("OK" if ok else "MISMATCH")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with onnxruntime")
    ap.add_argument("--write-trainable", action="store_true",
                    help=f"write {TRAINABLE_JSON.relative_to(MODELS.parent)}")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.write_trainable:
        out = write_trainable()
        for f in ("dinov2_vits14_cls.onnx", "minilm_l3_cls.onnx"):
            for s, r in out[f].items():
                print(f"{f} {s}: {len(r['tensors'])} tensors, {r['values']:,} values, "
                      f"layers {r['layers']}")
    if args.check and not check():
        sys.exit(1)


if __name__ == "__main__":
    main()
