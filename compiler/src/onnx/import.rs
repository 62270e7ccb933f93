//! ONNX → IR: constants gathered (initializers and `Constant` nodes), `Identity` removed,
//! every shape fixed and every shape computation folded, each node mapped to a runtime
//! operation where actc has one.

use super::proto::{
    ModelProto, NodeProto, ValueInfoProto, tensor_shape_proto::dimension, type_proto,
};
use super::shape;
use super::{Attrs, node_label, opset, tensor_data};
use crate::error::Result;
use crate::ir::{Data, Graph, Node, NodeOp, OnnxSource, Role, Tensor, TensorId};
use crate::ops::{self, Arg, Lowered, OnnxNode};
use crate::{bail, err};
use actc_runtime::plan::{DType, Phase};
use std::collections::HashMap;
use std::sync::Arc;

/// Elements of the largest constant import folds (a shape computation is a handful).
const MAX_FOLDED: usize = 1 << 26;

/// Gives `name` to tensor `id`: every name is defined once in an ONNX graph.
fn define(names: &mut HashMap<String, TensorId>, name: &str, id: TensorId) -> Result<()> {
    if names.insert(name.to_string(), id).is_some() {
        bail!(
            "tensor '{name}' is defined twice (by two initializers, inputs or node outputs); an ONNX graph defines each name once"
        );
    }
    Ok(())
}

/// The batch size when neither the model nor the command line fixes it.
pub const DEFAULT_BATCH: usize = 8;

/// How to fix the model's input shape.
#[derive(Clone, Debug, Default)]
pub struct InputShape {
    /// The whole shape (`--input-shape 8x3x224x224`). It may differ from sizes the model
    /// fixes (models are often exported at one size by accident); shape inference then
    /// rejects a shape the graph cannot take, naming the node.
    pub shape: Option<Vec<usize>>,
    /// Only the batch size, the rest from the model (`--batch 8`).
    pub batch: Option<usize>,
}

pub struct Imported {
    pub graph: Graph,
    /// The first model input (`graph.inputs` holds them all).
    pub input: TensorId,
}

pub fn import(model: &ModelProto, fix: &InputShape) -> Result<Imported> {
    let opset = opset(model);
    if !(7..=23).contains(&opset) {
        bail!("model uses opset {opset}; actc reads opsets 7 to 23 (11 to 21 are tested)");
    }
    let g = model.graph.as_ref().expect("decode checked the graph");
    let mut graph = Graph::default();
    let mut names: HashMap<String, TensorId> = HashMap::new();

    for init in &g.initializer {
        let (dims, data) = tensor_data(init)?;
        let id = graph.add_tensor(Tensor::constant(init.name(), dims, data));
        define(&mut names, init.name(), id)?;
    }
    let real_inputs: Vec<&ValueInfoProto> = g
        .input
        .iter()
        .filter(|i| !names.contains_key(i.name()))
        .collect();
    if real_inputs.is_empty() {
        bail!("the model has no input (every graph input is an initializer)");
    }
    let fixed = fixed_input_shapes(&real_inputs, fix)?;
    for (info, (shape, dtype)) in real_inputs.iter().zip(fixed) {
        if super::numel(&shape).is_none() {
            bail!(
                "model input '{}' at {shape:?} has more elements than actc handles; give a smaller --batch or --input-shape",
                info.name()
            );
        }
        let id = graph.add_tensor(Tensor {
            role: Role::Input,
            ..Tensor::value(info.name(), shape, dtype)
        });
        define(&mut names, info.name(), id)?;
        graph.inputs.push(id);
    }
    let input = graph.inputs[0];

    for (index, node) in g.node.iter().enumerate() {
        import_node(&mut graph, &mut names, node, index, opset)?;
    }
    for out in &g.output {
        let id = *names
            .get(out.name())
            .ok_or_else(|| err!("graph output '{}' is produced by no node", out.name()))?;
        graph.outputs.push(id);
        graph.output_names.push(out.name().to_string());
    }
    Ok(Imported { graph, input })
}

