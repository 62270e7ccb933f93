//! One plan step: its buffers looked up and handed to the kernel for its op.

use super::geom::{self, Dims};
use super::memory::View;
use crate::compress::hosvd::Ranks;
use crate::kernels::elementwise::{self, BinaryOp};
use crate::kernels::linear::{self, GemmGeom, MatMulGeom};
use crate::kernels::norm::{self, BatchNormParams};
use crate::kernels::qgemm::QWeights;
use crate::kernels::shape::AxisSplit;
use crate::kernels::{activation as act, chain, conv, loss, pool, qconv, resize, shape};
use crate::ops::{Kind, PoolBackward, PoolKind};
use crate::optim;
use crate::plan::{Buffer, DType, Plan, Step};

/// f32 elements of scratch a step needs, from its inputs' and outputs' shapes.
pub fn workspace_len(kind: &Kind, inputs: &[&[u64]], outputs: &[&[u64]]) -> usize {
    match kind {
        Kind::Conv(c) => conv::forward_workspace_len(&geom::conv(c, inputs[0], inputs[1])),
        Kind::ConvClip(cc) => cc.conv.as_ref().map_or(0, |c| {
            let g = geom::conv(c, inputs[0], inputs[1]);
            if cc.int8 {
                qconv::workspace_len(&g)
            } else {
                conv::forward_workspace_len(&g)
            }
        }),
        // dy, w → dx
        Kind::ConvBackwardData(c) => conv::workspace_len(&geom::conv(c, outputs[0], inputs[1])),
        // x, dy → dw
        Kind::ConvBackwardWeight(c) => conv::workspace_len(&geom::conv(c, inputs[0], outputs[0])),
        // x, w, [b] → y: the input gradient of the conv from y's shape to x's
        Kind::ConvTranspose(c) => conv::workspace_len(&geom::conv(c, outputs[0], inputs[1])),
        // dy, w → dx: that conv's forward
        Kind::ConvTransposeBackwardData(c) => {
            conv::forward_workspace_len(&geom::conv(c, inputs[0], inputs[1]))
        }
        // dy, x → dw: that conv's weight gradient, dy as its input
        Kind::ConvTransposeBackwardWeight(c) => {
            conv::workspace_len(&geom::conv(c, inputs[0], outputs[0]))
        }
        // x or its compressed form, dy, w, [momentum]
        Kind::ConvBackwardWeightSgd(cs) => match (&cs.conv, &cs.compressor) {
            (Some(c), None) => conv::workspace_len(&geom::conv(c, inputs[0], inputs[2])),
            (Some(c), Some(compressor)) => compressor.conv_grad_workspace_len(c, inputs[2]),
            (None, _) => 0,
        },
        Kind::ConvChain(cc) => geom::chain(cc, |i| inputs.get(i).copied()).map_or(0, |ch| {
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
    // The int8 weight before input `i`, its quantization: (2, c_out), steps then sums.
    let qweights = |i: usize| {
        let (q, params) = (unsafe { mem.i8(bi(i - 1)) }, x(i));
        let rows = params.len() / 2;
        QWeights {
            q,
            scale: &params[..rows],
            sum: &params[rows..],
            rows,
            k: q.len() / rows,
        }
    };
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
            let clip = cc.clip.as_ref().map(|c| (c.min, c.max));
            if cc.int8 {
                let w = qweights(2);
                let bias = (step.inputs.len() > 3).then(|| x(3));
                qconv::forward(&g, x(0), &w, bias, clip, y(0), ws());
            } else {
                let bias = (step.inputs.len() > 2).then(|| x(2));
                let clip = clip.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
                conv::forward_clipped(&g, x(0), x(1), bias, clip, y(0), ws());
            }
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
                chain::Stage {
                    g: ch.stages()[s],
                    w: match ch.qparams[s] {
                        Some(q) => chain::Weights::Int8(qweights(q)),
                        None => chain::Weights::F32(x(ch.weight[s])),
                    },
                    bias: ch.bias[s].map(x),
                    clip: cc.stages[s].clip.as_ref().map(|c| (c.min, c.max)),
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
        Kind::ConvTranspose(c) => {
            let g = geom::conv(c, &bo(0).shape, &bi(1).shape);
            let bias = (step.inputs.len() > 2).then(|| x(2));
            conv::transpose_forward(&g, x(0), x(1), bias, y(0), ws());
        }
        Kind::ConvTransposeBackwardData(c) => {
            let g = geom::conv(c, &bi(0).shape, &bi(1).shape);
            conv::transpose_backward_data(&g, x(1), x(0), y(0), ws());
        }
        Kind::ConvTransposeBackwardWeight(c) => {
            let g = geom::conv(c, &bi(0).shape, &bo(0).shape);
            conv::transpose_backward_weight(&g, x(1), x(0), y(0), ws());
        }
        Kind::Resize(r) => {
            let g = resize::fit(r, &bi(0).shape, &bo(0).shape).expect("checked with the plan");
            resize::forward(&g, x(0), y(0));
        }
        Kind::ResizeBackward(r) => {
            let g = resize::fit(r, &bo(0).shape, &bi(0).shape).expect("checked with the plan");
            resize::backward(&g, x(0), y(0));
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
            let g = gemm_geom(gm, &bi(0).shape, &bi(1).shape);
            let c = (step.inputs.len() > 2).then(|| (x(2), dims(bi(2))));
            linear::gemm_forward(&g, x(0), x(1), c.as_ref().map(|(c, s)| (*c, &s[..])), y(0));
        }
        Kind::GemmGradA(gm) => {
            // dy, b → da: A's shape is the output's.
            let g = gemm_geom(gm, &bo(0).shape, &bi(1).shape);
            linear::gemm_backward(&g, &[], x(1), x(0), Some(y(0)), None, None);
        }
        Kind::GemmGradB(gm) => {
            // a, dy → db
            let g = gemm_geom(gm, &bi(0).shape, &bo(0).shape);
            linear::gemm_backward(&g, x(0), &[], x(1), None, Some(y(0)), None);
        }
        Kind::MatMul(_) => {
            let bias = (step.inputs.len() > 2).then(|| x(2));
            linear::matmul_forward(&matmul_geom(bi(0), bi(1)), x(0), x(1), bias, y(0))
        }
        Kind::MatMulInt8(_) => {
            let w = qweights(2);
            let g = MatMulGeom {
                rows: bi(0).numel() / w.k.max(1),
                k: w.k,
                n: w.rows,
            };
            let bias = (step.inputs.len() > 3).then(|| x(3));
            linear::matmul_forward_int8(&g, x(0), &w, bias, y(0))
        }
        Kind::MatMulGradX(_) => {
            let g = matmul_geom(bo(0), bi(1));
            linear::matmul_backward(&g, &[], x(1), x(0), Some(y(0)), None);
        }
        Kind::MatMulGradW(_) => {
            let g = matmul_geom(bi(0), bo(0));
            linear::matmul_backward(&g, x(0), &[], x(1), None, Some(y(0)));
        }
        Kind::BatchMatMul(t) => {
            let g = batch_geom(t.trans_a, t.trans_b, &bi(0).shape, &bi(1).shape)
                .expect("checked with the plan");
            linear::batch_matmul(&g, x(0), x(1), y(0));
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
        Kind::Gelu(g) => act::gelu_forward(g.tanh, x(0), y(0)),
        Kind::GeluBackward(g) => act::gelu_backward(g.tanh, x(0), x(1), y(0)),
        Kind::Tanh(_) => act::tanh_forward(x(0), y(0)),
        Kind::TanhBackward(_) => act::tanh_backward(x(0), x(1), y(0)),
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
        Kind::Gather(g) => {
            let split = AxisSplit::new(&dims(bi(0)), g.axis as usize);
            shape::gather_forward(split, &g.indices, x(0), y(0));
        }
        Kind::GatherBackward(g) => {
            let split = AxisSplit::new(&dims(bo(0)), g.axis as usize);
            shape::gather_backward(split, &g.indices, x(0), y(0));
        }
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
                shape::reduce_backward(true, &dims(bo(0)), &usizes(&a.axes), x(0), y(0));
            }
            PoolKind::ReduceSum(a) => {
                shape::reduce_backward(false, &dims(bo(0)), &usizes(&a.axes), x(0), y(0));
            }
        },
        Kind::ReduceMean(a) => {
            shape::reduce_forward(true, &dims(bi(0)), &usizes(&a.axes), x(0), y(0));
        }
        Kind::ReduceSum(a) => {
            shape::reduce_forward(false, &dims(bi(0)), &usizes(&a.axes), x(0), y(0));
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
        Kind::Mse(s) => {
            let l = loss::mse_forward(x(0), x(1), &s.sizes, &s.weights);
            y(0)[0] = l;
            return Ran::Loss(l);
        }
        Kind::MseBackward(s) => loss::mse_backward(x(0), x(1), &s.sizes, &s.weights, y(0)),
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
            sgd.step(s.lr(upd.lr), upd.step, xm(0), x(1), state);
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
            sgd.step_fused(s.lr(upd.lr), upd.step, xm(2), state, grad);
        }
        Kind::AdamWUpdate(a) => {
            let adam = optim::AdamW::from(a);
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

/// Whether `run` can run `step` on its buffers: the arity, types and shapes its kernel
/// assumes, from the same geometry `run` derives. A plan file is anyone's to write, and a
/// kernel indexes its slices by that geometry, some through raw pointers. Called after
/// validation checked that the buffers exist and fit their regions, and the compressions,
/// fused chains and fused updates.
pub fn check(plan: &Plan, step: &Step) -> Result<(), String> {
    let kind = step.kind().ok_or("no operation")?;
    let io = Io { plan, step };
    // These write inputs in place (the weight, its state, a scaled gradient).
    let writes_inputs = matches!(
        kind,
        Kind::SgdUpdate(_)
            | Kind::AdamWUpdate(_)
            | Kind::ConvBackwardWeightSgd(_)
            | Kind::Compress(_)
    );
    let inputs = &step.inputs;
    if writes_inputs && (1..inputs.len()).any(|i| inputs[..i].contains(&inputs[i])) {
        return Err("an input it updates in place is also another of its inputs".into());
    }
    let (labels, taps_in, mask_out, taps_out) = match kind {
        Kind::SoftmaxCrossEntropy(_) | Kind::SoftmaxCrossEntropyBackward(_) => {
            (Some(1), None, None, None)
        }
        Kind::MaskedGrad(_) => (Some(0), None, None, None),
        Kind::PoolBackward(PoolBackward {
            pool: Some(PoolKind::Max(_)),
        }) => (None, Some(1), None, None),
        Kind::PassMask(_) => (None, None, Some(0), None),
        Kind::MaxPool(_) => (None, None, None, Some(1)),
        _ => (None, None, None, None),
    };
    let int8_weight = |i: usize| int8_weights(kind).any(|w| w == i);
    let ty = |b: &Buffer, words: bool, taps: bool, bytes: bool| match b.dtype() {
        DType::U32 => words || taps,
        DType::U8 => taps,
        DType::I8 => bytes,
        DType::F32 => !words && !taps && !bytes,
        DType::I64 => false,
    };
    let inputs_typed = (0..step.inputs.len()).all(|i| {
        ty(
            io.x(i),
            labels == Some(i),
            taps_in == Some(i),
            int8_weight(i),
        )
    });
    let outputs_typed = (0..step.outputs.len())
        .all(|i| ty(io.y(i), mask_out == Some(i), taps_out == Some(i), false));
    let ws_typed = step
        .workspace
        .is_none_or(|w| plan.buffer(w).dtype() == DType::F32);
    if !(inputs_typed && outputs_typed && ws_typed) {
        return Err("a buffer of another type than its kernel reads or writes".into());
    }
    match kind {
        Kind::Reshape(_) => {
            io.arity(1..=1, 1..=1)?;
            io.eq_len(io.x(0).numel(), io.y(0).numel(), "the output")
        }
        Kind::Conv(c) => conv_check(&io, c, false),
        Kind::ConvClip(cc) => conv_check(&io, cc.conv.as_ref().ok_or("no conv")?, cc.int8),
        // Checked with the chain's stages (`check_chain`).
        Kind::ConvChain(_) => io.arity(1..=usize::MAX, 1..=1),
        Kind::ConvBackwardData(c) => {
            io.arity(2..=2, 1..=1)?;
            let g = geom::conv_fit(c, io.shape_o(0), io.shape_i(1))?;
            io.shape(io.shape_i(0), &conv_out(&g), "dy")?;
            io.scratch(conv::workspace_len(&g))
        }
        Kind::ConvBackwardWeight(c) => {
            io.arity(2..=2, 1..=1)?;
            let g = geom::conv_fit(c, io.shape_i(0), io.shape_o(0))?;
            io.shape(io.shape_i(1), &conv_out(&g), "dy")?;
            io.scratch(conv::workspace_len(&g))
        }
        // x, w, [b] → y: the input gradient of the conv from y's shape to x's
        Kind::ConvTranspose(c) => {
            io.arity(2..=3, 1..=1)?;
            let g = geom::conv_fit(c, io.shape_o(0), io.shape_i(1))?;
            io.shape(io.shape_i(0), &conv_out(&g), "x")?;
            if io.step.inputs.len() > 2 {
                io.eq_len(io.x(2).numel(), g.c_in, "the bias")?;
            }
            io.scratch(conv::workspace_len(&g))
        }
        // dy, w → dx: that conv's forward
        Kind::ConvTransposeBackwardData(c) => {
            io.arity(2..=2, 1..=1)?;
            let g = geom::conv_fit(c, io.shape_i(0), io.shape_i(1))?;
            io.shape(io.shape_o(0), &conv_out(&g), "dx")?;
            io.scratch(conv::forward_workspace_len(&g))
        }
        // dy, x → dw: that conv's weight gradient, dy as its input
        Kind::ConvTransposeBackwardWeight(c) => {
            io.arity(2..=2, 1..=1)?;
            let g = geom::conv_fit(c, io.shape_i(0), io.shape_o(0))?;
            io.shape(io.shape_i(1), &conv_out(&g), "x")?;
            io.scratch(conv::workspace_len(&g))
        }
        Kind::Resize(r) => {
            io.arity(1..=1, 1..=1)?;
            resize::fit(r, io.shape_i(0), io.shape_o(0)).map(|_| ())
        }
        Kind::ResizeBackward(r) => {
            io.arity(1..=1, 1..=1)?;
            resize::fit(r, io.shape_o(0), io.shape_i(0)).map(|_| ())
        }
        Kind::ConvBackwardWeightSgd(cs) => {
            // The arity, the optimizer and the compressed input are checked with the other
            // fused updates (`check_fused_update`, `check_compression`).
            let c = cs.conv.as_ref().ok_or("no conv")?;
            let x = cs
                .compressor
                .as_ref()
                .map_or(io.shape_i(0), |c| &c.shape[..]);
            let g = geom::conv_fit(c, x, io.shape_i(2))?;
            io.shape(io.shape_i(1), &conv_out(&g), "dy")?;
            if let Some(&m) = step.inputs.get(3) {
                io.shape(&plan.buffer(m).shape, io.shape_i(2), "the momentum")?;
            }
            let ws = match &cs.compressor {
                Some(compressor) => compressor.conv_grad_workspace_len(c, io.shape_i(2)),
                None => conv::workspace_len(&g),
            };
            io.scratch(ws)
        }
        Kind::ConvBackwardWeightCompressed(cc) => {
            io.arity(2..=2, 1..=1)?;
            let (conv, c) = compressed(&cc.conv, &cc.compressor);
            let g = geom::conv_fit(conv, &c.shape, io.shape_o(0))?;
            io.shape(io.shape_i(1), &conv_out(&g), "dy")?;
            io.scratch(c.conv_grad_workspace_len(conv, io.shape_o(0)))
        }
        Kind::LinearGradWCompressed(cl) => {
            io.arity(2..=2, 1..=1)?;
            let c = cl.compressor.as_ref().ok_or("no compressor")?;
            let (dy, dw) = (io.shape_i(1), io.shape_o(0));
            // A matrix (rows, features), or tokens (batch, tokens, features).
            let (rows, features) = match c.shape[..] {
                [rows, features] => (rows, features),
                [b, t, features] => (b.saturating_mul(t), features),
                _ => {
                    return Err(
                        "a dense gradient from a compressed input that is not a matrix or tokens"
                            .into(),
                    );
                }
            };
            let n = *dy.last().unwrap_or(&0);
            io.eq_len(io.x(1).numel(), (rows * n) as usize, "dy")?;
            let w = if cl.trans_b {
                [n, features]
            } else {
                [features, n]
            };
            io.shape(dw, &w, "the weight gradient")?;
            io.scratch(c.linear_grad_workspace_len(n as usize))
        }
        Kind::BiasGrad(_) => {
            io.arity(1..=1, 1..=1)?;
            let dy = io.shape_i(0);
            match dy.get(1) {
                Some(&c) => io.eq_len(io.y(0).numel(), c as usize, "the bias gradient"),
                None => Err("a bias gradient of a tensor without channels".into()),
            }
        }
        Kind::Gemm(gm) => {
            io.arity(2..=3, 1..=1)?;
            let g = gemm_fit(gm, io.shape_i(0), io.shape_i(1))?;
            if step.inputs.len() > 2 {
                io.broadcasts(io.shape_i(2), &[g.m as u64, g.n as u64], "C")?;
            }
            io.shape(io.shape_o(0), &[g.m as u64, g.n as u64], "the output")
        }
        Kind::GemmGradA(gm) => {
            io.arity(2..=2, 1..=1)?;
            let g = gemm_fit(gm, io.shape_o(0), io.shape_i(1))?;
            io.shape(io.shape_i(0), &[g.m as u64, g.n as u64], "dy")
        }
        Kind::GemmGradB(gm) => {
            io.arity(2..=2, 1..=1)?;
            let g = gemm_fit(gm, io.shape_i(0), io.shape_o(0))?;
            io.shape(io.shape_i(1), &[g.m as u64, g.n as u64], "dy")
        }
        Kind::MatMul(_) => {
            io.arity(2..=3, 1..=1)?;
            let y = matmul_out(io.shape_i(0), io.shape_i(1))?;
            if step.inputs.len() > 2 {
                io.shape(io.shape_i(2), &y[y.len() - 1..], "the bias")?;
            }
            io.shape(io.shape_o(0), &y, "the output")
        }
        Kind::MatMulInt8(_) => {
            io.arity(3..=4, 1..=1)?;
            let (x, w) = (io.shape_i(0), io.shape_i(1));
            let &[n, k] = w else {
                return Err("an int8 weight that is not a matrix".into());
            };
            // The product of x and the (K, N) weight whose transpose this is.
            let y = matmul_out(x, &[k, n])?;
            io.eq_len(io.x(2).numel(), 2 * n as usize, "the weights' quantization")?;
            if step.inputs.len() > 3 {
                io.shape(io.shape_i(3), &[n], "the bias")?;
            }
            io.shape(io.shape_o(0), &y, "the output")
        }
        Kind::MatMulGradX(_) => {
            io.arity(2..=2, 1..=1)?;
            io.shape(
                io.shape_i(0),
                &matmul_out(io.shape_o(0), io.shape_i(1))?,
                "dy",
            )
        }
        Kind::MatMulGradW(_) => {
            io.arity(2..=2, 1..=1)?;
            io.shape(
                io.shape_i(1),
                &matmul_out(io.shape_i(0), io.shape_o(0))?,
                "dy",
            )
        }
        Kind::BatchMatMul(t) => {
            io.arity(2..=2, 1..=1)?;
            let g = batch_geom(t.trans_a, t.trans_b, io.shape_i(0), io.shape_i(1))?;
            let lead = &io.shape_i(0)[..io.shape_i(0).len() - 2];
            let want: Vec<u64> = lead
                .iter()
                .copied()
                .chain([g.m as u64, g.n as u64])
                .collect();
            io.shape(io.shape_o(0), &want, "the output")
        }
        Kind::Gather(g) => {
            io.arity(1..=1, 1..=1)?;
            gather_fit(g, io.shape_i(0), io.shape_o(0))
        }
        Kind::GatherBackward(g) => {
            io.arity(1..=1, 1..=1)?;
            gather_fit(g, io.shape_o(0), io.shape_i(0))
        }
        Kind::BatchNorm(_) | Kind::BatchNormBackward(_) => {
            io.arity(5..=5, 1..=1)?;
            let x = io.shape_i(0);
            io.shape(io.shape_o(0), x, "the output")?;
            let c = *x
                .get(1)
                .ok_or("a batch norm of a tensor without channels")?;
            (1..5).try_for_each(|i| io.eq_len(io.x(i).numel(), c as usize, "a statistic"))
        }
        Kind::LayerNorm(l) => {
            io.arity(2..=3, 3..=3)?;
            let g = layer_norm_fit(io.x(0), l.axis)?;
            io.shape(io.shape_o(0), io.shape_i(0), "the output")?;
            (1..step.inputs.len())
                .try_for_each(|i| io.eq_len(io.x(i).numel(), g.inner, "a parameter"))?;
            (1..3).try_for_each(|i| io.eq_len(io.y(i).numel(), g.outer, "a row statistic"))
        }
        Kind::LayerNormBackward(l) => {
            io.arity(5..=5, 2..=3)?;
            let g = layer_norm_fit(io.x(0), l.axis)?;
            io.shape(io.shape_i(4), io.shape_i(0), "dy")?;
            io.shape(io.shape_o(0), io.shape_i(0), "dx")?;
            io.eq_len(io.x(1).numel(), g.inner, "the scale")?;
            (2..4).try_for_each(|i| io.eq_len(io.x(i).numel(), g.outer, "a row statistic"))?;
            (1..step.outputs.len())
                .try_for_each(|i| io.eq_len(io.y(i).numel(), g.inner, "a parameter gradient"))
        }
        Kind::Relu(_)
        | Kind::Clip(_)
        | Kind::LeakyRelu(_)
        | Kind::Sigmoid(_)
        | Kind::HardSigmoid(_)
        | Kind::HardSwish(_)
        | Kind::Gelu(_)
        | Kind::Tanh(_) => {
            io.arity(1..=1, 1..=1)?;
            io.shape(io.shape_o(0), io.shape_i(0), "the output")
        }
        Kind::ReluBackward(_)
        | Kind::ClipBackward(_)
        | Kind::LeakyReluBackward(_)
        | Kind::SigmoidBackward(_)
        | Kind::HardSigmoidBackward(_)
        | Kind::HardSwishBackward(_)
        | Kind::GeluBackward(_)
        | Kind::TanhBackward(_)
        | Kind::MseBackward(_) => {
            io.arity(2..=2, 1..=1)?;
            if let Kind::MseBackward(s) = kind {
                segments_fit(s, io.shape_i(0))?;
            }
            io.shape(io.shape_i(1), io.shape_i(0), "the second input")?;
            io.shape(io.shape_o(0), io.shape_i(0), "the output")
        }
        Kind::PRelu(_) | Kind::PReluBackward(_) => {
            let backward = matches!(kind, Kind::PReluBackward(_));
            io.arity(
                2 + backward as usize..=2 + backward as usize,
                1 + backward as usize..=1 + backward as usize,
            )?;
            let x = io.shape_i(0);
            let slope = io.x(1).numel() as u64;
            if x.len() < 2 || (slope != 1 && slope != x[1]) {
                return Err("a slope that is neither shared nor one per channel".into());
            }
            if backward {
                io.shape(io.shape_i(2), x, "dy")?;
                io.shape(io.shape_o(1), io.shape_i(1), "the slope gradient")?;
            }
            io.shape(io.shape_o(0), x, "the output")
        }
        Kind::Add(_) | Kind::Sub(_) | Kind::Mul(_) | Kind::Div(_) => {
            io.arity(2..=2, 1..=1)?;
            let y = broadcast(io.shape_i(0), io.shape_i(1))?;
            io.shape(io.shape_o(0), &y, "the output")
        }
        Kind::BroadcastGrad(b) => {
            let other = usize::from(b.with_other != 0);
            io.arity(1 + other..=1 + other, 1..=1)?;
            let (dy, out) = (io.shape_i(0), io.shape_o(0));
            io.broadcasts(out, dy, "the gradient")?;
            if other == 1 {
                io.shape(&broadcast(out, io.shape_i(1))?, dy, "dy")?;
            }
            Ok(())
        }
        Kind::Concat(a) => {
            io.arity(1..=usize::MAX, 1..=1)?;
            let y = io.shape_o(0);
            let axis = usize::try_from(a.axis)
                .ok()
                .filter(|&a| a < y.len())
                .ok_or("a concat axis outside the rank")?;
            let mut along = 0u64;
            for i in 0..step.inputs.len() {
                let x = io.shape_i(i);
                let rest_fits =
                    x.len() == y.len() && (0..y.len()).all(|d| d == axis || x[d] == y[d]);
                if !rest_fits {
                    return Err("a concat input that does not fit the output".into());
                }
                along = along.saturating_add(x[axis]);
            }
            io.eq_len(
                along as usize,
                y[axis] as usize,
                "the output along the axis",
            )
        }
        Kind::Slice(sl) => {
            io.arity(1..=1, 1..=1)?;
            let (x, y) = (io.shape_i(0), io.shape_o(0));
            let fits = sl.starts.len() == x.len()
                && y.len() == x.len()
                && (0..x.len()).all(|d| {
                    (sl.starts[d] as u64)
                        .checked_add(y[d])
                        .is_some_and(|end| end <= x[d])
                });
            fits.then_some(())
                .ok_or_else(|| "a slice outside its input".into())
        }
        Kind::Transpose(p) => {
            io.arity(1..=1, 1..=1)?;
            let x = io.shape_i(0);
            let is_perm =
                p.perm.len() == x.len() && (0..x.len()).all(|d| p.perm.contains(&(d as u32)));
            if !is_perm {
                return Err(format!("{:?} does not permute rank {}", p.perm, x.len()));
            }
            let y: Vec<u64> = p.perm.iter().map(|&d| x[d as usize]).collect();
            io.shape(io.shape_o(0), &y, "the output")
        }
        Kind::GlobalAveragePool(_) => {
            io.arity(1..=1, 1..=1)?;
            global_pool_fit(io.shape_i(0), io.shape_o(0))
        }
        Kind::AveragePool(p) => {
            io.arity(1..=1, 1..=1)?;
            let g = geom::pool_fit(p, io.shape_i(0))?;
            io.shape(io.shape_o(0), &pool_out(&g), "the output")
        }
        Kind::MaxPool(p) => {
            io.arity(1..=1, 1..=2)?;
            let g = geom::pool_fit(p, io.shape_i(0))?;
            io.shape(io.shape_o(0), &pool_out(&g), "the output")?;
            match step.outputs.get(1) {
                Some(_) => taps_fit(&io, io.y(1), &g),
                None => Ok(()),
            }
        }
        Kind::PoolBackward(pb) => match pb.pool.as_ref().ok_or("a pool backward of no pool")? {
            PoolKind::Global(_) => {
                io.arity(1..=1, 1..=1)?;
                global_pool_fit(io.shape_o(0), io.shape_i(0))
            }
            PoolKind::Average(p) => {
                io.arity(1..=1, 1..=1)?;
                let g = geom::pool_fit(p, io.shape_o(0))?;
                io.shape(io.shape_i(0), &pool_out(&g), "dy")
            }
            PoolKind::Max(p) => {
                io.arity(2..=2, 1..=1)?;
                let g = geom::pool_fit(p, io.shape_o(0))?;
                io.shape(io.shape_i(0), &pool_out(&g), "dy")?;
                taps_fit(&io, io.x(1), &g)
            }
            PoolKind::ReduceMean(a) | PoolKind::ReduceSum(a) => {
                io.arity(1..=1, 1..=1)?;
                let n = reduced(io.shape_o(0), &a.axes)?;
                io.eq_len(io.x(0).numel(), n, "dy")
            }
        },
        Kind::ReduceMean(a) | Kind::ReduceSum(a) => {
            io.arity(1..=1, 1..=1)?;
            let n = reduced(io.shape_i(0), &a.axes)?;
            io.eq_len(io.y(0).numel(), n, "the output")
        }
        Kind::Pad(p) => {
            io.arity(1..=1, 1..=1)?;
            let x = io.shape_i(0);
            if p.pads.len() != 2 * x.len() {
                return Err(format!("{} pads for rank {}", p.pads.len(), x.len()));
            }
            let y: Option<Vec<u64>> = (0..x.len())
                .map(|d| x[d].checked_add(p.pads[d] as u64 + p.pads[x.len() + d] as u64))
                .collect();
            io.shape(io.shape_o(0), &y.ok_or("pads past any size")?, "the output")
        }
        Kind::Softmax(a) | Kind::SoftmaxBackward(a) => {
            let backward = matches!(kind, Kind::SoftmaxBackward(_));
            let n = 1 + backward as usize;
            io.arity(n..=n, 1..=1)?;
            let x = io.shape_i(0);
            if usize::try_from(a.axis).ok().is_none_or(|a| a >= x.len()) {
                return Err(format!("softmax axis {} outside rank {}", a.axis, x.len()));
            }
            (1..n).try_for_each(|i| io.shape(io.shape_i(i), x, "dy"))?;
            io.shape(io.shape_o(0), x, "the output")
        }
        Kind::SoftmaxCrossEntropy(_) | Kind::SoftmaxCrossEntropyBackward(_) => {
            let forward = matches!(kind, Kind::SoftmaxCrossEntropy(_));
            let outputs = 1 + forward as usize;
            io.arity(2..=2, outputs..=outputs)?;
            let logits = io.shape_i(0);
            if logits.len() != 2 {
                return Err("logits that are not (batch, classes)".into());
            }
            io.eq_len(io.x(1).numel(), logits[0] as usize, "the labels")?;
            if forward {
                io.eq_len(io.y(0).numel(), 1, "the loss")?;
            }
            io.shape(io.shape_o(outputs - 1), logits, "the probabilities")
        }
        Kind::Mse(s) => {
            io.arity(2..=2, 1..=1)?;
            segments_fit(s, io.shape_i(0))?;
            io.shape(io.shape_i(1), io.shape_i(0), "the target")?;
            io.eq_len(io.y(0).numel(), 1, "the loss")
        }
        Kind::Accumulate(_) => {
            io.arity(1..=usize::MAX, 1..=1)?;
            (0..step.inputs.len())
                .try_for_each(|i| io.shape(io.shape_i(i), io.shape_o(0), "a summand"))
        }
        Kind::GradNorm(_) => {
            io.arity(0..=usize::MAX, 1..=1)?;
            io.eq_len(io.y(0).numel(), 1, "the clip coefficient")
        }
        Kind::SgdUpdate(sgd) => update_fit(&io, optim::Sgd::from(sgd).state_len(1)),
        Kind::AdamWUpdate(a) => update_fit(&io, optim::AdamW::from(a).state_len(1)),
        Kind::PassMask(_) => {
            io.arity(1..=1, 1..=1)?;
            io.eq_len(io.y(0).numel(), io.x(0).numel().div_ceil(32), "the mask")
        }
        Kind::MaskedGrad(_) => {
            io.arity(2..=2, 1..=1)?;
            io.eq_len(io.x(0).numel(), io.x(1).numel().div_ceil(32), "the mask")?;
            io.shape(io.shape_o(0), io.shape_i(1), "the output")
        }
        Kind::Compress(c) => {
            // The compressed form and the state are checked with the compressor.
            io.arity(1..=2, 1..=1)?;
            io.eq_len(io.x(0).numel(), c.vanilla_bytes() / 4, "the activation")?;
            io.scratch(c.compress_workspace_len())
        }
        Kind::Decompress(c) => {
            io.arity(1..=1, 1..=1)?;
            io.eq_len(io.y(0).numel(), c.vanilla_bytes() / 4, "the activation")?;
            io.scratch(c.decompress_workspace_len())
        }
    }
}

/// Whether the step's output may lie in its input's very bytes: a Reshape's, which the
/// planner lets share them and `run` then leaves alone.
pub fn shares_input(step: &Step) -> bool {
    matches!(step.kind(), Some(Kind::Reshape(_)))
}

/// A step's buffers, for [`check`]: each accessor is called only where the arity is known.
struct Io<'a> {
    plan: &'a Plan,
    step: &'a Step,
}

impl Io<'_> {
    fn x(&self, i: usize) -> &Buffer {
        self.plan.buffer(self.step.inputs[i])
    }

    fn y(&self, i: usize) -> &Buffer {
        self.plan.buffer(self.step.outputs[i])
    }

    fn shape_i(&self, i: usize) -> &[u64] {
        &self.x(i).shape
    }

    fn shape_o(&self, i: usize) -> &[u64] {
        &self.y(i).shape
    }

    fn arity(
        &self,
        inputs: std::ops::RangeInclusive<usize>,
        outputs: std::ops::RangeInclusive<usize>,
    ) -> Result<(), String> {
        let (i, o) = (self.step.inputs.len(), self.step.outputs.len());
        if inputs.contains(&i) && outputs.contains(&o) {
            Ok(())
        } else {
            Err(format!(
                "{i} inputs and {o} outputs, which its kernel does not take"
            ))
        }
    }

    fn shape(&self, got: &[u64], want: &[u64], what: &str) -> Result<(), String> {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what} has shape {got:?}, not {want:?}"))
        }
    }

    fn eq_len(&self, got: usize, want: usize, what: &str) -> Result<(), String> {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what} holds {got} elements, not {want}"))
        }
    }

    /// `small` broadcasts to `big` (numpy's rule, `big` unchanged).
    fn broadcasts(&self, small: &[u64], big: &[u64], what: &str) -> Result<(), String> {
        match broadcast(small, big) {
            Ok(b) if b == big => Ok(()),
            _ => Err(format!(
                "{what} of shape {small:?} does not broadcast to {big:?}"
            )),
        }
    }

    fn scratch(&self, want: usize) -> Result<(), String> {
        let have = self
            .step
            .workspace
            .map_or(0, |w| self.plan.buffer(w).numel());
        if have >= want {
            Ok(())
        } else {
            Err(format!(
                "{have} floats of scratch, not the {want} its kernel needs"
            ))
        }
    }
}

