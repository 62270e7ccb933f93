//! A plan's [`Compressor`] put to work: the sizes of its compressed buffer and scratch (the
//! planner's view) and the calls into the compress kernels (the executor's), one mapping
//! from the plan's attributes for both.

use super::hosvd::Ranks;
use super::{center, gradfilter, hosvd, svd};
use crate::exec::geom::{self, Dims};
use crate::kernels::geometry::Conv2dGeom;
use crate::ops::{Compressor, Conv, Method};

impl Compressor {
    fn method(&self) -> &Method {
        self.method
            .as_ref()
            .expect("validated: a compressor has a method")
    }

    fn dims(&self) -> Dims {
        Dims::of(self.shape.iter().map(|&d| d as usize))
    }

    /// The (batch, rest) unfolding the SVD baseline decomposes.
    fn rows_cols(&self) -> (usize, usize) {
        let d = self.dims();
        let rows = d[0];
        (rows, d.iter().product::<usize>() / rows.max(1))
    }

    fn caps(h: &crate::ops::Hosvd) -> Dims {
        Dims::of(h.caps.iter().map(|&c| c as usize))
    }

    /// Floats of the exact mean ahead of a centered HOSVD's packed buffer (0 uncentered).
    fn mean_len(&self, h: &crate::ops::Hosvd) -> usize {
        if h.center {
            center::mean_len(&self.dims())
        } else {
            0
        }
    }

    /// The conv geometry gradient filtering pools along.
    fn filter_geom(f: &crate::ops::GradFilter, x: &[u64]) -> Conv2dGeom {
        let conv = f.conv.as_ref().expect("validated: gradfilter has its conv");
        geom::conv(conv, x, &f.weight_shape)
    }

    /// Checks what the kernels assume, for the executor's plan validation: the sizes below
    /// are then products of the activation's own, which its buffer bounds.
    pub fn check(&self) -> Result<(), String> {
        let numel = self.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        if !(1..=4).contains(&self.shape.len()) || self.shape.contains(&0) || numel.is_none() {
            return Err(format!("compressed activation shape {:?}", self.shape));
        }
        let d = self.dims();
        let numel = numel.unwrap_or(0) as usize;
        // A rank is no larger than its mode, so the factors and the core are sized by it.
        let rank_fits = |cap: u32, d: usize| (1..=d).contains(&(cap as usize));
        let factors_fit = |caps: &[u32]| {
            let factors = caps.iter().zip(d.iter()).try_fold(0usize, |n, (&c, &d)| {
                n.checked_add(d.checked_mul(c as usize)?)
            });
            let core = caps
                .iter()
                .try_fold(1usize, |n, &c| n.checked_mul(c as usize));
            factors.zip(core).is_some()
        };
        match &self.method {
            None => Err("a compressor without a method (written by a newer actc?)".into()),
            Some(Method::Hosvd(h))
                if !(2..=4).contains(&self.shape.len())
                    || h.caps.len() != self.shape.len()
                    || !h.caps.iter().zip(d.iter()).all(|(&c, &d)| rank_fits(c, d))
                    || !factors_fit(&h.caps) =>
            {
                Err(format!(
                    "HOSVD rank caps {:?} for shape {:?}",
                    h.caps, self.shape
                ))
            }
            Some(Method::Svd(s)) if !rank_fits(s.cap, d[0].min(numel / d[0])) => {
                Err(format!("SVD rank cap {} for shape {:?}", s.cap, self.shape))
            }
            Some(Method::GradFilter(f)) => match &f.conv {
                Some(c) if f.patch > 0 => {
                    let g = geom::conv_fit(c, &self.shape, &f.weight_shape)
                        .map_err(|e| format!("gradient filter: {e}"))?;
                    gradfilter::patches_fit(&g, f.patch as usize)
                        .then_some(())
                        .ok_or_else(|| format!("gradient filter patch {}", f.patch))
                }
                _ => Err("gradient filter without a patch or its conv".into()),
            },
            Some(_) => Ok(()),
        }
    }

    /// f32 elements of the compressed form (at the rank caps).
    pub fn packed_len(&self) -> usize {
        match self.method() {
            Method::Hosvd(h) => self.mean_len(h) + hosvd::packed_len(&self.dims(), &Self::caps(h)),
            Method::Svd(s) => {
                let (rows, cols) = self.rows_cols();
                svd::packed_len(rows, cols, s.cap as usize)
            }
            Method::GradFilter(f) => {
                let g = Self::filter_geom(f, &self.shape);
                gradfilter::pooled_dims(&g, f.patch as usize)
                    .iter()
                    .product()
            }
        }
    }