/// Each model input's fixed shape and element type. `--input-shape` gives the shape of
/// every input of its rank (a text encoder's `input_ids` and `attention_mask` share one);
/// `--batch` the batch of each.
fn fixed_input_shapes(
    inputs: &[&ValueInfoProto],
    fix: &InputShape,
) -> Result<Vec<(Vec<usize>, DType)>> {
    let ranks: Vec<usize> = inputs.iter().map(|i| declared_dims(i).len()).collect();
    if let Some(shape) = &fix.shape
        && inputs.len() > 1
        && !ranks.contains(&shape.len())
    {
        bail!(
            "--input-shape {} has rank {}, but the model's inputs {} have ranks {ranks:?}",
            join_dims(shape),
            shape.len(),
            inputs
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    inputs
        .iter()
        .map(|info| {
            let mut fix = fix.clone();
            let rank = declared_dims(info).len();
            if inputs.len() > 1 && fix.shape.as_ref().is_some_and(|s| s.len() != rank) {
                fix.shape = None;
            }
            let dtype = input_dtype(info)?;
            Ok((fixed_input_shape(info, &fix)?, dtype))
        })
        .collect()
}

fn declared_dims(info: &ValueInfoProto) -> Vec<dimension::Value> {
    match info.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| {
                        d.value
                            .clone()
                            .unwrap_or(dimension::Value::DimParam("?".into()))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn join_dims(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// Floats train; integers (token ids, masks) feed the frozen prefix.
fn input_dtype(info: &ValueInfoProto) -> Result<DType> {
    let name = info.name();
    match info.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => match t.elem_type() {
            1 | 10 | 11 | 16 => Ok(DType::F32),
            7 => Ok(DType::I64),
            other => bail!(
                "model input '{name}' has element type {other}; actc feeds float and int64 inputs"
            ),
        },
        _ => bail!("model input '{name}' is not a tensor"),
    }
}

fn fixed_input_shape(info: &ValueInfoProto, fix: &InputShape) -> Result<Vec<usize>> {
    let name = info.name();
    let tensor = match info.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t,
        _ => bail!("model input '{name}' is not a tensor"),
    };
    let dims: Vec<std::result::Result<usize, String>> = tensor
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(dimension::Value::DimValue(v)) if *v > 0 => Ok(*v as usize),
                    Some(dimension::Value::DimParam(p)) => Err(p.clone()),
                    _ => Err("?".to_string()),
                })
                .collect()
        })
        .unwrap_or_default();
    let show = |dims: &[std::result::Result<usize, String>]| {
        dims.iter()
            .map(|d| match d {
                Ok(v) => v.to_string(),
                Err(p) => p.clone(),
            })
            .collect::<Vec<_>>()
            .join("x")
    };
    if let Some(shape) = &fix.shape {
        if !dims.is_empty() && shape.len() != dims.len() {
            bail!(
                "--input-shape {} has rank {}, but model input '{name}' has shape {} (rank {})",
                shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("x"),
                shape.len(),
                show(&dims),
                dims.len()
            );
        }
        if shape.contains(&0) {
            bail!("--input-shape must not contain 0");
        }
        return Ok(shape.clone());
    }
    let mut out = Vec::with_capacity(dims.len());
    for (i, d) in dims.iter().enumerate() {
        match (d, i, fix.batch) {
            (Ok(v), 0, Some(b)) if *v != b => bail!(
                "--batch {b}: model input '{name}' fixes the batch size to {v}; re-export it with a dynamic batch axis"
            ),
            (Ok(v), _, _) => out.push(*v),
            (Err(_), 0, b) => out.push(b.unwrap_or(DEFAULT_BATCH)),
            (Err(_), _, _) => bail!(
                "model input '{name}' has shape {} with symbolic dimensions; give the full shape, e.g. --input-shape {}",
                show(&dims),
                dims.iter()
                    .enumerate()
                    .map(|(i, d)| match d {
                        Ok(v) => v.to_string(),
                        Err(_) if i == 0 => fix.batch.unwrap_or(8).to_string(),
                        Err(_) => "32".to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("x")
            ),
        }
    }
    if out.is_empty() {
        bail!("model input '{name}' has no shape; give it with --input-shape");
    }
    Ok(out)
}

fn import_node(
    graph: &mut Graph,
    names: &mut HashMap<String, TensorId>,
    node: &NodeProto,
    index: usize,
    opset: i64,
) -> Result<()> {
    let label = node_label(node);
    let op = node.op_type();
    if !matches!(node.domain(), "" | "ai.onnx") {
        bail!(
            "node '{label}' is op {op} of domain '{}'; actc reads standard ONNX ops only",
            node.domain()
        );
    }
    super::check_attributes(node)?;
    // Every op writes its first output; a fuzzed node with none indexed past its output list.
    if node.output.first().is_none_or(|o| o.is_empty()) {
        bail!("node '{label}' ({op}) names no output; every ONNX op writes at least one");
    }
    let a = Attrs::new(node);
    if op == "Constant" {
        let data = if let Some(t) = a.tensor("value") {
            tensor_data(t)?
        } else if a.has("value_float") {
            (vec![], Data::F32(vec![a.float("value_float", 0.0)].into()))
        } else if let Some(v) = a.ints("value_ints") {
            (vec![v.len()], Data::I64(v.into()))
        } else if a.has("value_int") {
            (vec![], Data::I64(vec![a.int("value_int", 0)].into()))
        } else if a.has("value_floats") {
            let v: Vec<f32> = node
                .attribute
                .iter()
                .find(|x| x.name() == "value_floats")
                .map(|x| x.floats.clone())
                .unwrap_or_default();
            (vec![v.len()], Data::F32(v.into()))
        } else {
            bail!("node '{label}' (Constant) has no value attribute actc reads");
        };
        let name = node.output.first().cloned().unwrap_or_default();
        // The back end writes the node back as it was (unless its value trains).
        let source = OnnxSource {
            proto: Arc::new(node.clone()),
            inputs: Vec::new(),
        };
        let id = graph.add_tensor(Tensor {
            folded: Some(Arc::new(source)),
            ..Tensor::constant(name.clone(), data.0, data.1)
        });
        define(names, &name, id)?;
        return Ok(());
    }

    let mut inputs: Vec<Option<TensorId>> = Vec::with_capacity(node.input.len());
    for name in &node.input {
        if name.is_empty() {
            inputs.push(None);
            continue;
        }
        let id = *names.get(name).ok_or_else(|| {
            err!("node '{label}' ({op}) reads '{name}', which no earlier node produces (the graph is not in topological order, or the tensor is missing)")
        })?;
        inputs.push(Some(id));
    }
    let args: Vec<Arg> = inputs
        .iter()
        .map(|i| match i {
            Some(id) => {
                let t = graph.tensor(*id);
                Arg {
                    shape: t.shape.clone(),
                    dtype: t.dtype,
                    data: t.data.clone(),
                }
            }
            None => Arg {
                shape: vec![0],
                dtype: DType::F32,
                data: Some(Data::F32(Vec::new().into())),
            },
        })
        .collect();
    if args.is_empty() {
        bail!("node '{label}' ({op}) has no inputs");
    }

    // Identity, inference Dropout and a Cast to the type the value has pass their input
    // through: alias the name.
    let same_type_cast = op == "Cast" && a.int("to", 0) == 1 && args[0].dtype == DType::F32;
    if op == "Identity"
        || same_type_cast
        || (op == "Dropout" && node.output.iter().skip(1).all(|o| o.is_empty()))
    {
        let src = inputs[0].ok_or_else(|| err!("node '{label}' ({op}) has no input"))?;
        define(names, &node.output[0], src)?;
        return Ok(());
    }

    let onnx = OnnxNode::new(node, &args, opset);
    let lowered = match ops::room_for_onnx(op) {
        Some(room) => room.import(&onnx)?,
        None => Lowered::onnx(shape::infer(&onnx)?),
    };
    let source = Arc::new(OnnxSource {
        proto: Arc::new(node.clone()),
        inputs: inputs.clone(),
    });
    let outs = &lowered.outputs;
    if let Some((s, _)) = outs.iter().find(|(s, _)| super::numel(s).is_none()) {
        bail!("node '{label}' ({op}): its output {s:?} has more elements than actc handles");
    }
    // Folding evaluates in f64 arrays: a huge constant is a mistake, not a shape computation.
    let small = outs
        .iter()
        .all(|(s, _)| s.iter().product::<usize>() <= MAX_FOLDED);
    let folded = match small
        .then(|| shape::eval(&onnx, outs))
        .transpose()?
        .flatten()
    {
        Some(values) => Some(values),
        None if small => fold_by_tract(node, &args, outs, opset),
        None => None,
    };
    if let Some(values) = folded {
        for ((name, (shape, _)), data) in node.output.iter().zip(outs).zip(values) {
            let id = graph.add_tensor(Tensor {
                folded: Some(source.clone()),
                ..Tensor::constant(name.clone(), shape.clone(), data)
            });
            define(names, name, id)?;
        }
        return Ok(());
    }
    if lowered.kernel.is_some()
        && let Some((s, _)) = outs.iter().find(|(s, _)| s.contains(&0))
    {
        bail!(
            "node '{label}' ({op}): output shape {s:?} is empty for input shape {:?}; the input shape is too small for this model",
            args[0].shape
        );
    }

    // A runtime op may write more than the node lists (statistics its backward reads): each
    // output gets a tensor, the unnamed ones named after the first.
    let kernel = lowered.kernel.is_some();
    let mut out_ids = Vec::with_capacity(outs.len());
    for (i, (shape, dtype)) in outs.iter().enumerate() {
        let name = match node.output.get(i) {
            Some(n) if !n.is_empty() || !kernel => n.clone(),
            _ if !kernel => break,
            _ => format!("{}:{i}", node.output[0]),
        };
        let id = graph.add_tensor(Tensor::value(name.clone(), shape.clone(), *dtype));
        if node.output.get(i).is_some_and(|n| !n.is_empty()) {
            define(names, &name, id)?;
        }
        out_ids.push(id);
    }
    let (op_kind, data_inputs) = match lowered.kernel {
        Some((kind, keep)) => (
            NodeOp::Kernel(kind),
            keep.iter()
                .filter_map(|&i| inputs.get(i).copied().flatten())
                .collect(),
        ),
        None => (
            NodeOp::Onnx(source.proto.clone()),
            inputs.iter().flatten().copied().collect(),
        ),
    };
    graph.add_node(Node {
        name: if node.name().is_empty() {
            format!("{op}_{index}")
        } else {
            node.name().to_string()
        },
        op: op_kind,
        inputs: data_inputs,
        outputs: out_ids,
        phase: Phase::Forward,
        source: Some(source),
        origin: None,
    });
    Ok(())
}

/// The outputs of a node whose inputs are all constant and whose op actc's folder does not
/// evaluate (DINOv2's cubic resampling of its position embedding), computed by tract on a model
/// of that one node; `None` when it is not such a node or tract cannot run it (it then stays
/// a node of the graph).
fn fold_by_tract(
    node: &NodeProto,
    args: &[Arg],
    outs: &[ops::Out],
    opset: i64,
) -> Option<Vec<Data>> {
    use super::proto::{GraphProto, ModelProto, OperatorSetIdProto};
    let all_const = args.iter().all(|a| a.data.is_some());
    let floats = outs.iter().all(|(_, d)| *d == DType::F32);
    let first = args
        .first()
        .filter(|a| a.dtype == DType::F32 && !a.shape.is_empty())?;
    if !all_const || !floats || node.input.first().is_none_or(|n| n.is_empty()) {
        return None;
    }
    let initializer = node
        .input
        .iter()
        .zip(args)
        .skip(1)
        .filter(|(n, _)| !n.is_empty())
        .map(|(n, a)| super::tensor_proto(n, &a.shape, a.data.as_ref().expect("constant")))
        .collect();
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(GraphProto {
            node: vec![node.clone()],
            initializer,
            input: vec![super::write::value_info(
                &node.input[0],
                &first.shape,
                DType::F32,
            )],
            output: node
                .output
                .iter()
                .zip(outs)
                .map(|(n, (shape, d))| super::write::value_info(n, shape, *d))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let prefix =
        actc_runtime::prefix::Prefix::new(&prost::Message::encode_to_vec(&model), &first.shape)
            .ok()?;
    let mut values = Vec::with_capacity(outs.len());
    prefix
        .run(&first.data.as_ref()?.as_f32(), |_, v| {
            values.push(Data::F32(v.to_vec().into()))
        })
        .ok()?;
    (values.len() == outs.len()).then_some(values)
}