/// (N, C_out, out_h, out_w) of a conv.
fn conv_out(g: &crate::kernels::geometry::Conv2dGeom) -> [u64; 4] {
    [g.n, g.c_out, g.out_h(), g.out_w()].map(|d| d as u64)
}

fn pool_out(g: &pool::Pool2dGeom) -> [u64; 4] {
    [g.n, g.c, g.out_h(), g.out_w()].map(|d| d as u64)
}

/// A conv's forward: x, w, [quantization when int8], [bias] → y.
fn conv_check(io: &Io, c: &crate::ops::Conv, int8: bool) -> Result<(), String> {
    let q = usize::from(int8);
    io.arity(2 + q..=3 + q, 1..=1)?;
    let g = geom::conv_fit(c, io.shape_i(0), io.shape_i(1))?;
    if int8 {
        if g.groups != 1 {
            return Err("an int8 conv of several groups".into());
        }
        io.eq_len(io.x(2).numel(), 2 * g.c_out, "the weights' quantization")?;
    }
    if io.step.inputs.len() > 2 + q {
        io.eq_len(io.x(2 + q).numel(), g.c_out, "the bias")?;
    }
    io.shape(io.shape_o(0), &conv_out(&g), "the output")?;
    io.scratch(if int8 {
        qconv::workspace_len(&g)
    } else {
        conv::forward_workspace_len(&g)
    })
}

