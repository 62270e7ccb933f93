"""A small ONNX -> PyTorch evaluator: walks an ONNX graph in file (topological) order and applies
the equivalent torch op to each node, so that autograd can differentiate the ONNX function.

    ev = OnnxTorch("models/tiny_cnn.onnx")                  # float32
    ev = OnnxTorch("models/tiny_cnn.onnx", torch.float64)   # every float tensor in float64
    vals = ev.run({"input": x}, overrides={"conv1.weight": w})   # name -> tensor, every value

Initializers and `Constant` node outputs become tensors. `overrides` replaces any tensor by
name (an initializer, or the output of a node, which is then not computed): that is how
trainable leaves with `requires_grad=True` enter the graph. Integer tensors (shapes, indices)
stay int64 torch tensors. Only the default ONNX domain, and only the ops actc's bundled models
use (plus their obvious generalisations); anything else raises NotImplementedError.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

ONNX_TO_TORCH = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool,
}


class OnnxTorch:
    def __init__(self, model, float_dtype=torch.float32):
        self.model = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
        self.graph = self.model.graph
        self.fdt = float_dtype
        self.opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.inits = {t.name: self._tensor(numpy_helper.to_array(t)) for t in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}

    def _tensor(self, a):
        t = torch.from_numpy(np.array(a, copy=True))
        return t.to(self.fdt) if t.is_floating_point() else t

    def ancestors(self, names):
        """Names of the nodes the given tensors depend on."""
        seen, stack = set(), list(names)
        while stack:
            n = self.producer.get(stack.pop())
            if n is not None and n.name not in seen:
                seen.add(n.name)
                stack.extend(i for i in n.input if i)
        return seen

    def run(self, inputs, overrides=None):
        env = dict(self.inits)
        env.update(inputs)
        overrides = overrides or {}
        env.update(overrides)
        for node in self.graph.node:
            if node.output and all(o in overrides for o in node.output if o):
                continue
            args = [env[i] if i else None for i in node.input]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            fn = getattr(self, "op_" + node.op_type, None)
            if fn is None or node.domain not in ("", "ai.onnx"):
                raise NotImplementedError(f"{node.op_type} ({node.name})")
            out = fn(args, attrs)
            out = out if isinstance(out, tuple) else (out,)
            for name, val in zip(node.output, out):
                if name:
                    env[name] = overrides.get(name, val)
        return env

    # ---------------------------------------------------------------- constants, shapes
    def op_Constant(self, a, at):
        if "value" in at:
            return self._tensor(numpy_helper.to_array(at["value"]))
        for k, dt in (("value_float", np.float32), ("value_floats", np.float32),
                      ("value_int", np.int64), ("value_ints", np.int64)):
            if k in at:
                return self._tensor(np.array(at[k], dtype=dt))
        raise NotImplementedError(f"Constant with {list(at)}")

    def op_ConstantOfShape(self, a, at):
        v = self._tensor(numpy_helper.to_array(at["value"])) if "value" in at else torch.zeros(1, dtype=self.fdt)
        return v.reshape(()).expand(*[int(d) for d in a[0].tolist()]).clone()

    def op_Shape(self, a, at):
        s = list(a[0].shape)
        return torch.tensor(s[at.get("start", 0):at.get("end", len(s))], dtype=torch.int64)

    def op_Gather(self, a, at):
        x, idx = a
        ax = at.get("axis", 0) % x.dim()
        idx = torch.where(idx < 0, idx + x.shape[ax], idx)
        out = x.index_select(ax, idx.reshape(-1))
        return out.reshape(x.shape[:ax] + idx.shape + x.shape[ax + 1:])

    def op_Cast(self, a, at):
        dt = ONNX_TO_TORCH[at["to"]]
        return a[0].to(self.fdt if dt.is_floating_point else dt)

    def op_Identity(self, a, at):
        return a[0]

    def op_Dropout(self, a, at):  # inference: identity (mask output all True)
        return a[0], torch.ones_like(a[0], dtype=torch.bool)

    def op_Slice(self, a, at):
        x = a[0]
        if len(a) > 1:
            starts, ends = a[1].tolist(), a[2].tolist()
            axes = a[3].tolist() if len(a) > 3 and a[3] is not None else list(range(len(starts)))
            steps = a[4].tolist() if len(a) > 4 and a[4] is not None else [1] * len(starts)
        else:
            starts, ends = at["starts"], at["ends"]
            axes = at.get("axes", list(range(len(starts))))
            steps = [1] * len(starts)
        for s, e, ax, st in zip(starts, ends, axes, steps):
            ax %= x.dim()
            d = x.shape[ax]
            s = s + d if s < 0 else s
            e = e + d if e < 0 else e
            if st > 0:
                s, e = min(max(s, 0), d), min(max(e, 0), d)
            else:
                s, e = min(max(s, -1), d - 1), min(max(e, -1), d - 1)
            idx = torch.arange(s, e, st, dtype=torch.int64)
            x = x.index_select(ax, idx)
        return x

    def op_Concat(self, a, at):
        return torch.cat([t for t in a if t is not None], dim=at["axis"])

    def op_Reshape(self, a, at):
        x, shape = a[0], [int(v) for v in a[1].tolist()]
        if not at.get("allowzero", 0):
            shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
        return x.reshape(shape)

    def op_Flatten(self, a, at):
        x = a[0]
        ax = at.get("axis", 1) % (x.dim() + 1) if x.dim() else 0
        return x.reshape(math.prod(x.shape[:ax]), math.prod(x.shape[ax:]))

    def op_Transpose(self, a, at):
        return a[0].permute(at.get("perm", list(range(a[0].dim()))[::-1]))

    def _axes(self, a, at):
        return [int(v) for v in a[1].tolist()] if len(a) > 1 and a[1] is not None else at.get("axes")

    def op_Squeeze(self, a, at):
        axes = self._axes(a, at)
        x = a[0]
        if axes is None:
            return x.squeeze()
        return x.squeeze(tuple(ax % x.dim() for ax in axes))

    def op_Unsqueeze(self, a, at):
        x = a[0]
        axes = sorted(ax % (x.dim() + len(self._axes(a, at))) for ax in self._axes(a, at))
        for ax in axes:
            x = x.unsqueeze(ax)
        return x

    # ---------------------------------------------------------------- elementwise
    def op_Range(self, a, at):
        start, limit, delta = (v.item() for v in a)
        return torch.arange(start, limit, delta, dtype=a[0].dtype)

    def op_ReduceSum(self, a, at):  # opset 13+: axes as an input
        axes = a[1].tolist() if len(a) > 1 and a[1] is not None and a[1].numel() else None
        keep = bool(at.get("keepdims", 1))
        if axes is None:
            return a[0].sum().reshape([1] * a[0].dim() if keep else [])
        return a[0].sum(dim=axes, keepdim=keep)

    def op_Equal(self, a, at): return a[0] == a[1]
    def op_Where(self, a, at): return torch.where(a[0], a[1], a[2])
    def op_Expand(self, a, at):  # numpy broadcasting of the input and the shape
        shape = torch.broadcast_shapes(a[0].shape, tuple(int(d) for d in a[1].tolist()))
        return a[0].expand(shape)
    def op_Add(self, a, at): return a[0] + a[1]
    def op_Sub(self, a, at): return a[0] - a[1]
    def op_Mul(self, a, at): return a[0] * a[1]

    def op_Div(self, a, at):
        if a[0].is_floating_point():
            return a[0] / a[1]
        return torch.div(a[0], a[1], rounding_mode="trunc")

    def op_Pow(self, a, at):  # ONNX: the result has the base's type
        return torch.pow(a[0], a[1]).to(a[0].dtype)

    def op_Sqrt(self, a, at): return torch.sqrt(a[0])
    def op_Relu(self, a, at): return F.relu(a[0])
    def op_Sigmoid(self, a, at): return torch.sigmoid(a[0])
    def op_Sin(self, a, at): return torch.sin(a[0])
    def op_Tanh(self, a, at): return torch.tanh(a[0])
    def op_Erf(self, a, at): return torch.erf(a[0])

    def op_Gelu(self, a, at):
        mode = at.get("approximate", b"none")
        return F.gelu(a[0], approximate=mode.decode() if isinstance(mode, bytes) else mode)
    def op_LeakyRelu(self, a, at): return F.leaky_relu(a[0], at.get("alpha", 0.01))

    def op_PRelu(self, a, at):
        x, slope = a
        return torch.where(x > 0, x, x * slope)

    def op_Clip(self, a, at):
        lo = a[1] if len(a) > 1 and a[1] is not None else at.get("min")
        hi = a[2] if len(a) > 2 and a[2] is not None else at.get("max")
        lo = lo.item() if isinstance(lo, torch.Tensor) else lo
        hi = hi.item() if isinstance(hi, torch.Tensor) else hi
        return torch.clamp(a[0], lo, hi)

    def op_HardSigmoid(self, a, at):
        return torch.clamp(at.get("alpha", 0.2) * a[0] + at.get("beta", 0.5), 0.0, 1.0)

    def op_HardSwish(self, a, at):
        return F.hardswish(a[0])

    def op_Softmax(self, a, at):
        x = a[0]
        if self.opset >= 13:
            return torch.softmax(x, dim=at.get("axis", -1))
        ax = at.get("axis", 1) % x.dim()  # older opsets: softmax of the 2-D coercion
        return torch.softmax(x.reshape(math.prod(x.shape[:ax]), -1), dim=1).reshape(x.shape)

    # ---------------------------------------------------------------- linear algebra
    def op_MatMul(self, a, at):
        return torch.matmul(a[0], a[1])

    def op_Gemm(self, a, at):
        A, B = a[0], a[1]
        C = a[2] if len(a) > 2 else None
        alpha, beta = at.get("alpha", 1.0), at.get("beta", 1.0)
        A = A.t() if at.get("transA", 0) else A
        if at.get("transB", 0) and alpha == 1.0 and beta == 1.0:
            return F.linear(A, B, C)  # what nn.Linear computes
        B = B.t() if at.get("transB", 0) else B
        y = torch.matmul(A, B)
        y = y * alpha if alpha != 1.0 else y
        if C is not None:
            y = y + (C * beta if beta != 1.0 else C)
        return y

    @staticmethod
    def _pads(at, nd):
        p = at.get("pads", [0] * (2 * nd))
        if at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise NotImplementedError(f"auto_pad {at['auto_pad']}")
        return list(p[:nd]), list(p[nd:])

    @staticmethod
    def _torch_pad(begin, end):  # ONNX (b0, b1, .., e0, e1, ..) over the last dims -> F.pad order
        out = []
        for b, e in zip(reversed(begin), reversed(end)):
            out += [b, e]
        return out

    def op_Conv(self, a, at):
        x, w = a[0], a[1]
        b = a[2] if len(a) > 2 else None
        nd = w.dim() - 2
        begin, end = self._pads(at, nd)
        if begin != end:
            x = F.pad(x, self._torch_pad(begin, end))
            begin = [0] * nd
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
        return conv(x, w, b, stride=at.get("strides", [1] * nd), padding=begin,
                    dilation=at.get("dilations", [1] * nd), groups=at.get("group", 1))

    def op_ConvTranspose(self, a, at):
        """PyTorch's conv_transpose (symmetric pads, output padding below the stride or the
        dilation: what nn.ConvTranspose2d exports), else its full output (no padding) grown
        by the output padding and cropped by the pads. Pads from `output_shape` or `auto_pad`
        as the operator defines them."""
        x, w = a[0], a[1]
        b = a[2] if len(a) > 2 and a[2] is not None else None
        nd = w.dim() - 2
        s, d = list(at.get("strides", [1] * nd)), list(at.get("dilations", [1] * nd))
        g, op = at.get("group", 1), list(at.get("output_padding", [0] * nd))
        k = list(w.shape[2:])
        auto = at.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        pads = list(at.get("pads", [0] * (2 * nd)))
        full = [s[i] * (x.shape[2 + i] - 1) + op[i] + (k[i] - 1) * d[i] + 1 for i in range(nd)]
        if "output_shape" in at or auto in ("SAME_UPPER", "SAME_LOWER"):
            out = list(at["output_shape"])[-nd:] if "output_shape" in at else [x.shape[2 + i] * s[i] for i in range(nd)]
            for i in range(nd):
                total = full[i] - out[i]
                small, big = total // 2, total - total // 2
                pads[i], pads[i + nd] = (small, big) if auto == "SAME_UPPER" else (big, small)
        elif auto == "VALID":
            pads = [0] * (2 * nd)
        conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
        begin, end = pads[:nd], pads[nd:]
        if begin == end and all(o < max(si, di) for o, si, di in zip(op, s, d)):
            return conv(x, w, b, stride=s, padding=begin, output_padding=op, groups=g, dilation=d)
        y = conv(x, w, None, stride=s, groups=g, dilation=d)
        y = F.pad(y, self._torch_pad([0] * nd, op))
        for i in range(nd):
            y = y.narrow(2 + i, begin[i], full[i] - begin[i] - end[i])
        return y if b is None else y + b.reshape([1, -1] + [1] * nd)

    def op_Upsample(self, a, at):
        """Opsets 7 (scales attribute) and 9 (scales input): Resize-10's semantics."""
        scales = a[1] if len(a) > 1 else torch.tensor(at["scales"], dtype=torch.float32)
        return self._resize(a[0], at, scales, None, legacy=True)

    def op_Resize(self, a, at):
        arg = lambda i: a[i] if len(a) > i and a[i] is not None and a[i].numel() else None  # noqa: E731
        if self.opset < 11:
            return self._resize(a[0], at, arg(1), None, legacy=True)
        return self._resize(a[0], at, arg(2), arg(3), legacy=False)

    def _resize(self, x, at, scales, sizes, legacy):
        """2-D (NCHW) nearest and linear Resize. PyTorch's own F.interpolate for what it
        exports (nearest: asymmetric/floor; bilinear: half_pixel or pytorch_half_pixel, and
        align_corners), else the operator's definition in float32 as onnxruntime computes it:
        per axis x = f(i), nearest rounded by nearest_mode, linear blending the two indices
        around x clamped to the axis; both differentiable."""
        text = lambda k, d: (v.decode() if isinstance(v := at.get(k, d), bytes) else v)  # noqa: E731
        mode = text("mode", "nearest")
        ctm = "asymmetric" if legacy else text("coordinate_transformation_mode", "half_pixel")
        nm = "floor" if legacy else text("nearest_mode", "round_prefer_floor")
        if at.get("antialias", 0) or "axes" in at or text("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise NotImplementedError("Resize with antialias, axes or keep_aspect_ratio_policy")
        if x.dim() != 4 or mode not in ("nearest", "linear"):
            raise NotImplementedError(f"Resize {mode} of a rank-{x.dim()} tensor")
        ins = list(x.shape)
        if sizes is not None:
            out = [int(v) for v in sizes.tolist()]
            sc = [np.float32(o) / np.float32(i) for o, i in zip(out, ins)]
        else:
            sc = [np.float32(v) for v in scales.tolist()]
            out = [int(np.floor(np.float32(i) * s)) for i, s in zip(ins, sc)]
        if out[:2] != ins[:2]:
            raise NotImplementedError("Resize of the batch or channel axis")
        if legacy and min(sc[2:]) < 1:
            raise NotImplementedError("Upsample / Resize-10 downsampling")
        up = tuple(float(s) for s in sc[2:])
        if mode == "nearest" and ctm == "asymmetric" and nm == "floor" and sizes is None:
            return F.interpolate(x, scale_factor=up, mode="nearest", recompute_scale_factor=False)
        if mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel") and min(out[2:]) > 1 and sizes is None:
            return F.interpolate(x, scale_factor=up, mode="bilinear", align_corners=False,
                                 recompute_scale_factor=False)
        if mode == "linear" and ctm == "align_corners":
            return F.interpolate(x, size=tuple(out[2:]), mode="bilinear", align_corners=True)
        for ax in (2, 3):
            i = np.arange(out[ax], dtype=np.float32)
            s, n_in, n_out = sc[ax], ins[ax], out[ax]
            one = np.float32(1) if n_out > 1 else None
            src = {"half_pixel": (i + np.float32(0.5)) / s - np.float32(0.5),
                   "pytorch_half_pixel": (i + np.float32(0.5)) / s - np.float32(0.5) if one else np.zeros_like(i),
                   "align_corners": i * np.float32(n_in - 1) / np.float32(n_out - 1) if one else np.zeros_like(i),
                   "asymmetric": i / s,
                   "tf_half_pixel_for_nn": (i + np.float32(0.5)) / s}.get(ctm)
            if src is None:
                raise NotImplementedError(f"Resize coordinate_transformation_mode {ctm}")
            src = src.astype(np.float32)
            if mode == "nearest":
                fl = np.floor(src)
                away = np.sign(src) * np.floor(np.abs(src) + np.float32(0.5))  # C's round()
                r = {"round_prefer_floor": np.where(src - fl == 0.5, fl, away),
                     "round_prefer_ceil": away, "floor": fl, "ceil": np.ceil(src)}[nm]
                idx = torch.from_numpy(np.clip(r, 0, n_in - 1).astype(np.int64))
                x = x.index_select(ax, idx)
            else:
                c = np.clip(src, 0, n_in - 1)
                i0 = np.minimum(np.floor(c), n_in - 1).astype(np.int64)
                i1 = np.minimum(i0 + 1, n_in - 1)
                lam = torch.from_numpy((c - i0).astype(np.float32)).to(x.dtype)
                shape = [1, 1, 1, 1]
                shape[ax] = -1
                lam = lam.reshape(shape)
                x = x.index_select(ax, torch.from_numpy(i0)) * (1 - lam) + x.index_select(ax, torch.from_numpy(i1)) * lam
        return x

    def op_BatchNormalization(self, a, at):
        x, scale, bias, mean, var = a
        if at.get("training_mode", 0):
            raise NotImplementedError("BatchNormalization training_mode=1")
        return F.batch_norm(x, mean, var, scale, bias, training=False, eps=at.get("epsilon", 1e-5))

    def op_LayerNormalization(self, a, at):
        """Opset 17: normalise over the dims from `axis` on; outputs Y and the optional Mean
        and InvStdDev (shape X.shape[:axis] + [1] * (rank - axis))."""
        x, scale = a[0], a[1]
        bias = a[2] if len(a) > 2 else None
        if at.get("stash_type", 1) != 1:
            raise NotImplementedError("LayerNormalization stash_type other than 1 (float)")
        ax = at.get("axis", -1) % x.dim()
        shape = tuple(x.shape[ax:])
        # nn.LayerNorm's own function (same numbers as PyTorch's module); the exporters write
        # scale and bias with the normalised shape; other broadcastable shapes are not handled.
        if scale.numel() != math.prod(shape) or (bias is not None and bias.numel() != scale.numel()):
            raise NotImplementedError(f"LayerNormalization scale {tuple(scale.shape)} for {shape}")
        scale = scale.reshape(shape)
        bias = bias.reshape(shape) if bias is not None else None
        y, mean, rstd = torch.native_layer_norm(x, shape, scale, bias, at.get("epsilon", 1e-5))
        stats = x.shape[:ax] + (1,) * len(shape)
        return y, mean.reshape(stats), rstd.reshape(stats)

    # ---------------------------------------------------------------- pooling, reductions
    def op_GlobalAveragePool(self, a, at):
        return a[0].mean(dim=tuple(range(2, a[0].dim())), keepdim=True)

    def op_GlobalMaxPool(self, a, at):
        return a[0].amax(dim=tuple(range(2, a[0].dim())), keepdim=True)

    def op_AveragePool(self, a, at):
        x, k = a[0], at["kernel_shape"]
        nd = len(k)
        if nd != 2:
            raise NotImplementedError("AveragePool other than 2-D")
        begin, end = self._pads(at, nd)
        s, ceil, cip = at.get("strides", [1] * nd), bool(at.get("ceil_mode", 0)), bool(at.get("count_include_pad", 0))
        if begin == end and all(2 * p <= kk for p, kk in zip(begin, k)):
            return F.avg_pool2d(x, k, s, begin, ceil_mode=ceil, count_include_pad=cip)
        if ceil:
            raise NotImplementedError("AveragePool with asymmetric pads and ceil_mode")
        tp = self._torch_pad(begin, end)
        xs = F.avg_pool2d(F.pad(x, tp), k, s, 0) * math.prod(k)  # window sums
        if cip:
            return xs / math.prod(k)
        ones = F.pad(torch.ones_like(x[:1, :1]), tp)
        return xs / (F.avg_pool2d(ones, k, s, 0) * math.prod(k))

    def op_MaxPool(self, a, at):
        x, k = a[0], at["kernel_shape"]
        nd = len(k)
        if nd != 2 or at.get("storage_order", 0):
            raise NotImplementedError("MaxPool other than 2-D row-major")
        begin, end = self._pads(at, nd)
        s, d, ceil = at.get("strides", [1] * nd), at.get("dilations", [1] * nd), bool(at.get("ceil_mode", 0))
        if begin != end:
            x = F.pad(x, self._torch_pad(begin, end), value=-math.inf)
            begin = [0] * nd
        return F.max_pool2d(x, k, s, begin, dilation=d, ceil_mode=ceil)

    def op_ReduceMean(self, a, at):
        x = a[0]
        axes = self._axes(a, at)
        keep = bool(at.get("keepdims", 1))
        if not axes:
            if at.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return x.mean(dim=tuple(ax % x.dim() for ax in axes), keepdim=keep)

    def op_Pad(self, a, at):
        x = a[0]
        mode = at.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if len(a) > 1:
            pads = [int(v) for v in a[1].tolist()]
            value = a[2].item() if len(a) > 2 and a[2] is not None and a[2].numel() else 0.0
            axes = [int(v) % x.dim() for v in a[3].tolist()] if len(a) > 3 and a[3] is not None else None
        else:
            pads, value, axes = list(at["pads"]), at.get("value", 0.0), None
        axes = axes if axes is not None else list(range(x.dim()))
        n = len(axes)
        begin, end = [0] * x.dim(), [0] * x.dim()
        for i, ax in enumerate(axes):
            begin[ax], end[ax] = pads[i], pads[i + n]
        first = next((i for i in range(x.dim()) if begin[i] or end[i]), x.dim())
        tp = self._torch_pad(begin[first:], end[first:])
        if not tp:
            return x
        tmode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
        return F.pad(x, tp, mode=tmode, value=value) if tmode == "constant" else F.pad(x, tp, mode=tmode)