    /// Bytes of the activation kept as is.
    pub fn vanilla_bytes(&self) -> usize {
        self.dims().iter().product::<usize>() * 4
    }

    /// The paper's memory metric for the ranks a step used (DESIGN §4 (a)).
    pub fn paper_bytes(&self, ranks: &Ranks) -> usize {
        match self.method() {
            Method::Hosvd(h) => {
                self.mean_len(h) * 4 + hosvd::paper_bytes(&self.dims(), &ranks.used)
            }
            Method::Svd(_) => {
                let (rows, cols) = self.rows_cols();
                svd::paper_bytes(rows, cols, ranks.used[0])
            }
            Method::GradFilter(f) => {
                let g = Self::filter_geom(f, &self.shape);
                gradfilter::paper_bytes(&g, f.patch as usize)
            }
        }
    }

    pub fn compress_workspace_len(&self) -> usize {
        match self.method() {
            Method::Hosvd(h) => {
                let eps = (!h.fixed).then_some(h.eps);
                // A centered HOSVD decomposes the residual, kept in front of its scratch.
                let residual = if h.center {
                    self.vanilla_bytes() / 4
                } else {
                    0
                };
                residual + hosvd::workspace_len(&self.dims(), &Self::caps(h), eps)
            }
            Method::Svd(s) => {
                let (rows, cols) = self.rows_cols();
                svd::workspace_len(rows, cols, s.cap as usize)
            }
            Method::GradFilter(_) => 0,
        }
    }

    pub fn decompress_workspace_len(&self) -> usize {
        match self.method() {
            Method::Hosvd(h) => hosvd::reconstruct_workspace_len(&self.dims(), &Self::caps(h)),
            Method::Svd(_) | Method::GradFilter(_) => 0,
        }
    }

    /// Scratch of the fused conv weight gradient; `w` is the weight's shape.
    pub fn conv_grad_workspace_len(&self, conv: &Conv, w: &[u64]) -> usize {
        let g = geom::conv(conv, &self.shape, w);
        match self.method() {
            Method::Hosvd(h) => {
                let mean = if h.center {
                    center::conv_weight_grad_workspace_len(&g)
                } else {
                    0
                };
                hosvd::conv_weight_grad_workspace_len(&self.dims(), &Self::caps(h), &g).max(mean)
            }
            Method::GradFilter(f) => {
                gradfilter::conv_weight_grad_workspace_len(&g, f.patch as usize)
            }
            Method::Svd(_) => 0,
        }
    }

    /// Scratch of the fused dense weight gradient; `n` is the layer's output features.
    pub fn linear_grad_workspace_len(&self, n: usize) -> usize {
        match self.method() {
            Method::Hosvd(h) => {
                let mean = if h.center {
                    center::linear_weight_grad_workspace_len(n)
                } else {
                    0
                };
                hosvd::linear_weight_grad_workspace_len(&self.dims(), &Self::caps(h), n).max(mean)
            }
            Method::Svd(_) | Method::GradFilter(_) => 0,
        }
    }

    /// Floats of the state a compression keeps from step to step: the factors of a
    /// fixed-rank HOSVD, the vectors the ε rule tracks; nothing otherwise.
    pub fn state_len(&self) -> usize {
        match self.method() {
            Method::Hosvd(h) if h.fixed => hosvd::state_len(&self.dims(), &Self::caps(h)),
            Method::Hosvd(h) => hosvd::eps_state_len(&self.dims(), &Self::caps(h), h.eps),
            _ => 0,
        }
    }