/// The inputs of a step that are int8 weights: an int8 conv's or product's second.
fn int8_weights(kind: &Kind) -> impl Iterator<Item = usize> + '_ {
    let clip = matches!(kind, Kind::ConvClip(cc) if cc.int8) || matches!(kind, Kind::MatMulInt8(_));
    let clip = clip.then_some(1);
    let stages = match kind {
        Kind::ConvChain(cc) => &cc.stages[..],
        _ => &[],
    };
    let mut at = 1;
    let chained = stages.iter().filter_map(move |s| {
        let w = at;
        at += 1 + usize::from(s.int8) + usize::from(s.bias);
        s.int8.then_some(w)
    });
    clip.into_iter().chain(chained)
}

/// A max pool's taps: one per output, in bytes only while every tap index fits one.
fn taps_fit(io: &Io, taps: &Buffer, g: &pool::Pool2dGeom) -> Result<(), String> {
    let bytes = pool::byte_taps(g.kh * g.kw);
    if (taps.dtype() == DType::U8) != bytes {
        return Err("max pool taps of the wrong width".into());
    }
    io.eq_len(taps.numel(), g.output_len(), "the taps")
}

/// (N, C, …) → (N, C, 1, …): a global pool's input and output.
fn global_pool_fit(x: &[u64], y: &[u64]) -> Result<(), String> {
    let fits =
        x.len() >= 2 && y.len() == x.len() && y[..2] == x[..2] && y[2..].iter().all(|&d| d == 1);
    fits.then_some(())
        .ok_or_else(|| format!("a global pool from {x:?} to {y:?}"))
}

