//! IR → ONNX: the back end. Writes a set of IR nodes as an ONNX model: a node imported from
//! ONNX and left unchanged as it was written (op, attributes, name; its inputs renamed to the
//! IR's tensors, which drops `Identity` aliases), a node a pass made through its room's
//! [`Room::to_onnx`](crate::ops::Room::to_onnx). Constants go back the way they came: an
//! original initializer as it was, a folded constant as the nodes that computed it (so a
//! shape computation stays one and the model keeps taking any batch size), a trainable or
//! new constant as an initializer of its values.

use super::proto::{
    GraphProto, ModelProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_proto::DataType, tensor_shape_proto::Dimension, tensor_shape_proto::dimension,
    type_proto,
};
use super::tensor_proto;
use crate::error::Result;
use crate::ir::{Graph, NodeOp, OnnxSource, Role, TensorId};
use crate::ops::{self, OnnxOut};
use crate::{bail, err};
use actc_runtime::plan::DType;
use petgraph::stable_graph::NodeIndex;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// What the writer keeps of the imported model: its fields but the graph, the graph's own
/// fields but its contents, its outputs' declarations, and its initializers by name.
pub struct Original<'m> {
    model: ModelProto,
    graph: GraphProto,
    outputs: &'m [ValueInfoProto],
    opset: i64,
    pub initializers: HashMap<&'m str, &'m TensorProto>,
    /// The model inputs' declared types (symbolic dimensions kept), with fixed dimensions
    /// set to the compiled shapes.
    pub inputs: Vec<ValueInfoProto>,
}

impl<'m> Original<'m> {
    /// `inputs`: each model input's name and compiled shape.
    pub fn new(model: &'m ModelProto, inputs: &[(String, Vec<usize>)]) -> Original<'m> {
        let g = model.graph.as_ref().expect("decode checked the graph");
        let inputs = inputs
            .iter()
            .map(|(name, shape)| {
                let mut input = g
                    .input
                    .iter()
                    .find(|i| i.name() == name)
                    .cloned()
                    .unwrap_or_else(|| value_info(name, shape, DType::F32));
                refix_dims(&mut input, shape);
                input
            })
            .collect();
        // The metadata once, without the weights: every part written takes a copy of it.
        let mut meta = model.clone();
        meta.graph = None;
        Original {
            model: meta,
            graph: GraphProto {
                name: g.name.clone(),
                doc_string: g.doc_string.clone(),
                quantization_annotation: g.quantization_annotation.clone(),
                metadata_props: g.metadata_props.clone(),
                ..Default::default()
            },
            outputs: &g.output,
            opset: super::opset(model),
            initializers: g.initializer.iter().map(|t| (t.name(), t)).collect(),
            inputs,
        }
    }
}

/// The model made of `nodes` (in this order, topological) computing `outputs`; what they
/// read and nothing writes becomes a graph input.
pub fn write(
    graph: &Graph,
    original: &Original,
    nodes: &[NodeIndex],
    outputs: &[TensorId],
) -> Result<ModelProto> {
    let mut w = Writer {
        graph,
        original,
        opset: original.opset,
        written: nodes
            .iter()
            .flat_map(|&n| graph.nodes[n].outputs.clone())
            .collect(),
        nodes: Vec::new(),
        initializers: Vec::new(),
        have: HashSet::new(),
        folded: HashSet::new(),
        inputs: Vec::new(),
    };
    for &n in nodes {
        w.node(n)?;
    }
    for &t in outputs {
        w.need(t)?;
    }
    let output = outputs
        .iter()
        .map(|&t| {
            let tensor = graph.tensor(t);
            original
                .outputs
                .iter()
                .find(|o| o.name() == tensor.name)
                .cloned()
                .unwrap_or_else(|| value_info(&tensor.name, &tensor.shape, tensor.dtype))
        })
        .collect();
    let input = w
        .inputs
        .iter()
        .map(|&t| {
            let tensor = graph.tensor(t);
            match original.inputs.iter().find(|i| i.name() == tensor.name) {
                Some(declared) => declared.clone(),
                None => value_info(&tensor.name, &tensor.shape, tensor.dtype),
            }
        })
        .collect();
    Ok(ModelProto {
        graph: Some(GraphProto {
            node: w.nodes,
            initializer: w.initializers,
            input,
            output,
            ..original.graph.clone()
        }),
        ..original.model.clone()
    })
}

struct Writer<'a, 'm> {
    graph: &'a Graph,
    original: &'a Original<'m>,
    opset: i64,
    /// Tensors the chosen nodes write.
    written: BTreeSet<TensorId>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// Tensors already available: written, initialized, folded or an input.
    have: HashSet<TensorId>,
    /// Folded ONNX nodes already written.
    folded: HashSet<*const NodeProto>,
    inputs: Vec<TensorId>,
}

impl Writer<'_, '_> {
    fn name(&self, t: TensorId) -> String {
        self.graph.tensor(t).name.clone()
    }

