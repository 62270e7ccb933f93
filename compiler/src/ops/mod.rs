//! The op rooms: one file per family of ops, each implementing [`Room`] with everything the
//! compiler knows about its ops (ONNX lowering, the shape rule on IR nodes, parameters,
//! layers, the backward, FLOPs). Nothing outside the rooms matches on op kinds, except the
//! runtime's executor.
//!
//! Adding an op: its variant in `actc_runtime::ops::Kind`, its kernel and its executor arm
//! in the runtime, and its room here (a new file joins [`ROOMS`]).

mod activation;
mod attention;
mod compress;
mod conv;
mod elementwise;
mod gemm;
mod int8;
mod layout;
mod norm;
mod optim;
mod pool;
mod resize;
mod room;
mod softmax;

pub use room::{Arg, Backward, LayerClass, Lowered, OnnxNode, OnnxOut, Out, Room, kernel};

use crate::ir::{Graph, Node, NodeOp, TensorId};
use actc_runtime::ops::Kind;

/// Every room; each runtime op belongs to exactly one.
static ROOMS: &[&dyn Room] = &[
    &conv::Convs,
    &gemm::Dense,
    &attention::Attention,
    &activation::Activations,
    &elementwise::Elementwise,
    &pool::Pools,
    &resize::Resizes,
    &norm::Norms,
    &layout::Layout,
    &softmax::SoftmaxAndLosses,
    &optim::Optimizers,
    &compress::Compression,
];

/// The room of a runtime op.
pub fn room_of(kind: &Kind) -> &'static dyn Room {
    ROOMS
        .iter()
        .copied()
        .find(|r| r.owns(kind))
        .unwrap_or_else(|| panic!("no room owns {}", op_name(kind)))
}

/// The room that imports an ONNX op type, if any.
pub fn room_for_onnx(op_type: &str) -> Option<&'static dyn Room> {
    ROOMS
        .iter()
        .copied()
        .find(|r| r.onnx_ops().contains(&op_type))
}

/// The room of a node's runtime op, when it has one.
pub fn room_of_node(node: &Node) -> Option<(&'static dyn Room, &Kind)> {
    kernel(node).map(|k| (room_of(k), k))
}

/// Each room's [`Room::fuse_inference`], in turn.
pub fn fuse_inference(graph: &mut Graph, lanes: usize) {
    ROOMS.iter().for_each(|r| r.fuse_inference(graph, lanes))
}

/// Each room's [`Room::quantize_inference`], in turn.
pub fn quantize_inference(graph: &mut Graph) {
    ROOMS.iter().for_each(|r| r.quantize_inference(graph))
}

/// Each room's [`Room::rewrite`], in turn.
pub fn rewrite(graph: &mut Graph) -> crate::error::Result<()> {
    ROOMS.iter().try_for_each(|r| r.rewrite(graph))
}

/// The variant name of a runtime op, e.g. `ConvBackwardData`: what `inspect` and the IR
/// text print.
pub fn op_name(kind: &Kind) -> String {
    crate::ir::kind_name(kind)
}

/// FLOPs of one run of `kind` on buffers of these shapes.
pub fn flops(kind: &Kind, ins: &[&[u64]], outs: &[&[u64]]) -> u64 {
    room_of(kind).flops(kind, ins, outs)
}

/// The constant float inputs of a parameterized node: what training updates.
pub fn params_of(graph: &Graph, kind: &Kind, node: &Node) -> Vec<TensorId> {
    room_of(kind)
        .params(kind, node, graph)
        .iter()
        .filter_map(|&i| node.inputs.get(i).copied())
        .filter(|&t| {
            let t = graph.tensor(t);
            t.is_const() && t.dtype == actc_runtime::plan::DType::F32
        })
        .collect()
}

/// Whether a node is a layer for `--layers`, and of which kind.
pub fn layer_class(graph: &Graph, node: &Node) -> Option<LayerClass> {
    match &node.op {
        NodeOp::Kernel(k) => room_of(k).layer(node, graph),
        NodeOp::Onnx(op) => room_for_onnx(op.op_type())?.layer(node, graph),
    }
}

/// Whether autodiff can differentiate the node.
pub fn differentiable(graph: &Graph, node: &Node) -> bool {
    match &node.op {
        NodeOp::Kernel(k) => room_of(k).differentiable(k, node, graph),
        NodeOp::Onnx(_) => false,
    }
}