/// Elements of `x` reduced over `axes` (distinct, within its rank): ReduceMean's output,
/// whose axes are kept or dropped alike.
fn reduced(x: &[u64], axes: &[u32]) -> Result<usize, String> {
    let mut y = x.to_vec();
    for (i, &a) in axes.iter().enumerate() {
        if a as usize >= x.len() || axes[..i].contains(&a) {
            return Err(format!("axes {axes:?} of a rank-{} tensor", x.len()));
        }
        y[a as usize] = 1;
    }
    Ok(y.iter().product::<u64>() as usize)
}

fn broadcast(a: &[u64], b: &[u64]) -> Result<Vec<u64>, String> {
    let to = |s: &[u64]| s.iter().map(|&d| d as usize).collect::<Vec<_>>();
    elementwise::broadcast_shape(&to(a), &to(b))
        .map(|s| s.into_iter().map(|d| d as u64).collect())
        .ok_or_else(|| format!("shapes {a:?} and {b:?} do not broadcast"))
}

fn gemm_fit(gm: &crate::ops::Gemm, a: &[u64], b: &[u64]) -> Result<GemmGeom, String> {
    let a_k = if gm.trans_a { a.first() } else { a.get(1) };
    let b_k = if gm.trans_b { b.get(1) } else { b.first() };
    if a.len() != 2 || b.len() != 2 || a_k != b_k {
        return Err(format!("a product of shapes {a:?} and {b:?}"));
    }
    Ok(gemm_geom(gm, a, b))
}

