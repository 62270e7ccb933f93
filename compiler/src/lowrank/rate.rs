//! The learning rate a decomposed layer's factors train at. With W = A·B, an SGD step on A
//! moves W by −lr·∇W·BᵀB and a step on B by −lr·AAᵀ·∇W: each factor's step reaches W
//! amplified by the other factors' squared singular values, and the truncated SVD's √S split
//! puts σᵢ on each side. A pretrained layer's leading σ are 5–10, so at the plan's rate its
//! factors train an order of magnitude hotter than the layer did, and with momentum they
//! diverge where the layer does not (LOWRANK.md). `compile` scales each factor's rate so
//! that the factors training at once move W about as fast as the plan's rate moved it.

use super::factor_of;
use crate::ir::{Data, Graph, TensorId};
use actc_runtime::plan::Phase;
use std::collections::BTreeMap;
use std::fmt;

/// How the factors of decomposed layers set their learning rates (`--factor-lr`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FactorLr {
    /// Scaled by the other factors' magnitudes, as above; never above the plan's.
    Auto,
    /// This multiple of the plan's rate for every factor (1: the plan's).
    Scale(f32),
}

impl fmt::Display for FactorLr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FactorLr::Auto => write!(f, "auto"),
            FactorLr::Scale(s) => write!(f, "{s}"),
        }
    }
}

impl std::str::FromStr for FactorLr {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<FactorLr, String> {
        match s.parse::<f32>() {
            _ if s == "auto" => Ok(FactorLr::Auto),
            Ok(v) if v > 0.0 && v.is_finite() => Ok(FactorLr::Scale(v)),
            _ => Err(format!(
                "'{s}' is not a factor learning rate; give `auto` or a positive multiple of --lr (1: the same rate)"
            )),
        }
    }
}

/// The mean squared singular value of a weight taken as the matrix of its first mode
/// against the others: ‖F‖² over the smaller side.
fn mean_square_singular(shape: &[usize], values: &[f32]) -> f64 {
    let rows = shape.first().copied().unwrap_or(1);
    let cols: usize = shape.iter().skip(1).product();
    let square: f64 = values.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    square / rows.min(cols).max(1) as f64
}

/// The learning-rate multiple of each trained factor weight among `params` (biases and
/// other weights train at the plan's rate and are not listed). `in_turns`: sequential freezing, where a
/// factor trains alone during its turn.
pub fn lr_scales(
    graph: &Graph,
    params: &[TensorId],
    rule: FactorLr,
    in_turns: bool,
) -> BTreeMap<TensorId, f32> {
    let mut layers: BTreeMap<&str, Vec<(TensorId, f64)>> = BTreeMap::new();
    for &p in params {
        let layer = graph.consumers(p).find_map(|n| {
            let node = &graph.nodes[n];
            (node.phase == Phase::Forward && node.inputs.get(1) == Some(&p))
                .then(|| factor_of(&node.name))
                .flatten()
        });
        let tensor = graph.tensor(p);
        if let (Some(layer), Some(Data::F32(values))) = (layer, &tensor.data) {
            let power = mean_square_singular(&tensor.shape, values);
            layers.entry(layer).or_default().push((p, power));
        }
    }
    let mut scales = BTreeMap::new();
    for factors in layers.values().filter(|f| f.len() > 1) {
        // How far a step on factor i moves the layer, per unit of the plan's rate.
        let gain = |i: usize| -> f64 {
            let others = factors.iter().enumerate().filter(|&(j, _)| j != i);
            others.map(|(_, &(_, power))| power).product()
        };
        let together: f64 = (0..factors.len()).map(gain).sum();
        for (i, &(p, _)) in factors.iter().enumerate() {
            let scale = match rule {
                FactorLr::Scale(s) => s,
                FactorLr::Auto => {
                    let moved = if in_turns { gain(i) } else { together };
                    (1.0 / moved).min(1.0) as f32
                }
            };
            scales.insert(p, scale);
        }
    }
    scales
}
