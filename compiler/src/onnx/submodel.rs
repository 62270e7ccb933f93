//! ONNX sub-models cut from the original: the frozen prefix (what tract runs) and the rest
//! (what `export` puts back together with the fine-tuned weights).

use super::proto::{
    GraphProto, ModelProto, TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_shape_proto::Dimension, tensor_shape_proto::dimension, type_proto,
};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Indices of the nodes needed to compute `targets`.
pub fn ancestors(graph: &GraphProto, targets: &[String]) -> BTreeSet<usize> {
    let producer: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let mut seen = BTreeSet::new();
    let mut stack: Vec<usize> = targets
        .iter()
        .filter_map(|t| producer.get(t.as_str()).copied())
        .collect();
    while let Some(i) = stack.pop() {
        if seen.insert(i) {
            stack.extend(
                graph.node[i]
                    .input
                    .iter()
                    .filter_map(|t| producer.get(t.as_str()).copied()),
            );
        }
    }
    seen
}

pub fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A model with the given nodes of `model` (in their original order), the initializers they
/// read, `inputs` and `outputs`.
pub fn extract(
    model: &ModelProto,
    nodes: &BTreeSet<usize>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
) -> ModelProto {
    let g = model.graph.as_ref().expect("decode checked the graph");
    let node: Vec<_> = nodes.iter().map(|&i| g.node[i].clone()).collect();
    let read: HashSet<&str> = node
        .iter()
        .flat_map(|n| n.input.iter().map(|s| s.as_str()))
        .collect();
    let initializer = g
        .initializer
        .iter()
        .filter(|t| read.contains(t.name()))
        .cloned()
        .collect();
    ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        producer_name: Some("actc".to_string()),
        producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        graph: Some(GraphProto {
            node,
            name: g.name.clone(),
            initializer,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Tensor names read by `nodes` that none of them produces (and that are no initializer).
pub fn free_inputs(model: &ModelProto, nodes: &BTreeSet<usize>) -> Vec<String> {
    let g = model.graph.as_ref().expect("decode checked the graph");
    let produced: HashSet<&str> = nodes
        .iter()
        .flat_map(|&i| g.node[i].output.iter().map(|s| s.as_str()))
        .collect();
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    let mut out: Vec<String> = Vec::new();
    for &i in nodes {
        for name in &g.node[i].input {
            if !name.is_empty()
                && !produced.contains(name.as_str())
                && !inits.contains(name.as_str())
                && !out.contains(name)
            {
                out.push(name.clone());
            }
        }
    }
    out
}

/// Sets every fixed dimension of `info` to `shape`'s value, leaving symbolic ones symbolic.
pub fn refix_dims(info: &mut ValueInfoProto, shape: &[usize]) {
    let Some(type_proto::Value::TensorType(t)) =
        info.r#type.as_mut().and_then(|t| t.value.as_mut())
    else {
        return;
    };
    let Some(s) = t.shape.as_mut() else { return };
    for (d, &want) in s.dim.iter_mut().zip(shape) {
        if let Some(dimension::Value::DimValue(v)) = d.value.as_mut() {
            *v = want as i64;
        }
    }
}