/// X (…, K) by W (K, N): (…, N).
fn matmul_out(x: &[u64], w: &[u64]) -> Result<Vec<u64>, String> {
    match (x.split_last(), w) {
        (Some((&k, lead)), &[wk, n]) if k == wk => Ok(lead.iter().copied().chain([n]).collect()),
        _ => Err(format!("a product of shapes {x:?} and {w:?}")),
    }
}

/// The products of a [`Kind::BatchMatMul`] over operands of these shapes: same rank of at
/// least 2, the same batch axes, inner sizes that meet.
fn batch_geom(
    trans_a: bool,
    trans_b: bool,
    a: &[u64],
    b: &[u64],
) -> Result<linear::BatchGeom, String> {
    let bad = || format!("a batched product of shapes {a:?} and {b:?}");
    let r = a.len();
    if r < 2 || b.len() != r || a[..r - 2] != b[..r - 2] {
        return Err(bad());
    }
    let (a0, a1, b0, b1) = (a[r - 2], a[r - 1], b[r - 2], b[r - 1]);
    let (m, k) = if trans_a { (a1, a0) } else { (a0, a1) };
    let (kb, n) = if trans_b { (b1, b0) } else { (b0, b1) };
    if k != kb {
        return Err(bad());
    }
    Ok(linear::BatchGeom {
        batch: a[..r - 2].iter().product::<u64>() as usize,
        m: m as usize,
        k: k as usize,
        n: n as usize,
        trans_a,
        trans_b,
    })
}

