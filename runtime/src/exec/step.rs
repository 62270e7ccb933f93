//! One plan step: its buffers looked up and handed to the kernel for its op.

use super::geom::{self, Dims};
use super::memory::View;
use crate::compress::hosvd::Ranks;
use crate::kernels::elementwise::{self, BinaryOp};
use crate::kernels::linear::{self, GemmGeom, MatMulGeom};
use crate::kernels::norm::{self, BatchNormParams};
use crate::kernels::shape::AxisSplit;
use crate::kernels::{activation as act, chain, conv, loss, pool, shape};
use crate::ops::{Kind, PoolKind};
use crate::optim;
use crate::plan::{Buffer, DType, Plan, Step};

/// What an update step needs beyond its buffers.
pub struct UpdateCtx {
    pub lr: f32,
    /// Updates taken so far, this one included (PyTorch's step count, from 1).
    pub step: u64,
}

fn dims(b: &Buffer) -> Dims {
    Dims::of(b.shape.iter().map(|&d| d as usize))
}

fn usizes(v: &[u32]) -> Dims {
    Dims::of(v.iter().map(|&d| d as usize))
}

/// Elements per channel of an (N, C, …) tensor.
fn plane(b: &Buffer) -> usize {
    b.shape.iter().skip(2).product::<u64>() as usize
}

/// What a step reports beyond its buffers.
pub enum Ran {
    Nothing,
    Loss(f32),
    /// A compression step: the ranks it kept and the ones its ε rule asked for.
    Compressed(Ranks),
}

