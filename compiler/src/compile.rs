//! The pipeline: ONNX → IR → select → loss → autodiff → compress → optimizer → schedule →
//! memplan → plan.

use crate::err;
use crate::error::Result;
use crate::onnx::import::{InputShape, import};
use crate::onnx::proto::ModelProto;
use crate::onnx::{self, submodel};
use crate::passes::compress::{Compression, compress};
use crate::passes::optim::{Optimizer, append_updates};
use crate::passes::select::{Layers, Selection, select};
use crate::passes::{autodiff, emit, loss, schedule};
use actc_runtime::ops;
use actc_runtime::plan::{Hyper, Layer, LossKind, Phase, Plan, Schedule, Source};
use prost::Message;
use std::collections::BTreeSet;
use std::path::Path;

#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub layers: Layers,
    pub input: InputShape,
    pub output: Option<String>,
    pub loss: LossKind,
    pub optimizer: Optimizer,
    pub lr: f32,
    pub schedule: Schedule,
    pub warmup_steps: u32,
    pub clip_grad_norm: Option<f32>,
    pub compression: Compression,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            layers: Layers::All,
            input: InputShape::default(),
            output: None,
            loss: LossKind::CrossEntropy,
            optimizer: Optimizer::Sgd(ops::Sgd {
                momentum: 0.0,
                dampening: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            }),
            lr: 0.01,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            clip_grad_norm: None,
            compression: Compression::None,
        }
    }
}

pub struct Compiled {
    pub plan: Plan,
    /// The training graph as text, in schedule order (what the snapshot tests pin).
    pub ir: String,
    pub selection: Selection,
}

pub fn compile_file(path: &Path, opts: &CompileOptions) -> Result<Compiled> {
    let model = onnx::load(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    compile_model(model, dir, &name, opts).map_err(|e| err!("{}: {}", path.display(), e.0))
}

pub fn compile_model(
    model: ModelProto,
    dir: &Path,
    model_name: &str,
    opts: &CompileOptions,
) -> Result<Compiled> {
    let imported = import(model, dir, &opts.input)?;
    let mut graph = imported.graph;
    let input_name = graph.tensor(imported.input).name.clone();
    let input_shape: Vec<usize> = graph.tensor(imported.input).shape.clone();
    let output_name_before = |g: &crate::ir::Graph, t| g.tensor(t).name.clone();

    let selection = select(&mut graph, opts.output.as_deref(), opts.layers)?;
    let output_name = output_name_before(&graph, selection.output);
    let forward: Vec<_> = graph.topo_order();

    let parts = loss::append_loss(&mut graph, selection.output, opts.loss)?;
    let forward: Vec<_> = forward
        .into_iter()
        .filter(|n| graph.nodes.contains_node(*n))
        .collect();
    let grads = autodiff::differentiate(&mut graph, &forward, parts.output, parts.seed);
    let layers: BTreeSet<String> = selection
        .trained
        .iter()
        .filter(|l| l.from_output > 0)
        .map(|l| l.node.clone())
        .collect();
    let saved = compress(&mut graph, &layers, opts.compression);
    append_updates(&mut graph, &grads, &opts.optimizer, opts.clip_grad_norm);
    let order = schedule::schedule(&graph);
    let ir = graph.dump(&order);

    let weight_grads: BTreeSet<_> = grads.iter().map(|&(_, g)| g).collect();
    let feeds: Vec<_> = graph.inputs.iter().copied().chain([parts.label]).collect();
    let emitted = emit::emit(
        &graph,
        &order,
        &saved,
        &weight_grads,
        &feeds,
        &[parts.loss, parts.output],
    );

    // The frozen prefix and the rest of the original model, as ONNX.
    let model = &imported.model;
    let g = model.graph.as_ref().expect("decode checked the graph");
    let prefix_nodes = submodel::ancestors(g, &selection.boundary);
    let boundary_only_input = selection.boundary.iter().all(|b| *b == input_name);
    // The model input keeps its declared (possibly symbolic) shape, so an exported model
    // takes any batch size as the original did; tract gets the fixed shape separately.
    // Fixed sizes that --input-shape changed take the compiled value.
    let mut original_input = g
        .input
        .iter()
        .find(|i| i.name() == input_name)
        .cloned()
        .expect("import found the input");
    submodel::refix_dims(&mut original_input, &input_shape);
    let prefix_onnx = if boundary_only_input {
        Vec::new()
    } else {
        let outputs = selection
            .boundary
            .iter()
            .map(|b| {
                let t = graph
                    .find_tensor(b)
                    .expect("boundary tensor is in the graph");
                submodel::value_info(b, &graph.tensor(t).shape)
            })
            .collect();
        submodel::extract(model, &prefix_nodes, vec![original_input.clone()], outputs)
            .encode_to_vec()
    };
    let rest_nodes: BTreeSet<usize> = (0..g.node.len())
        .filter(|i| !prefix_nodes.contains(i))
        .collect();
    let rest_inputs = submodel::free_inputs(model, &rest_nodes)
        .into_iter()
        .map(|name| {
            if name == input_name {
                return original_input.clone();
            }
            let shape = graph
                .find_tensor(&name)
                .map(|t| graph.tensor(t).shape.clone())
                .unwrap_or_default();
            submodel::value_info(&name, &shape)
        })
        .collect();
    let rest_onnx =
        submodel::extract(model, &rest_nodes, rest_inputs, g.output.clone()).encode_to_vec();

    let buffer = |t| emitted.buffer_of[&t];
    let feeds: Vec<u32> = feeds.iter().map(|&t| buffer(t)).collect();
    let layers = selection
        .trained
        .iter()
        .map(|l| Layer {
            node: l.node.clone(),
            op_type: l.op.clone(),
            from_output: l.from_output as u32,
            weights: l
                .params
                .iter()
                .filter_map(|t| emitted.buffer_of.get(t).copied())
                .collect(),
        })
        .collect();
    let eval_steps = emitted
        .steps
        .iter()
        .take_while(|s| s.phase() == Phase::Forward)
        .count() as u32;
    let plan = Plan {
        source: Some(Source {
            model: model_name.to_string(),
            producer: format!("actc {}", env!("CARGO_PKG_VERSION")),
            input_name,
            input_shape: input_shape.iter().map(|&d| d as u64).collect(),
            output_name,
            layers: opts.layers.to_string(),
        }),
        prefix_onnx,
        rest_onnx,
        loss: buffer(parts.loss),
        output: buffer(parts.output),
        feeds,
        eval_steps,
        layers,
        hyper: Some(Hyper {
            loss: opts.loss as i32,
            lr: opts.lr,
            schedule: opts.schedule as i32,
            warmup_steps: opts.warmup_steps,
            clip_grad_norm: opts.clip_grad_norm.unwrap_or(0.0),
            batch: input_shape.first().copied().unwrap_or(1) as u32,
        }),
        buffers: emitted.buffers,
        steps: emitted.steps,
        weights: emitted.weights,
        memory: Some(emitted.memory),
    };
    Ok(Compiled {
        plan,
        ir,
        selection,
    })
}