/// An MSE's segments split each row of a (batch, row) prediction: one weight per size, the
/// sizes summing to the row, finite weights. No segments: the plain mean, any shape.
fn segments_fit(s: &crate::ops::MseSegments, pred: &[u64]) -> Result<(), String> {
    if s.sizes.is_empty() && s.weights.is_empty() {
        return Ok(());
    }
    let row: u64 = s.sizes.iter().map(|&n| n as u64).sum();
    if pred.len() != 2 || pred[1] != row {
        return Err(format!(
            "an MSE over segments {:?} of a prediction of shape {pred:?}, not (batch, {row})",
            s.sizes
        ));
    }
    if s.weights.len() != s.sizes.len() || s.weights.iter().any(|w| !w.is_finite()) {
        return Err(format!(
            "an MSE's weights {:?} for {} segments",
            s.weights,
            s.sizes.len()
        ));
    }
    Ok(())
}

/// A gather from `x` to `y` along `g.axis`: indices inside the axis, and `y` as many
/// elements as the rows they pick.
fn gather_fit(g: &crate::ops::Gather, x: &[u64], y: &[u64]) -> Result<(), String> {
    let axis = g.axis as usize;
    let Some(&len) = x.get(axis) else {
        return Err(format!("a gather on axis {axis} of rank {}", x.len()));
    };
    if g.indices.iter().any(|&i| i as u64 >= len) {
        return Err(format!("an index outside axis {axis} of length {len}"));
    }
    let rows: u64 = x.iter().product::<u64>() / len.max(1) * g.indices.len() as u64;
    let got: u64 = y.iter().product();
    if len == 0 || got != rows {
        return Err(format!(
            "a gather of {} rows from {x:?} into {y:?}",
            g.indices.len()
        ));
    }
    Ok(())
}

