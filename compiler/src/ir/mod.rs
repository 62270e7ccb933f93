//! The IR: a petgraph `StableDiGraph` of operations over named tensors.
//!
//! Nodes are operations; an edge producer → consumer carries the id of the tensor that flows
//! along it. Tensors live in a side table because several consumers share one tensor and
//! because graph inputs and constants have no producer. `StableDiGraph` keeps node indices
//! valid across the passes' removals.

//!
//! Every node remembers the ONNX node it was imported from while a pass has not changed it,
//! and a constant that import folded remembers the ONNX node that computed it: the ONNX back
//! end (`onnx::write`) writes such nodes as they were, so the exported model keeps the
//! original's names, attributes and batch-agnostic shape computations.

mod build;
mod dump;
mod graph;
mod tensor;
pub mod verify;

pub use graph::{Graph, Node, NodeOp, kind_name};
pub use tensor::{Data, OnnxSource, Role, Tensor, TensorId};
