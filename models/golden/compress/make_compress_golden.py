#!/usr/bin/env python3
"""Golden data for actc's activation-compression kernels (runtime/src/compress), computed
from the paper's definitions with numpy's full SVD and PyTorch's own conv weight gradient.

Run from the repository root (about 2 s, 1 thread):

    .venv/bin/python models/golden/compress/make_compress_golden.py

Versions that wrote the committed files: Python 3.11.7, numpy 2.4.6, torch 2.15.0 (+cu132
build, run on CPU). Deterministic: fixed seeds, float64 arithmetic, fixed zip timestamps;
running it twice gives byte-identical .npz files.

What is computed (everything in float64 from the float32 inputs, stored as float32):

hosvd.npz -- Nguyen et al., NeurIPS 2024, "Activation Map Compression through Tensor
Decomposition for Deep Learning", HOSVD with the explained-variance (epsilon) rule, as the
authors' code does it (custom_op/hosvd.py of github.com/trungnl2000/cls_gradfilt):
  for every mode n, U_n = the leading K_n left singular vectors of the mode-n unfolding
  (numpy.linalg.svd of the unfolding itself, not of a Gram matrix), K_n the smallest k whose
  cumulative share of sum(sigma^2) reaches eps (torch.searchsorted(share, eps) + 1); the core
  is A x_n U_n^T over all modes and the reconstruction S x_n U_n. For eps = 1 the rank is
  every singular value (min(D_n, numel/D_n)): the paper's rule in exact arithmetic on
  full-rank data, where float rounding of the cumulative share would otherwise decide.
  Every share used below is checked to be at least MARGIN away from eps, so that a correct
  float32 implementation (ours works through Gram matrices) must find the same ranks.
  Keys: {t}__x (input), {t}__{e}__ranks, {t}__{e}__recon; for conv cases {t}__{c}__geom =
  [c_out, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups], {t}__{c}__dy and
  {t}__{c}__{e}__dw = torch.nn.grad.conv2d_weight(reconstruction, ...) (symmetric padding);
  for the 2-D case m2 (a Gemm input M x K): m2__lin__dy (M x N) and m2__{e}__dw_lin = recon^T dy
  (K x N). e is "e050", "e080", "e090", "e100".

svd.npz -- the paper's SVD baseline (custom_op/conv_svd_with_var.py of the same repository):
  the input unfolded to rows x cols (first dimension against the rest), the same eps rule,
  reconstruction U_k S_k V_k^T. Keys: {t}__x, {t}__{e}__rank, {t}__{e}__recon.

gradfilter.npz -- the gradient filter of Yang et al., CVPR 2023 ("Efficient On-device Training
via Gradient Filtering"), exactly as the paper's repository runs it (Conv2dAvgOp in
custom_op/conv_avg.py of github.com/trungnl2000/cls_gradfilt, the authors' code of that
baseline). With y = conv(x) of spatial size (h, w) and patch r:
  p_h = ceil(h / r); x is SUM-pooled (avg_pool2d with divisor_override=1) over windows of
  (r*stride_h) x (r*stride_w), stride the same, zero padding ceil((p_h*r*stride_h - x_h)/2);
  dy is MEAN-pooled over r x r windows, padding ceil((p_h*r - h)/2), count_include_pad=False;
  dW[co, ci, :, :] = sum over (n, i, j) of dy_avg[n, co, i, j] * x_sum[n, ci, i, j], the same
  value at every kernel tap (groups == 1); depthwise (groups == C == C'): dW[c, 0] likewise
  with ci = c. The reference handles only those two; cases marked "ext" extend it the obvious
  way (grouped: input channels of the output channel's group; depthwise with a channel
  multiplier: input channel co // m) and are computed here by the same formula with einsum.
  Keys: {c}__x, {c}__dy, {c}__geom (as above, plus r last), {c}__xsum, {c}__dw.
"""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

EPS = [("e050", 0.5), ("e080", 0.8), ("e090", 0.9), ("e100", 1.0)]
MARGIN = 1e-3