/// Runs `step`.
///
/// # Safety
/// `mem` must hold the plan's buffers at their planned offsets. Buffers a step reads and
/// writes are live at that step, so the planner gave them disjoint bytes (checked on every
/// bundled model by the planner tests), except a Reshape's input and output, which share
/// memory by design and are handled first.
pub unsafe fn run(plan: &Plan, step: &Step, mem: &View, upd: &UpdateCtx) -> Ran {
    let kind = step.kind().expect("plan steps carry an op");
    let bi = |i: usize| plan.buffer(step.inputs[i]);
    let bo = |i: usize| plan.buffer(step.outputs[i]);
    // SAFETY (all closures): see the function's contract.
    let x = |i: usize| unsafe { mem.f32(bi(i)) };
    let xm = |i: usize| unsafe { mem.f32_mut(bi(i)) };
    let y = |i: usize| unsafe { mem.f32_mut(bo(i)) };
    let ws = || match step.workspace {
        Some(w) => unsafe { mem.f32_mut(plan.buffer(w)) },
        None => &mut [][..],
    };
    let words = |i: usize| unsafe { mem.u32(bi(i)) };
    match kind {
        Kind::Reshape(_) => {
            if bi(0).offset != bo(0).offset {
                y(0).copy_from_slice(x(0));
            }
        }
        Kind::Conv(c) => {
            let g = geom::conv(c, &bi(0).shape, &bi(1).shape);
            let bias = (step.inputs.len() > 2).then(|| x(2));
            conv::forward(&g, x(0), x(1), bias, y(0), ws());
        }
        Kind::ConvClip(cc) => {
            let g = geom::conv(
                cc.conv.as_ref().expect("validated"),
                &bi(0).shape,
                &bi(1).shape,
            );
            let bias = (step.inputs.len() > 2).then(|| x(2));
            let clip = cc.clip.clone().unwrap_or_default();
            conv::forward_clipped(&g, x(0), x(1), bias, (clip.min, clip.max), y(0), ws());
        }
        Kind::ConvChain(cc) => {
            let ch = geom::chain(cc, |i| {
                step.inputs.get(i).map(|&b| &plan.buffer(b).shape[..])
            })
            .expect("validated");
            let n = ch.stages().len();
            // An array, as a step must not allocate; past the chain, unused copies.
            let stages: [chain::Stage; chain::MAX_STAGES] = std::array::from_fn(|s| {
                let s = s.min(n - 1);
                let (st, w) = (&cc.stages[s], ch.weight[s]);
                chain::Stage {
                    g: ch.stages()[s],
                    w: x(w),
                    bias: st.bias.then(|| x(w + 1)),
                    clip: st.clip.as_ref().map(|c| (c.min, c.max)),
                }
            });
            let (rows, lanes) = (cc.rows as usize, cc.lanes as usize);
            chain::forward(&stages[..n], cc.residual, rows, lanes, x(0), y(0), ws());
        }
        Kind::ConvBackwardData(c) => {
            let g = geom::conv(c, &bo(0).shape, &bi(1).shape);
            conv::backward_data(&g, x(1), x(0), y(0), ws());
        }
        Kind::ConvBackwardWeight(c) => {
            let g = geom::conv(c, &bi(0).shape, &bo(0).shape);
            conv::backward_weight(&g, x(0), x(1), y(0), ws());
        }
        Kind::BiasGrad(_) => {
            // Sum over every axis but 1: the same reduction as broadcasting a (1, C, 1, …)
            // bias, expressed as a reduce to that shape.
            let dy = dims(bi(0));
            let mut target = Dims::of(dy.iter().map(|_| 1));
            target[1] = dy[1];
            elementwise::reduce_to_shape(1.0, x(0), &dy, y(0), &target);
        }
        Kind::Gemm(gm) => {
            let g = gemm_geom(gm, bi(0), bi(1));
            let c = (step.inputs.len() > 2).then(|| (x(2), dims(bi(2))));
            linear::gemm_forward(&g, x(0), x(1), c.as_ref().map(|(c, s)| (*c, &s[..])), y(0));
        }
        Kind::GemmGradA(gm) => {
            // dy, b → da: A's shape is the output's.
            let g = gemm_geom(gm, bo(0), bi(1));
            linear::gemm_backward(&g, &[], x(1), x(0), Some(y(0)), None, None);
        }
        Kind::GemmGradB(gm) => {
            // a, dy → db
            let g = gemm_geom(gm, bi(0), bo(0));
            linear::gemm_backward(&g, x(0), &[], x(1), None, Some(y(0)), None);
        }
        Kind::MatMul(_) => linear::matmul_forward(&matmul_geom(bi(0), bi(1)), x(0), x(1), y(0)),
        Kind::MatMulGradX(_) => {
            let g = matmul_geom(bo(0), bi(1));
            linear::matmul_backward(&g, &[], x(1), x(0), Some(y(0)), None);
        }
        Kind::MatMulGradW(_) => {
            let g = matmul_geom(bi(0), bo(0));
            linear::matmul_backward(&g, x(0), &[], x(1), None, Some(y(0)));
        }
        Kind::BatchNorm(e) => {
            let p = BatchNormParams {
                scale: x(1),
                bias: x(2),
                mean: x(3),
                var: x(4),
                epsilon: e.epsilon,
            };
            norm::forward(&p, plane(bi(0)), x(0), y(0));
        }
        Kind::BatchNormBackward(e) => {
            let p = BatchNormParams {
                scale: x(1),
                bias: x(2),
                mean: x(3),
                var: x(4),
                epsilon: e.epsilon,
            };
            norm::backward(&p, plane(bi(0)), x(0), y(0));
        }
        Kind::LayerNorm(l) => {
            let g = norm::LayerNormGeom::new(&dims(bi(0)), l.axis as i64, l.epsilon)
                .expect("the axis is within the input's rank");
            let bias = (step.inputs.len() > 2).then(|| x(2));
            norm::layer_norm_forward(&g, x(0), x(1), bias, y(0), y(1), y(2));
        }
        Kind::LayerNormBackward(l) => {
            let g = norm::LayerNormGeom::new(&dims(bi(0)), l.axis as i64, l.epsilon)
                .expect("the axis is within the input's rank");
            let dbias = (step.outputs.len() > 2).then(|| y(2));
            let (dx, dscale) = (Some(y(0)), Some(y(1)));
            norm::layer_norm_backward(&g, x(0), x(1), x(2), x(3), x(4), dx, dscale, dbias);
        }
        Kind::Relu(_) => act::relu_forward(x(0), y(0)),
        Kind::ReluBackward(_) => act::relu_backward(x(0), x(1), y(0)),
        Kind::Clip(c) => act::clip_forward(c.min, c.max, x(0), y(0)),
        Kind::ClipBackward(c) => act::clip_backward(c.min, c.max, x(0), x(1), y(0)),
        Kind::LeakyRelu(a) => act::leaky_relu_forward(a.alpha, x(0), y(0)),
        Kind::LeakyReluBackward(a) => act::leaky_relu_backward(a.alpha, x(0), x(1), y(0)),
        Kind::PRelu(_) => act::prelu_forward(plane(bi(0)), x(0), x(1), y(0)),
        Kind::PReluBackward(_) => act::prelu_backward(plane(bi(0)), x(0), x(1), x(2), y(0), y(1)),
        Kind::Sigmoid(_) => act::sigmoid_forward(x(0), y(0)),
        Kind::SigmoidBackward(_) => act::sigmoid_backward(x(0), x(1), y(0)),
        Kind::HardSigmoid(h) => act::hard_sigmoid_forward(h.alpha, h.beta, x(0), y(0)),
        Kind::HardSigmoidBackward(h) => {
            act::hard_sigmoid_backward(h.alpha, h.beta, x(0), x(1), y(0))
        }
        Kind::HardSwish(_) => act::hard_swish_forward(x(0), y(0)),
        Kind::HardSwishBackward(_) => act::hard_swish_backward(x(0), x(1), y(0)),
        Kind::Add(_) | Kind::Sub(_) | Kind::Mul(_) | Kind::Div(_) => {
            let op = match kind {
                Kind::Add(_) => BinaryOp::Add,
                Kind::Sub(_) => BinaryOp::Sub,
                Kind::Mul(_) => BinaryOp::Mul,
                _ => BinaryOp::Div,
            };
            elementwise::binary_forward(op, x(0), &dims(bi(0)), x(1), &dims(bi(1)), y(0));
        }
        Kind::BroadcastGrad(b) => {
            let (dy, out) = (dims(bi(0)), dims(bo(0)));
            match b.with_other {
                0 => elementwise::reduce_to_shape(b.scale, x(0), &dy, y(0), &out),
                w => {
                    let other = dims(bi(1));
                    if w == 1 {
                        elementwise::mul_backward(&[], &out, x(1), &other, x(0), Some(y(0)), None);
                    } else {
                        elementwise::div_backward(&[], &out, x(1), &other, x(0), Some(y(0)), None);
                    }
                    if b.scale != 1.0 {
                        y(0).iter_mut().for_each(|v| *v *= b.scale);
                    }
                }
            }
        }
        Kind::Concat(a) => {
            let outer: usize = bo(0).shape[..a.axis as usize].iter().product::<u64>() as usize;
            // Input by input, so no list of slices is built.
            let out = y(0);
            let row = out.len() / outer.max(1);
            let mut offset = 0;
            for i in 0..step.inputs.len() {
                let xi = x(i);
                let len = xi.len() / outer.max(1);
                for (o, src) in xi.chunks_exact(len.max(1)).enumerate().take(outer) {
                    out[o * row + offset..][..len].copy_from_slice(src);
                }
                offset += len;
            }
        }
        Kind::Slice(s) => slice(x(0), &dims(bi(0)), &s.starts, y(0), &dims(bo(0))),
        Kind::Transpose(p) => {
            shape::transpose_forward(&dims(bi(0)), &usizes(&p.perm), x(0), y(0));
        }
        Kind::GlobalAveragePool(_) => pool::global_avg_forward(plane(bi(0)), x(0), y(0)),
        Kind::AveragePool(p) => pool::avg_forward(
            &geom::pool(p, &bi(0).shape),
            p.count_include_pad,
            x(0),
            y(0),
        ),
        Kind::MaxPool(p) => {
            // Only a trained MaxPool has the taps output its backward reads.
            let g = geom::pool(p, &bi(0).shape);
            match step.outputs.get(1).map(|_| bo(1)) {
                None => pool::max_forward::<u8>(&g, x(0), y(0), None),
                Some(t) if t.dtype() == DType::U8 => {
                    pool::max_forward(&g, x(0), y(0), Some(unsafe { mem.u8_mut(t) }))
                }
                Some(t) => pool::max_forward(&g, x(0), y(0), Some(unsafe { mem.u32_mut(t) })),
            }
        }
        Kind::PoolBackward(pb) => match pb.pool.as_ref().expect("pool kind") {
            PoolKind::Global(_) => pool::global_avg_backward(plane(bo(0)), x(0), y(0)),
            PoolKind::Average(p) => pool::avg_backward(
                &geom::pool(p, &bo(0).shape),
                p.count_include_pad,
                x(0),
                y(0),
            ),
            PoolKind::Max(p) => {
                let (g, t) = (geom::pool(p, &bo(0).shape), bi(1));
                if t.dtype() == DType::U8 {
                    pool::max_backward(&g, unsafe { mem.u8(t) }, x(0), y(0));
                } else {
                    pool::max_backward(&g, unsafe { mem.u32(t) }, x(0), y(0));
                }
            }
            PoolKind::ReduceMean(a) => {
                shape::reduce_mean_backward(&dims(bo(0)), &usizes(&a.axes), x(0), y(0));
            }
        },
        Kind::ReduceMean(a) => {
            shape::reduce_mean_forward(&dims(bi(0)), &usizes(&a.axes), x(0), y(0));
        }
        Kind::Pad(p) => {
            shape::pad_forward(&dims(bi(0)), &usizes(&p.pads), p.value, x(0), y(0));
        }
        Kind::Softmax(a) => {
            shape::softmax_forward(&AxisSplit::new(&dims(bi(0)), a.axis as usize), x(0), y(0))
        }
        Kind::SoftmaxBackward(a) => shape::softmax_backward(
            &AxisSplit::new(&dims(bi(0)), a.axis as usize),
            x(0),
            x(1),
            y(0),
        ),
        Kind::SoftmaxCrossEntropy(_) => {
            let classes = bi(0).shape[1] as usize;
            let l = loss::softmax_cross_entropy_forward(classes, x(0), words(1), y(1));
            y(0)[0] = l;
            return Ran::Loss(l);
        }
        Kind::SoftmaxCrossEntropyBackward(_) => {
            let classes = bi(0).shape[1] as usize;
            loss::softmax_cross_entropy_backward(classes, x(0), words(1), y(0));
        }
        Kind::Mse(_) => {
            let l = loss::mse_forward(x(0), x(1));
            y(0)[0] = l;
            return Ran::Loss(l);
        }
        Kind::MseBackward(_) => loss::mse_backward(x(0), x(1), y(0)),
        Kind::Accumulate(_) => {
            let out = y(0);
            out.copy_from_slice(x(0));
            for i in 1..step.inputs.len() {
                elementwise::accumulate(x(i), out);
            }
        }
        Kind::GradNorm(s) => {
            let total: f64 = (0..step.inputs.len())
                .map(|i| optim::sum_of_squares(x(i)))
                .sum();
            y(0)[0] = optim::clip_coefficient(total, s.scale);
        }
        Kind::SgdUpdate(s) => {
            let sgd = optim::Sgd::from(s);
            let has_state = sgd.state_len(1) > 0;
            clip_if_scaled(step, plan, mem, if has_state { 3 } else { 2 });
            let state = if has_state { xm(2) } else { &mut [][..] };
            sgd.step(upd.lr, upd.step, xm(0), x(1), state);
        }
        Kind::ConvBackwardWeightSgd(cs) => {
            let (c, s) = (cs.conv.as_ref(), cs.sgd.as_ref());
            let (c, s) = c.zip(s).expect("validated");
            let sgd = optim::Sgd::from(s);
            let state = if sgd.state_len(1) > 0 {
                xm(3)
            } else {
                &mut [][..]
            };
            let (x, dy, ws, w_shape) = (x(0), x(1), ws(), &bi(2).shape);
            let grad = |alpha, beta, dst: &mut [f32]| match &cs.compressor {
                Some(compressor) => {
                    compressor.conv_weight_grad(c, w_shape, x, dy, alpha, beta, dst, ws)
                }
                None => {
                    let g = geom::conv(c, &bi(0).shape, w_shape);
                    conv::backward_weight_into(&g, x, dy, alpha, beta, dst, ws)
                }
            };
            sgd.step_fused(upd.lr, upd.step, xm(2), state, grad);
        }
        Kind::AdamWUpdate(a) => {
            let adam = optim::AdamW {
                beta1: a.beta1,
                beta2: a.beta2,
                eps: a.epsilon,
                weight_decay: a.weight_decay,
            };
            clip_if_scaled(step, plan, mem, 3);
            adam.step(upd.lr, upd.step, xm(0), x(1), xm(2));
        }
        Kind::PassMask(c) => act::pass_mask(c.min, c.max, x(0), unsafe { mem.u32_mut(bo(0)) }),
        Kind::MaskedGrad(_) => act::masked_grad(words(0), x(1), y(0)),
        Kind::Compress(c) => {
            let state = if step.inputs.len() > 1 {
                xm(1)
            } else {
                &mut [][..]
            };
            return Ran::Compressed(c.compress(x(0), state, y(0), ws()));
        }
        Kind::Decompress(c) => c.decompress(x(0), y(0), ws()),
        Kind::ConvBackwardWeightCompressed(cc) => {
            let (conv, c) = compressed(&cc.conv, &cc.compressor);
            c.conv_weight_grad(conv, &bo(0).shape, x(0), x(1), 1.0, 0.0, y(0), ws());
        }
        Kind::LinearGradWCompressed(cl) => {
            let c = cl.compressor.as_ref().expect("validated");
            c.linear_weight_grad(cl.trans_b, x(0), x(1), y(0), ws());
        }
    }
    Ran::Nothing
}

