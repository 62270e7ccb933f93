//! Kernel geometry from an op's attributes and its buffers' shapes: one rule shared by the
//! planner and the executor (which also sizes each step's scratch from it, `step`).

use crate::kernels::chain;
use crate::kernels::geometry::Conv2dGeom;
use crate::kernels::pool::Pool2dGeom;
use crate::ops;

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

/// [`conv`] where the kernels can run it, else what does not fit: 4-D shapes, groups that
/// divide both channel counts and match the weight, strides and dilations of at least 1,
/// a window no larger than the padded input, and sizes (the im2col scratch's included)
/// that do not overflow.
pub fn conv_fit(c: &ops::Conv, x: &[u64], w: &[u64]) -> Result<Conv2dGeom, String> {
    if x.len() != 4 || w.len() != 4 {
        return Err(format!("a conv of shapes {x:?} and {w:?}, not 4-D"));
    }
    let g = conv(c, x, w);
    let groups_fit = g.c_in.is_multiple_of(g.groups)
        && g.c_out.is_multiple_of(g.groups)
        && g.cin_per_group() as u64 == w[1];
    if !groups_fit {
        return Err(format!(
            "{} groups for weight {w:?} on input {x:?}",
            g.groups
        ));
    }
    window_fits([g.h, g.w], [g.kh, g.kw], g.stride, g.dilation, g.pad)?;
    let (oh, ow) = (g.out_h(), g.out_w());
    let plane = oh.checked_mul(ow);
    let sizes = [
        g.cin_per_group()
            .checked_mul(g.kh)
            .and_then(|n| n.checked_mul(g.kw)),
        g.c_in.checked_add(g.c_out).and_then(|c| c.checked_mul(g.n)),
        g.n.checked_mul(g.c_out),
    ];
    let fit = sizes
        .into_iter()
        .all(|d| plane.zip(d).and_then(|(p, d)| p.checked_mul(d)).is_some());
    match fit {
        true if oh > 0 && ow > 0 => Ok(g),
        _ => Err(format!("a conv window {w:?} that does not fit input {x:?}")),
    }
}

/// A sliding window the kernels can run: strides, dilations and the kernel at least 1, and
/// its span computed without overflow.
fn window_fits(
    input: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pad: [usize; 4],
) -> Result<(), String> {
    for a in 0..2 {
        let span = (kernel[a].checked_sub(1))
            .and_then(|k| k.checked_mul(dilation[a]))
            .and_then(|k| k.checked_add(1));
        let padded = input[a]
            .checked_add(pad[a])
            .and_then(|p| p.checked_add(pad[a + 2]));
        if stride[a] == 0 || dilation[a] == 0 || span.is_none() || padded.is_none() {
            return Err(format!(
                "a window of {kernel:?} taps, strides {stride:?}, dilations {dilation:?}"
            ));
        }
    }
    Ok(())
}

/// The stages of a [`ops::ConvChain`] whose inputs (x, then each stage's weight and bias)
/// have the shapes `shape(i)` gives.
#[derive(Clone, Copy)]
pub struct Chain {
    stages: [Conv2dGeom; chain::MAX_STAGES],
    len: usize,
    /// Input index of each stage's weight; its quantization (int8 stages) and its bias,
    /// when it has them, follow in that order.
    pub weight: [usize; chain::MAX_STAGES],
    pub qparams: [Option<usize>; chain::MAX_STAGES],
    pub bias: [Option<usize>; chain::MAX_STAGES],
    /// Inputs the chain reads.
    pub inputs: usize,
}

impl Chain {
    pub fn stages(&self) -> &[Conv2dGeom] {
        &self.stages[..self.len]
    }
}

/// [`Chain`] of `cc`, `None` where the shapes do not chain: a missing or non-4-D shape, a
/// weight that does not fit its stage's input, a quantization or bias of the wrong length,
/// an empty output.
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
        qparams: [None; chain::MAX_STAGES],
        bias: [None; chain::MAX_STAGES],
        inputs: 1,
    };
    for (s, stage) in cc.stages.iter().enumerate() {
        let w = four(out.inputs)?;
        let g = conv_fit(stage.conv.as_ref()?, &x, w).ok()?;
        out.weight[s] = out.inputs;
        let mut next = out.inputs + 1;
        // The next input, which holds `count` values per output channel.
        let mut per_channel = |count: u64| {
            next += 1;
            (shape(next - 1)?.iter().product::<u64>() == count * g.c_out as u64).then_some(next - 1)
        };
        let qparams = if stage.int8 {
            Some(per_channel(2)?)
        } else {
            None
        };
        let bias = if stage.bias {
            Some(per_channel(1)?)
        } else {
            None
        };
        (out.qparams[s], out.bias[s], out.inputs) = (qparams, bias, next);
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

/// [`pool`] where the kernels can run it: a 4-D input, a 2-D window that fits it, and
/// padding smaller than the window, so every window holds an input element.
pub fn pool_fit(p: &ops::Pool, x: &[u64]) -> Result<Pool2dGeom, String> {
    if x.len() != 4 || p.kernel.len() != 2 {
        return Err(format!("a pool of input {x:?} and window {:?}", p.kernel));
    }
    let g = pool(p, x);
    window_fits([g.h, g.w], [g.kh, g.kw], g.stride, g.dilation, g.pad)?;
    let span = |a: usize| ([g.kh, g.kw][a] - 1) * g.dilation[a] + 1;
    if (0..4).any(|i| g.pad[i] >= span(i % 2)) || g.out_h() == 0 || g.out_w() == 0 {
        return Err(format!(
            "a pool window {:?} that does not fit input {x:?}",
            p.kernel
        ));
    }
    Ok(g)
}