    /// x → packed; returns the ranks used (zero for gradient filtering, which has none).
    /// `state` (of [`state_len`], when that is not 0) carries what the next step starts from.
    ///
    /// [`state_len`]: Compressor::state_len
    pub fn compress(
        &self,
        x: &[f32],
        state: &mut [f32],
        packed: &mut [f32],
        ws: &mut [f32],
    ) -> Ranks {
        match self.method() {
            Method::Hosvd(h) => {
                let caps = Self::caps(h);
                let rule = if h.fixed {
                    hosvd::Rule::Fixed(state)
                } else {
                    hosvd::Rule::Eps(h.eps, state)
                };
                let dims = self.dims();
                if h.center {
                    let (mean, packed) = packed.split_at_mut(self.mean_len(h));
                    let (residual, ws) = ws.split_at_mut(x.len());
                    center::split(x, &dims, mean, residual);
                    hosvd::compress(residual, &dims, rule, &caps, packed, ws)
                } else {
                    hosvd::compress(x, &dims, rule, &caps, packed, ws)
                }
            }
            Method::Svd(s) => {
                let (rows, cols) = self.rows_cols();
                let (used, wanted) =
                    svd::compress(x, rows, cols, s.eps, s.cap as usize, packed, ws);
                Ranks {
                    used: [used, 0, 0, 0],
                    wanted: [wanted, 0, 0, 0],
                }
            }
            Method::GradFilter(f) => {
                let g = Self::filter_geom(f, &self.shape);
                gradfilter::compress(x, &g, f.patch as usize, packed);
                Ranks {
                    used: [0; 4],
                    wanted: [0; 4],
                }
            }
        }
    }

    /// packed → x̂. Gradient filtering has no decompressed form: the compress pass always
    /// emits it fused, and plan validation rejects a `Decompress` of it.
    pub fn decompress(&self, packed: &[f32], x: &mut [f32], ws: &mut [f32]) {
        match self.method() {
            Method::Hosvd(h) => {
                let dims = self.dims();
                let (mean, packed) = packed.split_at(self.mean_len(h));
                hosvd::reconstruct(packed, &dims, &Self::caps(h), x, ws);
                if h.center {
                    center::add_mean(x, &dims, mean);
                }
            }
            Method::Svd(s) => {
                let (rows, cols) = self.rows_cols();
                svd::reconstruct(packed, rows, cols, s.cap as usize, x)
            }
            Method::GradFilter(_) => unreachable!("validated: gradient filtering is fused"),
        }
    }

    /// A conv's weight gradient from the compressed input, stored as `dw ← alpha·∂W +
    /// beta·dw` (depthwise under HOSVD: overwritten only); `dw`'s shape is `w`.
    #[allow(clippy::too_many_arguments)] // the conv, its compressed input, dy and the store
    pub fn conv_weight_grad(
        &self,
        conv: &Conv,
        w: &[u64],
        packed: &[f32],
        dy: &[f32],
        alpha: f32,
        beta: f32,
        dw: &mut [f32],
        ws: &mut [f32],
    ) {
        let g = geom::conv(conv, &self.shape, w);
        match self.method() {
            Method::Hosvd(h) => {
                let (dims, caps) = (self.dims(), Self::caps(h));
                let (mean, packed) = packed.split_at(self.mean_len(h));
                hosvd::conv_weight_grad(packed, &dims, &caps, &g, dy, alpha, beta, dw, ws);
                if h.center {
                    center::conv_weight_grad(mean, &g, dy, alpha, dw, ws);
                }
            }
            Method::GradFilter(f) => {
                let r = f.patch as usize;
                gradfilter::conv_weight_grad(packed, &g, r, dy, alpha, beta, dw, ws)
            }
            Method::Svd(_) => unreachable!("validated: SVD is never fused"),
        }
    }

    /// A dense layer's weight gradient from the compressed input.
    pub fn linear_weight_grad(
        &self,
        trans_b: bool,
        packed: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        ws: &mut [f32],
    ) {
        match self.method() {
            Method::Hosvd(h) => {
                let (dims, caps) = (self.dims(), Self::caps(h));
                let (mean, packed) = packed.split_at(self.mean_len(h));
                hosvd::linear_weight_grad(packed, &dims, &caps, dy, trans_b, dw, ws);
                if h.center {
                    center::linear_weight_grad(mean, dy, trans_b, dw, ws);
                }
            }
            Method::Svd(_) | Method::GradFilter(_) => {
                unreachable!("validated: only HOSVD fuses into a dense layer")
            }
        }
    }

    /// Whether the fused weight gradients exist for this method (what validation checks).
    pub fn fuses_into(&self, conv: bool) -> bool {
        match self.method {
            Some(Method::Hosvd(_)) => true,
            Some(Method::GradFilter(_)) => conv,
            _ => false,
        }
    }
}