def write_npz(path, arrays):
    """np.savez_compressed, but with fixed zip timestamps so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)


def f32(a):
    return np.asarray(a, dtype=np.float32)


def low_rank_tensor(rng, dims, ranks, noise):
    """A Tucker tensor of the given multilinear ranks plus noise (relative to the signal's rms): decaying spectra, so each
    eps picks a different rank, and full rank, so eps = 1 keeps everything."""
    core = rng.standard_normal(ranks) * np.exp(-0.3 * sum(np.ix_(*[np.arange(r) for r in ranks])))
    t = core
    for n, (d, r) in enumerate(zip(dims, ranks)):
        q = np.linalg.qr(rng.standard_normal((d, r)))[0]  # orthonormal: the core sets the spectra
        t = np.moveaxis(np.tensordot(q, np.moveaxis(t, n, 0), axes=1), 0, n)
    return f32(t + noise * np.sqrt(np.mean(t**2)) * rng.standard_normal(dims))


def unfold(a, n):
    return np.moveaxis(a, n, 0).reshape(a.shape[n], -1)


class NearThreshold(Exception):
    pass


def first_robust_seed(seed, make):
    """make(seed) for the first seed from `seed` on whose ranks do not hinge on rounding."""
    for s in range(seed, seed + 100):
        try:
            return make(s)
        except NearThreshold:
            pass
    raise RuntimeError(f"no robust seed in {seed}..{seed + 100}")


def eps_rank(s, eps):
    """The paper's rule on singular values s (descending); eps = 1 keeps all of them. Raises
    NearThreshold when a share lies within MARGIN of eps (the rank would hinge on rounding)."""
    if eps >= 1.0:
        return len(s)
    share = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(share, eps)) + 1
    near = np.abs(share[:-1] - eps).min() if len(share) > 1 else 1.0
    if near < MARGIN:
        raise NearThreshold
    return k


def hosvd(a, eps):
    a = a.astype(np.float64)
    us = []
    for n in range(a.ndim):
        u, s, _ = np.linalg.svd(unfold(a, n), full_matrices=False)
        us.append(u[:, : eps_rank(s, eps)])
    core = a
    for n, u in enumerate(us):
        core = np.moveaxis(np.tensordot(u.T, np.moveaxis(core, n, 0), axes=1), 0, n)
    recon = core
    for n, u in enumerate(us):
        recon = np.moveaxis(np.tensordot(u, np.moveaxis(recon, n, 0), axes=1), 0, n)
    return [u.shape[1] for u in us], recon


def conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def geom_array(g):
    return f32([g["c_out"], g["k"], g["k"], g["s"], g["s"], g["p"], g["p"], g["d"], g["d"], g["groups"]])


def conv_wgrad(x, g, dy):
    return torch.nn.grad.conv2d_weight(
        torch.from_numpy(x), (g["c_out"], x.shape[1] // g["groups"], g["k"], g["k"]),
        torch.from_numpy(dy), stride=g["s"], padding=g["p"], dilation=g["d"], groups=g["groups"],
    ).numpy()


# ------------------------------------------------------------------ HOSVD

TENSORS = {
    # name: (dims, Tucker ranks of the signal, noise, seed, conv cases)
    "t4": ((4, 6, 5, 5), (3, 4, 3, 3), 0.2, 1, {
        "c3x3": dict(c_out=5, k=3, s=1, p=1, d=1, groups=1),
        "s2": dict(c_out=4, k=3, s=2, p=1, d=1, groups=1),
        "pw": dict(c_out=7, k=1, s=1, p=0, d=1, groups=1),
        "g2": dict(c_out=4, k=3, s=1, p=1, d=1, groups=2),
        "dw": dict(c_out=6, k=3, s=1, p=1, d=1, groups=6),
    }),
    "t3": ((3, 8, 6, 6), (2, 5, 4, 3), 0.2, 2, {
        "c3x3": dict(c_out=5, k=3, s=1, p=1, d=1, groups=1),
        "s2d2": dict(c_out=4, k=3, s=2, p=2, d=2, groups=1),
        "pw": dict(c_out=3, k=1, s=1, p=0, d=1, groups=1),
        "g2": dict(c_out=6, k=3, s=2, p=1, d=1, groups=2),
        "dwm2": dict(c_out=16, k=3, s=1, p=1, d=1, groups=8),
    }),
    # More channels than the rest of the unfolding (like 960 channels at 1x1 spatial).
    "t5": ((3, 20, 2, 2), (2, 6, 2, 2), 0.2, 3, {
        "pw": dict(c_out=6, k=1, s=1, p=0, d=1, groups=1),
        "dw": dict(c_out=20, k=3, s=1, p=1, d=1, groups=20),
    }),
    "t3d": ((5, 4, 6), (3, 2, 3), 0.2, 4, {}),
    "m2": ((12, 20), (5, 6), 0.2, 5, {}),
}
LINEAR_N = 7


def make_hosvd():
    out = {}
    for t, (dims, ranks, noise, seed, convs) in TENSORS.items():
        out.update(first_robust_seed(seed, lambda s: hosvd_case(t, dims, ranks, noise, convs, s)))
    return out


def hosvd_case(t, dims, ranks, noise, convs, seed):
    out = {}
    rng = np.random.default_rng(seed)
    x = low_rank_tensor(rng, dims, ranks, noise)
    out[f"{t}__x"] = x
    dys = {}
    for c, g in convs.items():
        oh = conv_out(dims[2], g["k"], g["s"], g["p"], g["d"])
        ow = conv_out(dims[3], g["k"], g["s"], g["p"], g["d"])
        dys[c] = rng.standard_normal((dims[0], g["c_out"], oh, ow))
        out[f"{t}__{c}__geom"] = geom_array(g)
        out[f"{t}__{c}__dy"] = f32(dys[c])
    if len(dims) == 2:
        dy_lin = rng.standard_normal((dims[0], LINEAR_N))
        out[f"{t}__lin__dy"] = f32(dy_lin)
    for e, eps in EPS:
        r, recon = hosvd(x, eps)
        out[f"{t}__{e}__ranks"] = f32(r)
        out[f"{t}__{e}__recon"] = f32(recon)
        for c, g in convs.items():
            dy = f32(dys[c]).astype(np.float64)
            out[f"{t}__{c}__{e}__dw"] = f32(conv_wgrad(recon, g, dy))
        if len(dims) == 2:
            out[f"{t}__{e}__dw_lin"] = f32(recon.T @ f32(dy_lin).astype(np.float64))
    return out


# ------------------------------------------------------------------ SVD baseline

SVD_TENSORS = {
    "t4": ((4, 6, 5, 5), (3, 4, 3, 3), 0.2, 1),
    "wide": ((12, 20), (5, 6), 0.2, 5),
    "tall": ((10, 2, 2, 2), (6, 2, 2, 2), 0.2, 6),
}


def make_svd():
    out = {}
    for t, (dims, ranks, noise, seed) in SVD_TENSORS.items():
        out.update(first_robust_seed(seed, lambda s: svd_case(t, dims, ranks, noise, s)))
    return out


def svd_case(t, dims, ranks, noise, seed):
    out = {}
    x = low_rank_tensor(np.random.default_rng(seed), dims, ranks, noise)
    out[f"{t}__x"] = x
    mat = x.reshape(dims[0], -1).astype(np.float64)
    u, s, vt = np.linalg.svd(mat, full_matrices=False)
    for e, eps in EPS:
        k = eps_rank(s, eps)
        out[f"{t}__{e}__rank"] = f32([k])
        out[f"{t}__{e}__recon"] = f32(((u[:, :k] * s[:k]) @ vt[:k]).reshape(dims))
    return out


# ------------------------------------------------------------------ gradient filter

GF_CASES = {
    # name: (x dims, geometry, r, seed); "ext" = beyond what the reference op supports
    "c3x3_r2": ((2, 4, 8, 8), dict(c_out=5, k=3, s=1, p=1, d=1, groups=1), 2, 11),
    "c3x3_r4": ((2, 4, 8, 8), dict(c_out=5, k=3, s=1, p=1, d=1, groups=1), 4, 12),
    "c3x3_r7": ((2, 4, 8, 8), dict(c_out=5, k=3, s=1, p=1, d=1, groups=1), 7, 13),
    "s2_odd_r2": ((2, 4, 7, 7), dict(c_out=3, k=3, s=2, p=1, d=1, groups=1), 2, 14),
    "pw_r2": ((2, 6, 6, 6), dict(c_out=4, k=1, s=1, p=0, d=1, groups=1), 2, 15),
    "dw_r2": ((2, 4, 8, 8), dict(c_out=4, k=3, s=1, p=1, d=1, groups=4), 2, 16),
    "dw_s2_r4": ((2, 4, 9, 9), dict(c_out=4, k=3, s=2, p=1, d=1, groups=4), 4, 17),
    "ext_g2_r2": ((2, 4, 8, 8), dict(c_out=6, k=3, s=1, p=1, d=1, groups=2), 2, 18),
    "ext_dwm2_r2": ((2, 3, 6, 6), dict(c_out=6, k=3, s=1, p=1, d=1, groups=3), 2, 19),
}


def gradfilter_reference(x, dy, g, r):
    """Conv2dAvgOp's forward saving and backward weight gradient, op for op."""
    x, dy = torch.from_numpy(x), torch.from_numpy(dy)
    (x_h, x_w), (h, w) = x.shape[-2:], dy.shape[-2:]
    s = g["s"]
    p_h, p_w = math.ceil(h / r), math.ceil(w / r)
    x_pad_h, x_pad_w = math.ceil((p_h * r * s - x_h) / 2), math.ceil((p_w * r * s - x_w) / 2)
    x_sum = F.avg_pool2d(x, kernel_size=(r * s, r * s), stride=(r * s, r * s),
                         padding=(x_pad_h, x_pad_w), divisor_override=1)
    gy_pad_h, gy_pad_w = math.ceil((p_h * r - h) / 2), math.ceil((p_w * r - w) / 2)
    gy_avg = F.avg_pool2d(dy, kernel_size=r, stride=r, padding=(gy_pad_h, gy_pad_w),
                          count_include_pad=False)
    c_out, c_in, groups, k = g["c_out"], x.shape[1], g["groups"], g["k"]
    if groups == 1:
        gw = gy_avg.permute(1, 0, 2, 3).flatten(1) @ x_sum.permute(0, 2, 3, 1).flatten(0, -2)
        dw = gw.view(c_out, c_in, 1, 1).expand(c_out, c_in, k, k)
    elif groups == c_in == c_out:
        gw = (x_sum * gy_avg).sum(dim=(0, 2, 3))
        dw = gw.view(c_out, 1, 1, 1).expand(c_out, 1, k, k)
    else:  # the extension: each output channel meets its own group's input channels
        cig, cog = c_in // groups, c_out // groups
        xs = x_sum.view(x.shape[0], groups, cig, p_h, p_w)
        ga = gy_avg.view(x.shape[0], groups, cog, p_h, p_w)
        gw = torch.einsum("ngohw,ngihw->goi", ga, xs).reshape(c_out, cig)
        dw = gw.view(c_out, cig, 1, 1).expand(c_out, cig, k, k)
    return x_sum.numpy(), dw.contiguous().numpy()


def make_gradfilter():
    out = {}
    for c, (dims, g, r, seed) in GF_CASES.items():
        rng = np.random.default_rng(seed)
        x = f32(rng.standard_normal(dims))
        oh = conv_out(dims[2], g["k"], g["s"], g["p"], g["d"])
        ow = conv_out(dims[3], g["k"], g["s"], g["p"], g["d"])
        dy = f32(rng.standard_normal((dims[0], g["c_out"], oh, ow)))
        x_sum, dw = gradfilter_reference(x.astype(np.float64), dy.astype(np.float64), g, r)
        out[f"{c}__x"] = x
        out[f"{c}__dy"] = dy
        out[f"{c}__geom"] = np.concatenate([geom_array(g), f32([r])])
        out[f"{c}__xsum"] = f32(x_sum)
        out[f"{c}__dw"] = f32(dw)
    return out


def main():
    for name, make in [("hosvd", make_hosvd), ("svd", make_svd), ("gradfilter", make_gradfilter)]:
        arrays = make()
        path = HERE / f"{name}.npz"
        write_npz(path, arrays)
        print(f"{path.name}: {len(arrays)} arrays, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