    fn node(&mut self, n: NodeIndex) -> Result<()> {
        let node = &self.graph.nodes[n];
        match (&node.source, &node.op) {
            (Some(src), _) => {
                for t in src.inputs.iter().flatten() {
                    self.need(*t)?;
                }
                let proto = self.renamed(src, &node.outputs);
                self.nodes.push(proto);
            }
            (None, NodeOp::Kernel(kind)) => {
                for &t in &node.inputs {
                    self.need(t)?;
                }
                let tensor =
                    |ts: &[TensorId]| ts.iter().map(|&t| self.graph.tensor(t)).collect::<Vec<_>>();
                let mut out = OnnxOut::new(
                    &node.name,
                    self.opset,
                    tensor(&node.inputs),
                    tensor(&node.outputs),
                );
                ops::room_of(kind).to_onnx(kind, &mut out).map_err(|e| {
                    err!(
                        "cannot write node '{}' ({}) as ONNX: {e}",
                        node.name,
                        node.op_name()
                    )
                })?;
                self.nodes.extend(out.nodes);
                self.initializers.extend(out.initializers);
            }
            (None, NodeOp::Onnx(_)) => bail!(
                "node '{}' ({}) lost the ONNX node it came from",
                node.name,
                node.op_name()
            ),
        }
        for &t in &self.graph.nodes[n].outputs {
            self.have.insert(t);
        }
        Ok(())
    }

    /// The source node with the IR's names for its inputs and `outputs`.
    fn renamed(&self, src: &OnnxSource, outputs: &[TensorId]) -> NodeProto {
        let mut proto = (*src.proto).clone();
        proto.input = src
            .inputs
            .iter()
            .map(|t| t.map(|t| self.name(t)).unwrap_or_default())
            .collect();
        for (name, &t) in proto.output.iter_mut().zip(outputs) {
            if !name.is_empty() {
                *name = self.name(t);
            }
        }
        proto
    }

    /// Whether folded node `src` can be written back as computed here: every value it reads
    /// (through folded inputs too) is a model input or written by this part. A shape read
    /// off a tensor another part computes is written as its value instead.
    fn can_recompute(&self, src: &OnnxSource) -> bool {
        src.inputs.iter().flatten().all(|&t| {
            let tensor = self.graph.tensor(t);
            match (&tensor.data, &tensor.folded) {
                (None, _) => {
                    tensor.role == Role::Input
                        || self.written.contains(&t)
                        || self.have.contains(&t)
                }
                (Some(_), Some(inner)) => self.can_recompute(inner),
                (Some(_), None) => true,
            }
        })
    }

    /// Makes `t` available to the nodes written next.
    fn need(&mut self, t: TensorId) -> Result<()> {
        if self.have.contains(&t) || self.written.contains(&t) {
            return Ok(());
        }
        self.have.insert(t);
        let tensor = self.graph.tensor(t);
        let Some(data) = &tensor.data else {
            self.inputs.push(t);
            return Ok(());
        };
        if tensor.role != Role::Trainable
            && let Some(src) = &tensor.folded
            && self.can_recompute(src)
        {
            if self.folded.insert(Arc::as_ptr(&src.proto)) {
                for i in src.inputs.iter().flatten() {
                    self.need(*i)?;
                }
                // A folded node's outputs kept their ONNX names.
                self.nodes.push(self.renamed(src, &[]));
            }
            return Ok(());
        }
        // The original initializer as it was written (its encoding, its metadata), unless a
        // rewrite made a new constant of the same name (a decomposition's factors named like
        // those of the decomposition before).
        let unchanged = |orig: &TensorProto| {
            super::tensor_data(orig).is_ok_and(|(shape, d)| shape == tensor.shape && &d == data)
        };
        let init = match self.original.initializers.get(tensor.name.as_str()) {
            Some(&orig) if unchanged(orig) => orig.clone(),
            _ => tensor_proto(&tensor.name, &tensor.shape, data),
        };
        self.initializers.push(init);
        Ok(())
    }
}

pub fn value_info(name: &str, shape: &[usize], dtype: DType) -> ValueInfoProto {
    let elem_type = match dtype {
        DType::F32 => DataType::Float,
        DType::I64 => DataType::Int64,
        DType::U32 => DataType::Uint32,
        DType::U8 => DataType::Uint8,
        DType::I8 => DataType::Int8,
    };
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem_type as i32),
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

/// Sets every fixed dimension of `info` to `shape`'s value, leaving symbolic ones symbolic.
fn refix_dims(info: &mut ValueInfoProto, shape: &[usize]) {
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
