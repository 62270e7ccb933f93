//! The loss appended to the chosen outputs, and the seed of the backward pass.
//!
//! Several outputs (`--loss mse` only) are flattened to (batch, values) and concatenated
//! into one row per sample, the layout of the targets the runtime feeds; one MSE over that
//! row, in segments, sums each output's mean squared error (times its weight).

use crate::bail;
use crate::error::Result;
use crate::ir::{Graph, Role, Tensor, TensorId};
use crate::ops;
use actc_runtime::ops::{Axis, Empty, Kind, MseSegments};
use actc_runtime::plan::{DType, LossKind, Phase};

pub struct LossParts {
    pub loss: TensorId,
    pub label: TensorId,
    /// The tensor the loss reads (the logits, for cross-entropy; several outputs'
    /// concatenation): accuracy and eval use it.
    pub output: TensorId,
    /// The gradient of the loss with respect to `output`.
    pub seed: TensorId,
}

/// Cross-entropy reads logits: a model that ends in a softmax trains on the softmax's input,
/// which gives the same argmax and a numerically stable loss. `weights` (MSE only) weigh
/// each of `outputs`, 1 each when empty.
pub fn append_loss(
    graph: &mut Graph,
    outputs: &[TensorId],
    kind: LossKind,
    weights: &[f32],
) -> Result<LossParts> {
    if !weights.is_empty() && weights.len() != outputs.len() {
        bail!(
            "--loss-weights gives {} weights for {} trained outputs; give one per --train-output",
            weights.len(),
            outputs.len()
        );
    }
    if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        bail!("--loss-weights {w}: each weight must be a finite number of at least 0");
    }
    let segments = match (kind, outputs) {
        (LossKind::CrossEntropy, [_]) if weights.is_empty() => None,
        (LossKind::CrossEntropy, _) if outputs.len() > 1 => bail!(
            "--train-output names {} outputs, and --loss cross-entropy trains on exactly one; name one output, or use --loss mse",
            outputs.len()
        ),
        (LossKind::CrossEntropy, _) => {
            bail!("--loss-weights weighs the outputs of --loss mse; leave it out of cross-entropy")
        }
        // One output at weight 1: the plain mean, as a plan of one output always was.
        (LossKind::Mse, [_]) if weights.iter().all(|&w| w == 1.0) => None,
        (LossKind::Mse, _) => Some(weights.to_vec()),
    };
    let (mut out, segments) = match segments {
        Some(w) => concat_rows(graph, outputs, w)?,
        None => (outputs[0], MseSegments::default()),
    };
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
                Kind::Mse(segments.clone()),
                vec![out, label],
                vec![scalar("loss")],
                Phase::Loss,
                origin.clone(),
            )[0];
            let seed = graph.gradient_tensor(out, "grad");
            let seed = graph.push(
                "loss/mse_grad".into(),
                Kind::MseBackward(segments),
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

/// The outputs as (batch, values) rows, side by side in one tensor, and the segments (each
/// output's values and weight, 1 when `weights` is empty) an MSE over it sums.
fn concat_rows(
    graph: &mut Graph,
    outputs: &[TensorId],
    weights: Vec<f32>,
) -> Result<(TensorId, MseSegments)> {
    let mut rows = Vec::with_capacity(outputs.len());
    let mut sizes = Vec::with_capacity(outputs.len());
    for &o in outputs {
        let t = graph.tensor(o);
        if t.shape.is_empty() {
            bail!(
                "output '{}' is a scalar: --loss mse over several outputs needs a batch axis first in each",
                t.name
            );
        }
        let (batch, values) = (t.shape[0], t.shape[1..].iter().product::<usize>());
        sizes.push(values as u32);
        if t.shape.len() == 2 {
            rows.push(o);
            continue;
        }
        let name = format!("{}.rows", t.name);
        let origin = graph.producer(o).map(|p| graph.nodes[p].name.clone());
        let row = Tensor::value(name.clone(), vec![batch, values], DType::F32);
        let r = graph.push(
            format!("loss/{name}"),
            Kind::Reshape(Empty {}),
            vec![o],
            vec![row],
            Phase::Forward,
            origin,
        )[0];
        rows.push(r);
    }
    let batch = graph.tensor(outputs[0]).shape[0];
    let total = sizes.iter().map(|&s| s as usize).sum();
    let all = Tensor::value("trained_outputs", vec![batch, total], DType::F32);
    let out = graph.push(
        "loss/trained_outputs".into(),
        Kind::Concat(Axis { axis: 1 }),
        rows,
        vec![all],
        Phase::Forward,
        None,
    )[0];
    let weights = match weights.is_empty() {
        true => vec![1.0; sizes.len()],
        false => weights,
    };
    Ok((out, MseSegments { sizes, weights }))
}
