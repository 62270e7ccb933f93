//! Kernel geometry from an op's attributes and its buffers' shapes, and the scratch each
//! step needs: one rule shared by the planner (which sizes the scratch) and the executor.

use crate::kernels::chain;
use crate::kernels::conv;
use crate::kernels::geometry::Conv2dGeom;
use crate::kernels::pool::Pool2dGeom;
use crate::ops::{self, Kind};

/// A short list of sizes on the stack: shapes, permutations, axes, pads. Steps build these
/// from the plan's fields on every run, and a step must not allocate.
#[derive(Clone, Copy)]
pub struct Dims {
    d: [usize; 16],
    n: usize,
}

impl Dims {
    pub fn of(values: impl IntoIterator<Item = usize>) -> Dims {
        let mut d = Dims { d: [0; 16], n: 0 };
        for v in values {
            d.d[d.n] = v;
            d.n += 1;
        }
        d
    }
}

impl std::ops::Deref for Dims {
    type Target = [usize];
    fn deref(&self) -> &[usize] {
        &self.d[..self.n]
    }
}

impl std::ops::DerefMut for Dims {
    fn deref_mut(&mut self) -> &mut [usize] {
        &mut self.d[..self.n]
    }
}

fn pair(v: &[u32], default: usize) -> [usize; 2] {
    [
        v.first().map_or(default, |&x| x as usize),
        v.get(1).map_or(default, |&x| x as usize),
    ]
}

fn pads(v: &[u32]) -> [usize; 4] {
    let p = |i: usize| v.get(i).map_or(0, |&x| x as usize);
    [p(0), p(1), p(2), p(3)]
}

/// `x` is the convolution's input shape (N, C, H, W), `w` its weight's (M, C/g, kh, kw).
pub fn conv(c: &ops::Conv, x: &[u64], w: &[u64]) -> Conv2dGeom {
    Conv2dGeom {
        n: x[0] as usize,
        c_in: x[1] as usize,
        h: x[2] as usize,
        w: x[3] as usize,
        c_out: w[0] as usize,
        kh: w[2] as usize,
        kw: w[3] as usize,
        stride: pair(&c.strides, 1),
        pad: pads(&c.pads),
        dilation: pair(&c.dilations, 1),
        groups: c.group.max(1) as usize,
    }
}

/// The stages of a [`ops::ConvChain`] whose inputs (x, then each stage's weight and bias)
/// have the shapes `shape(i)` gives.
#[derive(Clone, Copy)]
pub struct Chain {
    stages: [Conv2dGeom; chain::MAX_STAGES],
    len: usize,
    /// Input index of each stage's weight (its bias, when it has one, is the next).
    pub weight: [usize; chain::MAX_STAGES],
    /// Inputs the chain reads.
    pub inputs: usize,
}

impl Chain {
    pub fn stages(&self) -> &[Conv2dGeom] {
        &self.stages[..self.len]
    }
}

/// [`Chain`] of `cc`, `None` where the shapes do not chain: a missing or non-4-D shape, a
/// weight that does not fit its stage's input, a bias of the wrong length, an empty output.
pub fn chain<'a>(cc: &ops::ConvChain, shape: impl Fn(usize) -> Option<&'a [u64]>) -> Option<Chain> {
    if cc.stages.is_empty() || cc.stages.len() > chain::MAX_STAGES {
        return None;
    }
    let four = |i: usize| shape(i).filter(|s| s.len() == 4 && s.iter().all(|&d| d > 0));
    let mut x: [u64; 4] = four(0)?.try_into().ok()?;
    let mut out = Chain {
        stages: Default::default(),
        len: cc.stages.len(),
        weight: [0; chain::MAX_STAGES],
        inputs: 1,
    };
    for (s, stage) in cc.stages.iter().enumerate() {
        let w = four(out.inputs)?;
        let g = conv(stage.conv.as_ref()?, &x, w);
        let groups_fit = g.groups >= 1
            && g.c_in.is_multiple_of(g.groups)
            && g.c_out.is_multiple_of(g.groups)
            && g.cin_per_group() == w[1] as usize;
        let geometry_fits =
            g.stride.iter().chain(&g.dilation).all(|&v| v >= 1) && g.out_h() > 0 && g.out_w() > 0;
        if !groups_fit || !geometry_fits {
            return None;
        }
        out.weight[s] = out.inputs;
        out.inputs += 1;
        if stage.bias {
            if shape(out.inputs)?.iter().product::<u64>() != g.c_out as u64 {
                return None;
            }
            out.inputs += 1;
        }
        out.stages[s] = g;
        x = [x[0], g.c_out as u64, g.out_h() as u64, g.out_w() as u64];
    }
    Some(out)
}

/// `x` is the pool's input shape. Ceil mode is already folded into the end padding.
pub fn pool(p: &ops::Pool, x: &[u64]) -> Pool2dGeom {
    Pool2dGeom {
        n: x[0] as usize,
        c: x[1] as usize,
        h: x[2] as usize,
        w: x[3] as usize,
        kh: p.kernel[0] as usize,
        kw: p.kernel[1] as usize,
        stride: pair(&p.strides, 1),
        pad: pads(&p.pads),
        dilation: pair(&p.dilations, 1),
        ceil_mode: false,
    }
}

/// f32 elements of scratch a step needs, from its inputs' and outputs' shapes.
pub fn workspace_len(kind: &Kind, inputs: &[&[u64]], outputs: &[&[u64]]) -> usize {
    match kind {
        Kind::Conv(c) => conv::forward_workspace_len(&conv(c, inputs[0], inputs[1])),
        Kind::ConvClip(cc) => cc.conv.as_ref().map_or(0, |c| {
            conv::forward_workspace_len(&conv(c, inputs[0], inputs[1]))
        }),
        // dy, w → dx
        Kind::ConvBackwardData(c) => conv::workspace_len(&conv(c, outputs[0], inputs[1])),
        // x, dy → dw
        Kind::ConvBackwardWeight(c) => conv::workspace_len(&conv(c, inputs[0], outputs[0])),
        // x or its compressed form, dy, w, [momentum]
        Kind::ConvBackwardWeightSgd(cs) => match (&cs.conv, &cs.compressor) {
            (Some(c), None) => conv::workspace_len(&conv(c, inputs[0], inputs[2])),
            (Some(c), Some(compressor)) => compressor.conv_grad_workspace_len(c, inputs[2]),
            (None, _) => 0,
        },
        Kind::ConvChain(cc) => chain(cc, |i| inputs.get(i).copied()).map_or(0, |ch| {
            chain::workspace_len(ch.stages(), cc.rows as usize, cc.lanes as usize)
        }),
        Kind::Compress(c) => c.compress_workspace_len(),
        Kind::Decompress(c) => c.decompress_workspace_len(),
        // packed, dy → dw
        Kind::ConvBackwardWeightCompressed(cc) => match (&cc.conv, &cc.compressor) {
            (Some(conv), Some(c)) => c.conv_grad_workspace_len(conv, outputs[0]),
            _ => 0,
        },
        Kind::LinearGradWCompressed(cl) => cl.compressor.as_ref().map_or(0, |c| {
            c.linear_grad_workspace_len(*inputs[1].last().unwrap_or(&1) as usize)
        }),
        _ => 0,
    }
}