fn layer_norm_fit(x: &Buffer, axis: u32) -> Result<norm::LayerNormGeom, String> {
    norm::LayerNormGeom::new(&dims(x), axis as i64, 0.0)
        .ok_or_else(|| format!("a layer norm axis {axis} outside rank {}", x.shape.len()))
}

/// An update: the weight, its gradient, the optimizer's state (`state` floats per weight
/// element, when it keeps any), then maybe the clip coefficient.
fn update_fit(io: &Io, state: usize) -> Result<(), String> {
    let n = 2 + usize::from(state > 0);
    io.arity(n..=n + 1, 0..=usize::MAX)?;
    let w = io.x(0).numel();
    io.eq_len(io.x(1).numel(), w, "the gradient")?;
    if state > 0 {
        let want = w
            .checked_mul(state)
            .ok_or("an optimizer state past any size")?;
        io.eq_len(io.x(2).numel(), want, "the optimizer state")?;
    }
    match io.step.inputs.get(n) {
        Some(_) => io.eq_len(io.x(n).numel(), 1, "the clip coefficient"),
        None => Ok(()),
    }
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

fn gemm_geom(g: &crate::ops::Gemm, a: &[u64], b: &[u64]) -> GemmGeom {
    let (a0, a1) = (a[0] as usize, a[1] as usize);
    let (b0, b1) = (b[0] as usize, b[1] as usize);
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
