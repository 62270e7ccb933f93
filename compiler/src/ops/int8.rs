//! What every room's int8 rewrite (`--prefix-precision int8`) makes of a float weight: its
//! int8 values and, right after them among the op's inputs, its quantization.

use crate::ir::{Data, Graph, Tensor, TensorId};
use actc_runtime::planning::quantize_weight_rows;

/// Constants for a weight whose `values` are `shape[0]` rows (output channels or features)
/// of the rest, row-major, named after `name`: its int8 values in `shape`, and its
/// quantization (2, rows): each row's step, then the sum of its float values.
pub fn constants(
    graph: &mut Graph,
    name: &str,
    shape: Vec<usize>,
    values: &[f32],
) -> (TensorId, TensorId) {
    let rows = shape[0];
    let (q, scale, sum) = quantize_weight_rows(values, rows, values.len() / rows.max(1));
    let params: Vec<f32> = scale.into_iter().chain(sum).collect();
    let q = graph.add_tensor(Tensor::constant(
        format!("{name}.int8"),
        shape,
        Data::I8(q.into()),
    ));
    let params = graph.add_tensor(Tensor::constant(
        format!("{name}.int8_steps_sums"),
        vec![2, rows],
        Data::F32(params.into()),
    ));
    (q, params)
}

/// The values of `t` when it is a float constant (a weight the prefix does not compute).
pub fn float_constant(graph: &Graph, t: TensorId) -> Option<std::sync::Arc<[f32]>> {
    match &graph.tensor(t).data {
        Some(Data::F32(v)) => Some(v.clone()),
        _ => None,
    }
}
