"""The paper's HOSVD-compressed convolution in PyTorch (Nguyen et al., NeurIPS 2024), the
reference actc's `--compress hosvd` is measured beside.

A trained conv keeps, instead of its input X (B, C, H, W), a truncated HOSVD of it: per mode,
the leading eigenvectors of the mode's Gram matrix up to the smallest rank whose eigenvalues
reach `eps` of their sum (the ε rule, all four modes including the batch; `max_rank` caps it as
actc's `--max-rank` does), and the core X ×₁ U₁ᵀ … ×₄ U₄ᵀ, recomputed every step. The weight
gradient is the exact conv weight gradient of the reconstruction X̂ = core ×₁ U₁ … ×₄ U₄ (the
paper contracts the factors directly: the same function, in another order); the input
gradient and the bias's do not need X and stay exact.

`center=True` is the variant this study adds: the per-channel mean over (B, H, W) is kept
exactly and only the residual is decomposed, X̂ = m + HOSVD(X − m). `fixed` gives the ranks
per mode instead of the ε rule (actc's `--rank-rule auto` on maps with a spatial extent:
batch 8, channels `max_rank`, 4 per spatial axis; actc tracks those factors from step to step
by one subspace iteration, this reference decomposes afresh).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def eps_rank(eigenvalues_desc: torch.Tensor, eps: float) -> int:
    """The smallest k >= 1 whose leading eigenvalues reach eps of their sum."""
    ev = eigenvalues_desc.clamp(min=0)
    total = float(ev.sum())
    if total == 0.0:
        return 1
    cum = torch.cumsum(ev, 0)
    return int((cum < eps * total).sum()) + 1 if eps < 1 else int((ev > 0).sum())


def hosvd(x: torch.Tensor, eps: float, max_rank: int | None,
          fixed: list[int] | None = None) -> tuple[torch.Tensor, list[int]]:
    """Truncated HOSVD of x by the ε rule, or at `fixed` ranks: (reconstruction, rank per
    mode)."""
    factors, ranks = [], []
    for n in range(x.dim()):
        unfold = x.movedim(n, 0).reshape(x.shape[n], -1).double()
        evals, evecs = torch.linalg.eigh(unfold @ unfold.T)
        evals, evecs = evals.flip(0), evecs.flip(1)
        k = eps_rank(evals, eps) if fixed is None else fixed[n]
        k = min(k, x.shape[n], unfold.shape[1])
        if max_rank is not None:
            k = min(k, max_rank)
        factors.append(evecs[:, :k].to(x.dtype))
        ranks.append(k)
    core = x
    for n, u in enumerate(factors):
        core = torch.tensordot(core.movedim(n, -1), u, dims=1).movedim(-1, n)
    out = core
    for n, u in enumerate(factors):
        out = torch.tensordot(out.movedim(n, -1), u.T, dims=1).movedim(-1, n)
    return out, ranks


def paper_bytes(shape: torch.Size, ranks: list[int], center: bool) -> int:
    """The paper's memory metric: factors and core in f32 (and the mean, when centered)."""
    core = 1
    for k in ranks:
        core *= k
    return 4 * (sum(d * k for d, k in zip(shape, ranks)) + core + (shape[1] if center else 0))


class _HosvdConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, conv: nn.Conv2d, eps, max_rank, center, fixed, log):
        if center:
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            approx, ranks = hosvd(x - mean, eps, max_rank, fixed)
            approx = approx + mean
        else:
            approx, ranks = hosvd(x, eps, max_rank, fixed)
        log.append((ranks, paper_bytes(x.shape, ranks, center), 4 * x.numel()))
        ctx.save_for_backward(approx, weight)
        ctx.conv, ctx.has_bias, ctx.x_shape = conv, bias is not None, x.shape
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    @staticmethod
    def backward(ctx, dy):
        approx, weight = ctx.saved_tensors
        c = ctx.conv
        args = (c.stride, c.padding, c.dilation, c.groups)
        dx = torch.nn.grad.conv2d_input(ctx.x_shape, weight, dy, *args)
        dw = torch.nn.grad.conv2d_weight(approx, weight.shape, dy, *args)
        db = dy.sum(dim=(0, 2, 3)) if ctx.has_bias else None
        return dx, dw, db, None, None, None, None, None, None


class HosvdConv2d(nn.Module):
    """Wraps a trained nn.Conv2d so that backward sees the HOSVD of its input; `log` collects
    (ranks, paper bytes, vanilla bytes) per training forward."""

    def __init__(self, conv: nn.Conv2d, eps: float, max_rank: int | None, rule: str):
        super().__init__()
        self.conv, self.eps, self.max_rank, self.rule = conv, eps, max_rank, rule
        self.log: list = []

    def forward(self, x):
        if not torch.is_grad_enabled():
            return self.conv(x)
        c = self.conv
        # actc's rules: `auto` fixes the ranks of maps with a spatial extent, centers the rest.
        fixed = None
        if self.rule == "auto" and x.shape[2] * x.shape[3] > 1:
            fixed = [8, self.max_rank or 32, 4, 4]
        center = self.rule == "centered" or (self.rule == "auto" and fixed is None)
        return _HosvdConv.apply(x, c.weight, c.bias, c, self.eps, self.max_rank, center, fixed,
                                self.log)


def compress_convs(model: nn.Module, names: list[str], **kw) -> list[HosvdConv2d]:
    """Replaces the named Conv2d modules of `model` by HosvdConv2d wrappers."""
    wrapped = []
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        w = HosvdConv2d(getattr(parent, attr), **kw)
        setattr(parent, attr, w)
        wrapped.append(w)
    return wrapped
