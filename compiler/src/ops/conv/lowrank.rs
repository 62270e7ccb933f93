//! A conv's weight in thin factors: a 1×1 conv as two 1×1 convs from a truncated SVD, a k×k
//! conv as 1×1 → k×k → 1×1 from its Tucker-2 (Kim et al., ICLR 2016). The first factor of
//! the SVD form and the core of the Tucker-2 keep the stride, padding and dilation; the bias
//! goes on the last factor. And a low-rank adapter beside a frozen conv (LoRA).

use super::forward;
use crate::error::Result;
use crate::ir::Graph;
use crate::lowrank::data::{OnData, weight_error};
use crate::lowrank::{
    AdapterForm, LayerReport, Matrix, Request, Stage, factorable, lora_init, mode_rank,
    replace_with_stages, split, svd, truncation_error, tucker2,
};
use actc_runtime::ops::{self, Kind};
use petgraph::stable_graph::NodeIndex;

pub(super) fn low_rank(
    c: &ops::Conv,
    graph: &mut Graph,
    n: NodeIndex,
    req: &Request,
) -> Result<Option<LayerReport>> {
    let Some((data, x, w)) = factorable(graph, n) else {
        return Ok(None);
    };
    let node = &graph.nodes[n];
    let ([m, ci, kh, kw], y) = (four(&w.shape), &graph.tensor(node.outputs[0]).shape);
    let flops = |c: &ops::Conv, x: &[usize], w: &[usize]| -> u64 {
        let out = forward(c, x, w).map_or(0, |o| o.iter().product::<usize>());
        2 * (out * w[1..].iter().product::<usize>()) as u64
    };
    let before = (m * ci * kh * kw, flops(c, &x.shape, &w.shape));
    if c.group != 1 {
        let why = "a grouped or depthwise conv has no dense weight to factor";
        return Ok(Some(LayerReport::kept(node, before.0, before.1, why)));
    }
    if let Some(why) = req.keep {
        return Ok(Some(LayerReport::kept(node, before.0, before.1, why)));
    }
    let values: Vec<f64> = data.as_f32().iter().map(|&v| v as f64).collect();
    let taps = kh * kw;
    let plain = pointwise();
    // A 1×1 conv's first factor keeps its stride and padding.
    let strided = ops::Conv {
        kernel: vec![1, 1],
        ..c.clone()
    };
    let (batch, (h, wd)) = (x.shape[0], (x.shape[2], x.shape[3]));
    // (conv, weight shape, weight values, input shape) per factor, and the report's numbers.
    let (factors, form, ranks, error) = if taps == 1 {
        // W ≈ A·B: A (m × r) the second 1×1 conv's weight, B (r × ci) the first's.
        let (a, b, r, full, error) = match req.on_data {
            None => {
                let d = svd(&Matrix::from_fn(m, ci, |i, j| values[i * ci + j]))?;
                let r = mode_rank(req.rule, &d.s, m, ci)?;
                let (a, b) = split(&d, r);
                (a, b, r, d.s.len(), truncation_error(&d.s, r))
            }
            Some(white) => {
                // Wᵀ (input channels × outputs) ≈ P·Q, so A = Qᵀ and B = Pᵀ.
                let wt = Matrix::from_fn(ci, m, |i, j| values[j * ci + i]);
                let d = OnData::new(&wt, white)?;
                let r = mode_rank(req.rule, d.s(), m, ci)?;
                let (p, q) = d.split(r);
                let error = weight_error(&wt, &p, &q);
                (q.transposed(), p.transposed(), r, d.s().len(), error)
            }
        };
        let hidden = vec![batch, r, y[2], y[3]];
        let factors = vec![
            (strided, vec![r, ci, 1, 1], b.to_f32(), x.shape.clone()),
            (plain, vec![m, r, 1, 1], a.to_f32(), hidden),
        ];
        (factors, "svd", (vec![r], vec![full]), error)
    } else {
        let t = tucker2(&values, m, ci, taps, req.rule)?;
        let (ro, ri) = (t.out.cols, t.input.cols);
        let into = Matrix::from_fn(ri, ci, |i, j| t.input.at(j, i));
        let core: Vec<f32> = t.core.iter().map(|&v| v as f32).collect();
        let factors = vec![
            (
                plain.clone(),
                vec![ri, ci, 1, 1],
                into.to_f32(),
                x.shape.clone(),
            ),
            (
                c.clone(),
                vec![ro, ri, kh, kw],
                core,
                vec![batch, ri, h, wd],
            ),
            (
                plain,
                vec![m, ro, 1, 1],
                t.out.to_f32(),
                vec![batch, ro, y[2], y[3]],
            ),
        ];
        (factors, "tucker2", (vec![ro, ri], t.full.to_vec()), t.error)
    };
    let params: usize = factors.iter().map(|f| f.1.iter().product::<usize>()).sum();
    let cost: u64 = factors.iter().map(|f| flops(&f.0, &f.3, &f.1)).sum();
    if cost >= before.1 && !req.even_if_larger {
        let why = format!("ranks {:?} of {:?} would not be cheaper", ranks.0, ranks.1);
        return Ok(Some(LayerReport::kept(node, before.0, before.1, why)));
    }
    let report = LayerReport::factored(
        node,
        form,
        ranks,
        (before.0, params),
        (before.1, cost),
        error,
    );
    let last = factors.len() - 1;
    let bias = node.inputs[2..].to_vec();
    let outs: Vec<Vec<usize>> = factors
        .iter()
        .skip(1)
        .map(|f| f.3.clone())
        .chain([y.clone()])
        .collect();
    let stages = factors
        .into_iter()
        .zip(outs)
        .enumerate()
        .map(|(i, ((conv, shape, weight, _), out_shape))| Stage {
            kind: Kind::Conv(conv),
            weight: (shape, weight),
            extra: if i == last { bias.clone() } else { Vec::new() },
            out_shape,
        })
        .collect();
    replace_with_stages(graph, n, stages);
    Ok(Some(report))
}

/// A rank-`rank` adapter beside conv `c`: A, a conv with its window, stride, padding and
/// dilation into `rank` channels, then B, a 1×1 conv back to its outputs.
pub(super) fn adapter(
    c: &ops::Conv,
    graph: &Graph,
    n: NodeIndex,
    rank: usize,
) -> Option<AdapterForm> {
    let (_, _, w) = factorable(graph, n).filter(|_| c.group == 1)?;
    let y = graph.tensor(graph.nodes[n].outputs[0]).shape.clone();
    let [m, ci, kh, kw] = four(&w.shape);
    let fan_in = ci * kh * kw;
    let a = Stage {
        kind: Kind::Conv(c.clone()),
        weight: (
            vec![rank, ci, kh, kw],
            lora_init(rank * fan_in, fan_in, n.index() as u64),
        ),
        extra: Vec::new(),
        out_shape: vec![y[0], rank, y[2], y[3]],
    };
    let b = Stage {
        kind: Kind::Conv(pointwise()),
        weight: (vec![m, rank, 1, 1], vec![0.0; m * rank]),
        extra: Vec::new(),
        out_shape: y,
    };
    Some(AdapterForm {
        a,
        b,
        a_is_left: false,
        transpose: false,
    })
}

/// A 1×1 conv with no stride, padding or dilation.
fn pointwise() -> ops::Conv {
    ops::Conv {
        kernel: vec![1, 1],
        strides: vec![1, 1],
        pads: vec![0; 4],
        dilations: vec![1, 1],
        group: 1,
    }
}

fn four(s: &[usize]) -> [usize; 4] {
    s.try_into().expect("a 2-D conv's weight is 4-D")
}
