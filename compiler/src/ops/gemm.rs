//! Dense layers: `Gemm` and `MatMul` (a constant 2-D weight on the right, any leading batch
//! axes on the left), with their gradients.

use super::room::{
    Backward, LayerClass, Lowered, OnnxNode, OnnxOut, Room, SavedInput, expect, kernel, shapes,
};
use crate::bail;
use crate::error::Result;
use crate::ir::{Data, Graph, Node, NodeOp, Tensor};
use crate::lowrank::data::{OnData, weight_error};
use crate::lowrank::{
    AdapterForm, LayerReport, Matrix, Request, Stage, factorable, lora_init, mode_rank,
    replace_with_stages, split, svd, truncation_error,
};
use crate::onnx::shape::matmul_shape;
use crate::onnx::{attr_float, attr_int};
use crate::ops::int8;
use actc_runtime::ops::Compressor;
use actc_runtime::ops::{self, Empty, Kind};
use actc_runtime::plan::DType;
use petgraph::stable_graph::NodeIndex;

pub struct Dense;

impl Room for Dense {
    fn onnx_ops(&self) -> &'static [&'static str] {
        &["Gemm", "MatMul"]
    }

    fn owns(&self, kind: &Kind) -> bool {
        matches!(
            kind,
            Kind::Gemm(_)
                | Kind::MatMul(_)
                | Kind::MatMulInt8(_)
                | Kind::GemmGradA(_)
                | Kind::GemmGradB(_)
                | Kind::MatMulGradX(_)
                | Kind::MatMulGradW(_)
        )
    }

    fn import(&self, n: &OnnxNode) -> Result<Lowered> {
        let (x, w) = (n.arg(0)?, n.arg(1)?);
        if n.op() == "MatMul" {
            let outputs = vec![(matmul_shape(&n.label, &x.shape, &w.shape)?, x.dtype)];
            if w.is_const() && w.rank() == 2 && x.rank() >= 2 {
                return Ok(Lowered::kernel(outputs, Kind::MatMul(Empty {}), vec![0, 1]));
            }
            if super::attention::batched(x, w) {
                return super::attention::import(n);
            }
            return Ok(Lowered::onnx(outputs));
        }
        if x.rank() != 2 || w.rank() != 2 {
            bail!(
                "node '{}' (Gemm): inputs must be 2-D, got {:?} and {:?}",
                n.label,
                x.shape,
                w.shape
            );
        }
        let g = ops::Gemm {
            trans_a: n.attrs.int("transA", 0) != 0,
            trans_b: n.attrs.int("transB", 0) != 0,
            alpha: n.attrs.float("alpha", 1.0),
            beta: n.attrs.float("beta", 1.0),
        };
        let y = match gemm(&g, &x.shape, &w.shape) {
            Ok(y) => y,
            Err(e) => bail!("node '{}' (Gemm): {e}", n.label),
        };
        let inputs = (0..n.args.len().min(3)).collect();
        Ok(Lowered::kernel(
            vec![(y, DType::F32)],
            Kind::Gemm(g),
            inputs,
        ))
    }

    fn check(
        &self,
        kind: &Kind,
        ins: &[&Tensor],
        outs: &[&Tensor],
    ) -> std::result::Result<(), String> {
        let s = shapes(ins, 2)?;
        let out = |i: usize| outs.get(i).map(|t| t.shape.as_slice()).ok_or("no output");
        match kind {
            Kind::Gemm(g) => expect(outs, &[(gemm(g, s[0], s[1])?, DType::F32)]),
            // dy, b → da: a product of da and b has dy's shape
            Kind::GemmGradA(g) => same(&gemm(g, out(0)?, s[1])?, s[0]),
            // a, dy → db
            Kind::GemmGradB(g) => same(&gemm(g, s[0], out(0)?)?, s[1]),
            Kind::MatMul(_) => {
                let y = matmul_shape("", s[0], s[1]).map_err(|e| e.0)?;
                // The prefix's fused bias (`fuse_bias`): one value per output column.
                if let Some(b) = s.get(2) {
                    same(&y[y.len() - 1..], b)?;
                }
                expect(outs, &[(y, DType::F32)])
            }
            // x, Wᵀ int8 (N, K), its quantization (2, N), [bias] → y
            Kind::MatMulInt8(_) => {
                let &[n, k] = s[1] else {
                    return Err(format!("an int8 weight {:?} that is not a matrix", s[1]));
                };
                let y = matmul_shape("", s[0], &[k, n]).map_err(|e| e.0)?;
                let quantized = ins[1].dtype == DType::I8
                    && ins
                        .get(2)
                        .is_some_and(|q| q.dtype == DType::F32 && q.shape == [2, n]);
                if !quantized {
                    return Err("an int8 weight without its (2, N) quantization after it".into());
                }
                if let Some(b) = s.get(3) {
                    same(&[n], b)?;
                }
                expect(outs, &[(y, DType::F32)])
            }
            // dy, w → dx
            Kind::MatMulGradX(_) => same(&matmul_shape("", out(0)?, s[1]).map_err(|e| e.0)?, s[0]),
            // x, dy → dw (batch axes summed)
            Kind::MatMulGradW(_) => {
                let (x, dy) = (s[0], s[1]);
                let (k, n) = (
                    x.last().ok_or("x is a scalar")?,
                    dy.last().ok_or("dy is a scalar")?,
                );
                expect(outs, &[(vec![*k, *n], DType::F32)])
            }
            _ => Err("not a dense op".into()),
        }
    }

    fn params(&self, kind: &Kind, _node: &Node, _graph: &Graph) -> &'static [usize] {
        match kind {
            Kind::Gemm(_) => &[0, 1, 2],
            Kind::MatMul(_) => &[1],
            _ => &[],
        }
    }

    fn layer(&self, node: &Node, graph: &Graph) -> Option<LayerClass> {
        let kind = kernel(node)?;
        let has_params = !super::params_of(graph, kind, node).is_empty();
        (matches!(kind, Kind::Gemm(_) | Kind::MatMul(_)) && has_params).then_some(LayerClass::Dense)
    }

    fn differentiable(&self, kind: &Kind, _node: &Node, _graph: &Graph) -> bool {
        matches!(kind, Kind::Gemm(_) | Kind::MatMul(_))
    }

    fn backward(&self, kind: &Kind, ad: &mut Backward) {
        let dy = ad.dy;
        let (a, b) = (ad.input(0), ad.input(1));
        match kind {
            Kind::Gemm(g) => {
                if ad.needs(0) {
                    ad.grad(0, "grad_a", Kind::GemmGradA(g.clone()), vec![dy, b]);
                }
                if ad.needs(1) {
                    ad.grad(1, "grad_b", Kind::GemmGradB(g.clone()), vec![a, dy]);
                }
                if ad.needs(2) {
                    let k = super::elementwise::broadcast_grad(g.beta, 0);
                    ad.grad(2, "grad_c", k, vec![dy]);
                }
            }
            Kind::MatMul(_) => {
                if ad.needs(0) {
                    ad.grad(0, "grad_input", Kind::MatMulGradX(Empty {}), vec![dy, b]);
                }
                if ad.needs(1) {
                    ad.grad(1, "grad_weight", Kind::MatMulGradW(Empty {}), vec![a, dy]);
                }
            }
            _ => unreachable!("only Gemm and MatMul are differentiable"),
        }
    }

    fn fuse_inference(&self, graph: &mut Graph, _lanes: usize) {
        fuse_bias(graph);
    }

    /// A MatMul with a constant (K, N) weight becomes a `MatMulInt8` reading Wᵀ in int8,
    /// quantized per output feature.
    fn quantize_inference(&self, graph: &mut Graph) {
        for n in graph.topo_order() {
            let node = &graph.nodes[n];
            if !matches!(node.op, NodeOp::Kernel(Kind::MatMul(_))) {
                continue;
            }
            let w = node.inputs[1];
            let Some(values) = int8::float_constant(graph, w) else {
                continue;
            };
            let t = graph.tensor(w);
            let &[k, cols] = &t.shape[..] else {
                continue;
            };
            let name = t.name.clone();
            let transposed: Vec<f32> = (0..cols * k)
                .map(|e| values[(e % k) * cols + e / k])
                .collect();
            let (q, params) = int8::constants(graph, &name, vec![cols, k], &transposed);
            let mut inputs = graph.nodes[n].inputs.clone();
            inputs.splice(1..=1, [q, params]);
            graph.nodes[n].op = NodeOp::Kernel(Kind::MatMulInt8(Empty {}));
            graph.set_inputs(n, inputs);
        }
    }

    fn to_onnx(&self, kind: &Kind, out: &mut OnnxOut) -> std::result::Result<(), String> {
        match kind {
            Kind::MatMul(_) if out.inputs().len() > 2 => {
                return Err("a MatMul with its bias fused (frozen prefix) has no ONNX form".into());
            }
            Kind::Gemm(g) => {
                let attrs = vec![
                    attr_int("transA", g.trans_a as i64),
                    attr_int("transB", g.trans_b as i64),
                    attr_float("alpha", g.alpha),
                    attr_float("beta", g.beta),
                ];
                out.node("Gemm", out.inputs(), attrs);
            }
            Kind::MatMul(_) => out.node("MatMul", out.inputs(), vec![]),
            _ => return Err("gradients have no ONNX form".into()),
        }
        Ok(())
    }

    fn saved_input(&self, kind: &Kind, x: &[usize]) -> Option<SavedInput> {
        // A dense layer's input is compressed as the matrix its gradient reads, or over
        // tokens as (batch, tokens, features): three modes, as the paper's follow-ups
        // compress a transformer's activations.
        let dims = match kind {
            Kind::GemmGradB(g) if !g.trans_a && g.alpha == 1.0 => x.to_vec(),
            Kind::MatMulGradW(_) if x.len() == 2 => x.to_vec(),
            Kind::MatMulGradW(_) if x.len() > 2 => {
                let (t, k) = (x[x.len() - 2], x[x.len() - 1]);
                vec![x.iter().product::<usize>() / (t * k), t, k]
            }
            _ => return None,
        };
        Some(SavedInput { dims, conv: None })
    }

    fn low_rank(
        &self,
        kind: &Kind,
        graph: &mut Graph,
        n: NodeIndex,
        req: &Request,
    ) -> Result<Option<LayerReport>> {
        let Some((data, x, w)) = factorable(graph, n) else {
            return Ok(None);
        };
        let node = &graph.nodes[n];
        let (trans_a, trans_b) = match kind {
            Kind::Gemm(g) => (g.trans_a, g.trans_b),
            Kind::MatMul(_) => (false, false),
            _ => return Ok(None),
        };
        // W as the K × N matrix the rows of x multiply.
        let (k, cols) = match trans_b {
            true => (w.shape[1], w.shape[0]),
            false => (w.shape[0], w.shape[1]),
        };
        let rows = x.numel() / k;
        let before = (k * cols, 2 * (rows * k * cols) as u64);
        if let Some(why) = req.keep {
            return Ok(Some(LayerReport::kept(node, before.0, before.1, why)));
        }
        let values = data.as_f32();
        let at = |i: usize, j: usize| match trans_b {
            true => values[j * k + i] as f64,
            false => values[i * cols + j] as f64,
        };
        // W (K × N) ≈ A·B: A (K × r) the first product's weight, B (r × N) the second's.
        let w = Matrix::from_fn(k, cols, at);
        let (a, b, r, full, error) = match req.on_data {
            None => {
                let d = svd(&w)?;
                let r = mode_rank(req.rule, &d.s, k, cols)?;
                let (a, b) = split(&d, r);
                (a, b, r, d.s.len(), truncation_error(&d.s, r))
            }
            Some(white) => {
                let d = OnData::new(&w, white)?;
                let r = mode_rank(req.rule, d.s(), k, cols)?;
                let (a, b) = d.split(r);
                let error = weight_error(&w, &a, &b);
                (a, b, r, d.s().len(), error)
            }
        };
        let params = (before.0, r * (k + cols));
        let flops = (before.1, 2 * (rows * r * (k + cols)) as u64);
        if params.1 >= params.0 && !req.even_if_larger {
            let why = format!("rank {r} of {full} would not be smaller");
            return Ok(Some(LayerReport::kept(node, params.0, flops.0, why)));
        }
        let ranks = (vec![r], vec![full]);
        let report = LayerReport::factored(node, "svd", ranks, params, flops, error);
        let mut hidden = x.shape.clone();
        let out_shape = graph.tensor(node.outputs[0]).shape.clone();
        let bias = node.inputs[2..].to_vec();
        let stages = match kind {
            Kind::Gemm(g) => {
                hidden = vec![rows, r];
                let first = ops::Gemm {
                    trans_a,
                    trans_b: false,
                    alpha: 1.0,
                    beta: 0.0,
                };
                let second = ops::Gemm {
                    trans_a: false,
                    trans_b: false,
                    ..g.clone()
                };
                [
                    (Kind::Gemm(first), vec![k, r], a, vec![]),
                    (Kind::Gemm(second), vec![r, cols], b, bias),
                ]
            }
            _ => {
                *hidden.last_mut().expect("x has rank 2 or more") = r;
                let matmul = Kind::MatMul(Empty {});
                [
                    (matmul.clone(), vec![k, r], a, vec![]),
                    (matmul, vec![r, cols], b, vec![]),
                ]
            }
        };
        let outs = [hidden, out_shape];
        let stages = stages
            .into_iter()
            .zip(outs)
            .map(|((kind, shape, m, extra), out_shape)| Stage {
                kind,
                weight: (shape, m.to_f32()),
                extra,
                out_shape,
            })
            .collect();
        replace_with_stages(graph, n, stages);
        Ok(Some(report))
    }

    fn adapter(
        &self,
        kind: &Kind,
        graph: &Graph,
        n: NodeIndex,
        rank: usize,
    ) -> Option<AdapterForm> {
        let (_, _, w) = factorable(graph, n)?;
        let y = graph.tensor(graph.nodes[n].outputs[0]).shape.clone();
        let (trans_b, k, cols) = match kind {
            Kind::Gemm(g) if g.trans_b => (true, w.shape[1], w.shape[0]),
            Kind::Gemm(_) | Kind::MatMul(_) => (false, w.shape[0], w.shape[1]),
            _ => return None,
        };
        let mut hidden = y.clone();
        *hidden.last_mut().expect("an output of rank 2 or more") = rank;
        let (first, second) = match kind {
            // The branch adds alpha·x·A·B, what alpha·x·(W + A·B) adds to the layer.
            Kind::Gemm(g) => {
                let gemm = |trans_a, alpha| {
                    Kind::Gemm(ops::Gemm {
                        trans_a,
                        trans_b: false,
                        alpha,
                        beta: 0.0,
                    })
                };
                (gemm(g.trans_a, 1.0), gemm(false, g.alpha))
            }
            _ => (Kind::MatMul(Empty {}), Kind::MatMul(Empty {})),
        };
        let stage = |kind, shape: Vec<usize>, values, out_shape| Stage {
            kind,
            weight: (shape, values),
            extra: Vec::new(),
            out_shape,
        };
        Some(AdapterForm {
            a: stage(
                first,
                vec![k, rank],
                lora_init(k * rank, k, n.index() as u64),
                hidden,
            ),
            b: stage(second, vec![rank, cols], vec![0.0; rank * cols], y),
            a_is_left: true,
            transpose: trans_b,
        })
    }

    fn on_compressed(&self, kind: &Kind, c: Compressor) -> Option<Kind> {
        let trans_b = match kind {
            Kind::GemmGradB(g) => g.trans_b,
            Kind::MatMulGradW(_) => false,
            _ => return None,
        };
        Some(Kind::LinearGradWCompressed(ops::CompressedLinear {
            trans_b,
            compressor: Some(c),
        }))
    }

    fn flops(&self, kind: &Kind, ins: &[&[u64]], outs: &[&[u64]]) -> u64 {
        let numel = |s: Option<&&[u64]>| s.map_or(0, |s| s.iter().product::<u64>());
        let last = |s: Option<&&[u64]>| s.and_then(|s| s.last().copied()).unwrap_or(1);
        match kind {
            Kind::Gemm(g) if g.trans_a => {
                2 * numel(outs.first()) * ins.first().and_then(|a| a.first().copied()).unwrap_or(1)
            }
            Kind::Gemm(_) | Kind::MatMul(_) | Kind::MatMulInt8(_) => {
                2 * numel(outs.first()) * last(ins.first())
            }
            Kind::GemmGradA(_) | Kind::MatMulGradX(_) => {
                2 * numel(outs.first()) * last(ins.first())
            }
            Kind::GemmGradB(_) | Kind::MatMulGradW(_) => 2 * numel(ins.first()) * last(ins.get(1)),
            _ => numel(outs.first()).max(numel(ins.first())),
        }
    }
}

