//! `--prefix-precision int8`: the frozen prefix's convs of one group read int8 weights
//! (`kernels::qgemm`), quantized here once per output channel; their inputs are quantized
//! as the kernels read them. Depthwise convs, and the small-window convs over a few input
//! channels that the float `direct` kernel runs (MobileNet's 3×3 stem over RGB), stay in
//! floats: they are a small share of the work.
//!
//! A conv becomes an int8 `ConvClip` (its clip, if it had none, left out); a fused chain's
//! 1×1 stages become int8 stages. Each int8 weight is followed by its quantization, a
//! (2, c_out) constant: each output channel's step, then the sum of its float weights.

use crate::ir::{Graph, NodeOp, TensorId};
use crate::ops::int8;
use actc_runtime::ops::{self as rt, Kind};
use actc_runtime::planning::{conv_geom, int8_conv_fits};

pub fn quantize(graph: &mut Graph) {
    for n in graph.topo_order() {
        let node = &graph.nodes[n];
        let dims = |i: usize| graph.tensor(node.inputs[i]).dims();
        let fits = |c: &rt::Conv, x: usize, w: usize| {
            int8::float_constant(graph, node.inputs[w]).is_some()
                && int8_conv_fits(&conv_geom(c, &dims(x), &dims(w)))
        };
        match node.op.clone() {
            NodeOp::Kernel(Kind::Conv(conv)) if fits(&conv, 0, 1) => {
                replace(
                    graph,
                    n,
                    Kind::ConvClip(rt::ConvClip {
                        conv: Some(conv),
                        clip: None,
                        int8: true,
                    }),
                );
            }
            NodeOp::Kernel(Kind::ConvClip(cc))
                if !cc.int8 && cc.conv.as_ref().is_some_and(|c| fits(c, 0, 1)) =>
            {
                replace(graph, n, Kind::ConvClip(rt::ConvClip { int8: true, ..cc }));
            }
            NodeOp::Kernel(Kind::ConvChain(mut cc)) => {
                let mut inputs = node.inputs.clone();
                let mut x = dims(0);
                let mut at = 1;
                for stage in cc.stages.iter_mut() {
                    let (Some(c), Some(&w)) = (&stage.conv, inputs.get(at)) else {
                        break;
                    };
                    let g = conv_geom(c, &x, &graph.tensor(w).dims());
                    x = [g.n, g.c_out, g.out_h(), g.out_w()]
                        .map(|d| d as u64)
                        .to_vec();
                    if !stage.int8
                        && g.is_pointwise()
                        && int8_conv_fits(&g)
                        && int8::float_constant(graph, w).is_some()
                    {
                        let (q, params) = quantized(graph, w);
                        inputs.splice(at..=at, [q, params]);
                        stage.int8 = true;
                    }
                    at += 1 + usize::from(stage.int8) + usize::from(stage.bias);
                }
                if cc.stages.iter().any(|s| s.int8) {
                    graph.nodes[n].op = NodeOp::Kernel(Kind::ConvChain(cc));
                    graph.set_inputs(n, inputs);
                }
            }
            _ => {}
        }
    }
}

/// Node `n` (x, w, [bias]) as `kind`, reading x, its weight int8 and the quantization, [bias].
fn replace(graph: &mut Graph, n: petgraph::stable_graph::NodeIndex, kind: Kind) {
    let mut inputs = graph.nodes[n].inputs.clone();
    let (q, params) = quantized(graph, inputs[1]);
    inputs.splice(1..=1, [q, params]);
    graph.nodes[n].op = NodeOp::Kernel(kind);
    graph.set_inputs(n, inputs);
}

/// Constants for float weight `w` (c_out, …): its int8 values and its quantization.
fn quantized(graph: &mut Graph, w: TensorId) -> (TensorId, TensorId) {
    let t = graph.tensor(w);
    let (name, shape) = (t.name.clone(), t.shape.clone());
    let values = int8::float_constant(graph, w).expect("checked by the caller");
    int8::constants(graph, &name, shape, &values)
}
