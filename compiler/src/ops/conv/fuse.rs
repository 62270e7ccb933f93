//! The conv family's inference fusions in the frozen prefix: a BatchNormalization folded
//! into the conv before it, a Relu or Clip into its output (`ConvClip`), and runs of convs
//! into banded chains (`ConvChain`). Training keeps these apart (the backward needs what the
//! fusions drop).

use crate::ir::{Data, Graph, Node, NodeOp, Tensor, TensorId};
use crate::lowrank;
use actc_runtime::ops::{self as rt, Kind};
use actc_runtime::planning::{
    BatchNormParams, Conv2dGeom, MAX_CHAIN_STAGES, chain_bands, chain_stage_fits, conv_geom,
    fold_into_conv,
};
use petgraph::stable_graph::NodeIndex;

/// All three, in order.
pub fn fuse(graph: &mut Graph, lanes: usize) {
    fold_batch_norms(graph);
    fuse_activations(graph);
    fuse_chains(graph, lanes);
}

fn convs(graph: &Graph) -> Vec<NodeIndex> {
    graph
        .nodes
        .node_indices()
        .filter(|&n| matches!(graph.nodes[n].op, NodeOp::Kernel(Kind::Conv(_))))
        .collect()
}

/// Folds a BatchNormalization (running statistics: an affine map per channel) into the conv
/// before it when it is the conv's only reader: new weight and bias constants.
fn fold_batch_norms(graph: &mut Graph) {
    for c in convs(graph) {
        let Some(bn) = graph.only_reader(c) else {
            continue;
        };
        let NodeOp::Kernel(Kind::BatchNorm(attrs)) = &graph.nodes[bn].op else {
            continue;
        };
        let f32s = |t: TensorId| match &graph.tensor(t).data {
            Some(Data::F32(v)) => Some(v.clone()),
            _ => None,
        };
        let conv = &graph.nodes[c];
        let Some(params) = graph.nodes[bn].inputs[1..5]
            .iter()
            .map(|&t| f32s(t))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let Some(weight) = f32s(conv.inputs[1]) else {
            continue;
        };
        let bias = conv.inputs.get(2).and_then(|&t| f32s(t));
        let p = BatchNormParams {
            scale: &params[0],
            bias: &params[1],
            mean: &params[2],
            var: &params[3],
            epsilon: attrs.epsilon,
        };
        let (w, b) = fold_into_conv(&weight, bias.as_deref(), &p);
        let (w_name, w_shape) = {
            let t = graph.tensor(conv.inputs[1]);
            (format!("{}.folded", t.name), t.shape.clone())
        };
        let b_name = format!("{}.folded_bias", graph.nodes[bn].name);
        let len = b.len();
        let w = graph.add_tensor(Tensor::constant(w_name, w_shape, Data::F32(w.into())));
        let b = graph.add_tensor(Tensor::constant(b_name, vec![len], Data::F32(b.into())));
        let x = graph.nodes[c].inputs[0];
        graph.set_inputs(c, vec![x, w, b]);
        graph.absorb_reader(c, bn);
    }
}

/// Folds a Relu or Clip into the conv before it when it is the conv's only reader: the
/// conv's output buffer then holds the activation, and one buffer and one pass over it go.
/// Inference only: training keeps the two apart (the backward needs the mask).
fn fuse_activations(graph: &mut Graph) {
    for c in convs(graph) {
        let Some(act) = graph.only_reader(c) else {
            continue;
        };
        let clip = match &graph.nodes[act].op {
            NodeOp::Kernel(Kind::Relu(_)) => rt::Clip {
                min: 0.0,
                max: f32::INFINITY,
            },
            NodeOp::Kernel(Kind::Clip(clip)) => clip.clone(),
            _ => continue,
        };
        let NodeOp::Kernel(Kind::Conv(conv)) = graph.nodes[c].op.clone() else {
            unreachable!("convs() lists convs")
        };
        graph.nodes[c].source = None;
        graph.nodes[c].op = NodeOp::Kernel(Kind::ConvClip(rt::ConvClip {
            conv: Some(conv),
            clip: Some(clip),
            int8: false,
        }));
        graph.absorb_reader(c, act);
    }
}

