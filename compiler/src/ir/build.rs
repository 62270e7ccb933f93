//! The node builder every pass uses: a runtime op, its inputs, and new tensors it writes.

use super::graph::{Graph, Node, NodeOp};
use super::tensor::{Role, Tensor, TensorId};
use actc_runtime::ops::Kind;
use actc_runtime::plan::{DType, Phase};

impl Graph {
    /// Adds a node running `kind` and the tensors it writes; returns their ids.
    pub fn push(
        &mut self,
        name: String,
        kind: Kind,
        inputs: Vec<TensorId>,
        outputs: Vec<Tensor>,
        phase: Phase,
        origin: Option<String>,
    ) -> Vec<TensorId> {
        let ids: Vec<TensorId> = outputs.into_iter().map(|t| self.add_tensor(t)).collect();
        self.add_node(Node {
            name,
            op: NodeOp::Kernel(kind),
            inputs,
            outputs: ids.clone(),
            phase,
            source: None,
            origin,
        });
        ids
    }

    /// A new gradient tensor for `of`, named `<of>.<suffix>`, of its shape.
    pub fn gradient_tensor(&self, of: TensorId, suffix: &str) -> Tensor {
        let t = self.tensor(of);
        Tensor {
            role: Role::Gradient,
            ..Tensor::value(format!("{}.{suffix}", t.name), t.shape.clone(), DType::F32)
        }
    }
}
