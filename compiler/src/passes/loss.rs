//! The loss appended to the chosen output, and the seed of the backward pass.

use crate::bail;
use crate::error::Result;
use crate::ir::{Graph, Role, Tensor, TensorId};
use crate::ops;
use actc_runtime::ops::{Empty, Kind};
use actc_runtime::plan::{DType, LossKind, Phase};

pub struct LossParts {
    pub loss: TensorId,
    pub label: TensorId,
    /// The tensor the loss reads (the logits, for cross-entropy): accuracy and eval use it.
    pub output: TensorId,
    /// The gradient of the loss with respect to `output`.
    pub seed: TensorId,
}

/// Cross-entropy reads logits: a model that ends in a softmax trains on the softmax's input,
/// which gives the same argmax and a numerically stable loss.
pub fn append_loss(graph: &mut Graph, output: TensorId, kind: LossKind) -> Result<LossParts> {
    let mut out = output;
    if kind == LossKind::CrossEntropy
        && let Some(p) = graph.producer(out)
        && let Some((room, kind)) = ops::room_of_node(&graph.nodes[p])
        && room.softmax_axis(kind) == Some(graph.tensor(out).shape.len() - 1)
        && graph.consumers(out).next().is_none()
    {
        let logits = graph.nodes[p].inputs[0];
        graph.remove_node(p);
        graph.outputs = vec![logits];
        out = logits;
    }
    let shape = graph.tensor(out).shape.clone();
    let name = graph.tensor(out).name.clone();
    let origin = graph.producer(out).map(|p| graph.nodes[p].name.clone());
    let scalar = |n: &str| Tensor {
        role: Role::Loss,
        ..Tensor::value(n, vec![], DType::F32)
    };
    let parts = match kind {
        LossKind::CrossEntropy => {
            if shape.len() != 2 {
                bail!(
                    "--loss cross-entropy needs (batch, classes) logits, but output '{name}' has shape {shape:?}; use --loss mse, or pick another --output"
                );
            }
            let label = graph.add_tensor(Tensor {
                role: Role::Label,
                ..Tensor::value("labels", vec![shape[0]], DType::U32)
            });
            let probs = Tensor::value(format!("{name}.probabilities"), shape.clone(), DType::F32);
            let ids = graph.push(
                "loss/cross_entropy".into(),
                Kind::SoftmaxCrossEntropy(Empty {}),
                vec![out, label],
                vec![scalar("loss"), probs],
                Phase::Loss,
                origin.clone(),
            );
            let seed = graph.gradient_tensor(out, "grad");
            let seed = graph.push(
                "loss/cross_entropy_grad".into(),
                Kind::SoftmaxCrossEntropyBackward(Empty {}),
                vec![ids[1], label],
                vec![seed],
                Phase::Backward,
                origin,
            )[0];
            LossParts {
                loss: ids[0],
                label,
                output: out,
                seed,
            }
        }
        LossKind::Mse => {
            let label = graph.add_tensor(Tensor {
                role: Role::Label,
                ..Tensor::value("targets", shape.clone(), DType::F32)
            });
            let loss = graph.push(
                "loss/mse".into(),
                Kind::Mse(Empty {}),
                vec![out, label],
                vec![scalar("loss")],
                Phase::Loss,
                origin.clone(),
            )[0];
            let seed = graph.gradient_tensor(out, "grad");
            let seed = graph.push(
                "loss/mse_grad".into(),
                Kind::MseBackward(Empty {}),
                vec![out, label],
                vec![seed],
                Phase::Backward,
                origin,
            )[0];
            LossParts {
                loss,
                label,
                output: out,
                seed,
            }
        }
    };
    Ok(parts)
}