/// A conv node's geometry (the conv and its input and weight shapes) and its clip.
fn stage_of(graph: &Graph, n: NodeIndex) -> Option<(rt::Conv, Option<rt::Clip>, Conv2dGeom)> {
    let node = &graph.nodes[n];
    let (conv, clip) = match &node.op {
        NodeOp::Kernel(Kind::Conv(c)) => (c.clone(), None),
        NodeOp::Kernel(Kind::ConvClip(cc)) => (cc.conv.clone()?, cc.clip.clone()),
        _ => return None,
    };
    let shape = |t: TensorId| graph.tensor(t).dims();
    let (x, w) = (shape(node.inputs[0]), shape(*node.inputs.get(1)?));
    if x.len() != 4 || w.len() != 4 {
        return None;
    }
    let g = conv_geom(&conv, &x, &w);
    Some((conv, clip, g))
}

/// Whether the only reader of conv `n` is the next factor of the same decomposed layer
/// (`actc decompose` wrote the layer as `<layer>/lowrank<i>` stages): a chain that closes on a
/// 1×1 layer takes all of its factors, so it still ends on the narrow map of the block and
/// keeps its residual add.
fn factor_follows(graph: &Graph, n: NodeIndex) -> bool {
    let layer = |n: NodeIndex| lowrank::factor_of(&graph.nodes[n].name);
    layer(n).is_some_and(|l| {
        graph
            .only_reader(n)
            .is_some_and(|next| layer(next) == Some(l) && stage_of(graph, next).is_some())
    })
}

/// Fuses runs of convs whose intermediate maps have one reader each into `ConvChain`s,
/// where `kernels::chain` runs the stages and finds the chain worth it: a MobileNet block's
/// expand, depthwise and project (and its residual Add) become one step that keeps the wide
/// maps between them in cache, band by band, and out of the arena.
///
/// A chain grows from a conv along sole readers and closes with the first 1×1 conv after a
/// k×k one (all its factors, for a decomposed layer): the narrow map a block ends on is where
/// the next chain starts.
fn fuse_chains(graph: &mut Graph, lanes: usize) {
    for first in graph.topo_order() {
        if !graph.nodes.contains_node(first) {
            continue;
        }
        let Some((conv, clip, g)) = stage_of(graph, first) else {
            continue;
        };
        if !chain_stage_fits(&g, true) {
            continue;
        }
        let mut nodes = vec![first];
        let mut stages = vec![(conv, clip)];
        let mut geoms = vec![g];
        let mut spatial = !g.is_pointwise();
        while nodes.len() < MAX_CHAIN_STAGES {
            let last = nodes[nodes.len() - 1];
            let Some(next) = graph.only_reader(last) else {
                break;
            };
            let Some((conv, clip, g)) = stage_of(graph, next) else {
                break;
            };
            if graph.nodes[next].inputs[0] != graph.nodes[last].outputs[0]
                || !chain_stage_fits(&g, false)
            {
                break;
            }
            nodes.push(next);
            stages.push((conv, clip));
            geoms.push(g);
            if g.is_pointwise() && spatial && !factor_follows(graph, next) {
                break;
            }
            spatial |= !g.is_pointwise();
        }
        let Some(rows) = chain_bands(&geoms, lanes) else {
            continue;
        };
        let x = graph.nodes[first].inputs[0];
        let last = nodes[nodes.len() - 1];
        let mut out = graph.nodes[last].outputs[0];
        let add = graph.only_reader(last).filter(|&a| {
            let node = &graph.nodes[a];
            matches!(node.op, NodeOp::Kernel(Kind::Add(_)))
                && node.inputs.len() == 2
                && node.inputs.contains(&x)
                && node.inputs.contains(&out)
                && graph.tensor(x).shape == graph.tensor(out).shape
        });
        let mut inputs = vec![x];
        let mut chained = Vec::new();
        for (&n, (conv, clip)) in nodes.iter().zip(stages) {
            let node = &graph.nodes[n];
            inputs.extend(&node.inputs[1..]);
            chained.push(rt::ChainStage {
                conv: Some(conv),
                bias: node.inputs.len() > 2,
                clip,
                int8: false,
            });
        }
        let ends = add.unwrap_or(last);
        if let Some(a) = add {
            out = graph.nodes[a].outputs[0];
        }
        let name = format!("{} → {}", graph.nodes[first].name, graph.nodes[ends].name);
        let phase = graph.nodes[first].phase;
        for n in nodes.into_iter().chain(add) {
            graph.remove_node(n);
        }
        graph.add_node_in_place(Node {
            name,
            op: NodeOp::Kernel(Kind::ConvChain(rt::ConvChain {
                stages: chained,
                residual: add.is_some(),
                rows: rows as u32,
                lanes: lanes as u32,
            })),
            inputs,
            outputs: vec![out],
            phase,
            source: None,
            origin: None,
        });
    }
}