/// The two halves of a fused compressed conv gradient (validation checked both are there).
pub fn compressed<'a>(
    conv: &'a Option<crate::ops::Conv>,
    c: &'a Option<crate::ops::Compressor>,
) -> (&'a crate::ops::Conv, &'a crate::ops::Compressor) {
    (
        conv.as_ref().expect("validated"),
        c.as_ref().expect("validated"),
    )
}

/// With gradient clipping an update's last input is the clip coefficient: scale the
/// gradient (input 1) by it first.
fn clip_if_scaled(step: &Step, plan: &Plan, mem: &View, scale_at: usize) {
    if let Some(&s) = step.inputs.get(scale_at) {
        // SAFETY: the scale and the gradient are distinct live buffers of this step.
        let coef = unsafe { mem.f32(plan.buffer(s)) }[0];
        optim::scale_gradient(coef, unsafe { mem.f32_mut(plan.buffer(step.inputs[1])) });
    }
}

fn gemm_geom(g: &crate::ops::Gemm, a: &Buffer, b: &Buffer) -> GemmGeom {
    let (a0, a1) = (a.shape[0] as usize, a.shape[1] as usize);
    let (b0, b1) = (b.shape[0] as usize, b.shape[1] as usize);
    let (m, k) = if g.trans_a { (a1, a0) } else { (a0, a1) };
    let n = if g.trans_b { b0 } else { b1 };
    GemmGeom {
        m,
        n,
        k,
        trans_a: g.trans_a,
        trans_b: g.trans_b,
        alpha: g.alpha,
        beta: g.beta,
    }
}

fn matmul_geom(x: &Buffer, w: &Buffer) -> MatMulGeom {
    let k = w.shape[0] as usize;
    MatMulGeom {
        rows: x.numel() / k.max(1),
        k,
        n: w.shape[1] as usize,
    }
}

/// Copies the window of `x` that starts at `starts` and has `y`'s shape.
fn slice(x: &[f32], x_shape: &[usize], starts: &[u32], y: &mut [f32], y_shape: &[usize]) {
    let rank = x_shape.len();
    let mut x_strides = Dims::of(x_shape.iter().map(|_| 1));
    for d in (0..rank.saturating_sub(1)).rev() {
        x_strides[d] = x_strides[d + 1] * x_shape[d + 1];
    }
    let base: usize = (0..rank).map(|d| starts[d] as usize * x_strides[d]).sum();
    let row = y_shape.last().copied().unwrap_or(1);
    let rows = y.len() / row.max(1);
    let mut index = Dims::of((1..rank).map(|_| 0));
    for r in 0..rows {
        let off: usize = base
            + index
                .iter()
                .zip(x_strides.iter())
                .map(|(i, s)| i * s)
                .sum::<usize>();
        y[r * row..(r + 1) * row].copy_from_slice(&x[off..off + row]);
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < y_shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
}