/// The output shape of Gemm `g` on `a` and `b`.
fn gemm(g: &ops::Gemm, a: &[usize], b: &[usize]) -> std::result::Result<Vec<usize>, String> {
    let ([a0, a1], [b0, b1]) = (two(a)?, two(b)?);
    let (m, k) = if g.trans_a { (a1, a0) } else { (a0, a1) };
    let (kb, n) = if g.trans_b { (b1, b0) } else { (b0, b1) };
    if k != kb {
        return Err(format!("inner dimensions {k} and {kb} differ"));
    }
    Ok(vec![m, n])
}

fn two(s: &[usize]) -> std::result::Result<[usize; 2], String> {
    s.try_into().map_err(|_| format!("{s:?} is not 2-D"))
}

fn same(got: &[usize], want: &[usize]) -> std::result::Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("dy is {want:?}, the product gives {got:?}"))
    }
}

/// Folds an `Add` of a constant vector along the last axis (a dense layer's bias: PyTorch
/// exports `nn.Linear` on tokens as MatMul + Add) into the MatMul before it, when the Add is
/// its only reader: the product's store adds the bias, and one pass over the output and its
/// buffer go. Inference only (the frozen prefix): a trained bias is a parameter of its own.
fn fuse_bias(graph: &mut Graph) {
    let matmuls: Vec<NodeIndex> = graph
        .nodes
        .node_indices()
        .filter(|&n| {
            let node = &graph.nodes[n];
            matches!(node.op, NodeOp::Kernel(Kind::MatMul(_))) && node.inputs.len() == 2
        })
        .collect();
    for m in matmuls {
        let Some(add) = graph.only_reader(m) else {
            continue;
        };
        if !matches!(graph.nodes[add].op, NodeOp::Kernel(Kind::Add(_))) {
            continue;
        }
        let y = graph.nodes[m].outputs[0];
        let ins = &graph.nodes[add].inputs;
        let Some(&b) = ins.iter().find(|&&t| t != y).filter(|_| ins.len() == 2) else {
            continue;
        };
        let (yt, bt) = (graph.tensor(y), graph.tensor(b));
        let n = *yt.shape.last().expect("a product has two axes or more");
        // A vector along the last axis: its broadcast leaves the output's shape as it is.
        let vector = bt.shape.split_last().is_some_and(|(&last, lead)| {
            last == n && lead.iter().all(|&d| d == 1) && bt.shape.len() <= yt.shape.len()
        });
        let Some(Data::F32(v)) = bt.data.clone().filter(|_| vector) else {
            continue;
        };
        let name = format!("{}.fused_bias", graph.nodes[add].name);
        let bias = graph.add_tensor(Tensor::constant(name, vec![n], Data::F32(v)));
        let (x, w) = (graph.nodes[m].inputs[0], graph.nodes[m].inputs[1]);
        graph.set_inputs(m, vec![x, w, bias]);
        graph.absorb_reader(m, add);
    }
}
