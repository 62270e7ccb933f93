//! The pipeline: ONNX → IR → select → loss → autodiff → compress → optimizer → prefix →
//! schedule → memplan → plan.

use crate::error::Result;
use crate::onnx::import::{InputShape, import};
use crate::onnx::proto::ModelProto;
use crate::onnx::{self, submodel};
use crate::passes::compress::{Compression, FixedRanks, compress};
use crate::passes::optim::{Optimizer, append_updates};
use crate::passes::prefix::{self, PrefixRunner};
use crate::passes::select::{Layers, Selection, select};
use crate::passes::{autodiff, emit, loss, schedule};
use crate::{bail, err};
use actc_runtime::exec::lanes;
use actc_runtime::kernels::chain;
use actc_runtime::ops;
use actc_runtime::plan::{Hyper, Layer, LossKind, Phase, Plan, Schedule, Source};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
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
    /// HOSVD ranks per layer (forward node name) fixed ahead, by `--budget`.
    pub fixed_ranks: BTreeMap<String, FixedRanks>,
    pub prefix: PrefixRunner,
    /// Samples per run of the prefix [default: the most whose activations fit the arena the
    /// training part needs].
    pub prefix_batch: Option<usize>,
    /// Threads the plan is laid out for: the frozen prefix's fused chains keep scratch for
    /// this many bands at once [default: 2; the CLI: the threads it runs with].
    pub threads: usize,
    /// Keep every weight gradient in a buffer of its own (what `--budget`'s calibration and
    /// the gradient tests read) instead of storing conv weight gradients straight into
    /// their SGD update [default: false].
    pub keep_gradients: bool,
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
            fixed_ranks: BTreeMap::new(),
            prefix: PrefixRunner::Auto,
            prefix_batch: None,
            threads: 2,
            keep_gradients: false,
        }
    }
}

pub struct Compiled {
    pub plan: Plan,
    /// The training graph as text, in schedule order (what the snapshot tests pin).
    pub ir: String,
    pub selection: Selection,
    /// The micro-batch of the frozen prefix when actc's kernels run it (else tract does).
    pub prefix_batch: Option<usize>,
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
    let saved = compress(&mut graph, &layers, opts.compression, &opts.fixed_ranks);
    append_updates(
        &mut graph,
        &grads,
        &opts.optimizer,
        opts.clip_grad_norm,
        !opts.keep_gradients,
    );
    let order = schedule::schedule(&graph);
    let ir = graph.dump(&order);
    let boundary: Vec<_> = graph.inputs.clone();
    let boundary_only_input = selection.boundary.iter().all(|b| *b == input_name);

    let weight_grads: BTreeSet<_> = grads.iter().map(|&(_, g)| g).collect();
    // What the runtime writes before the first step (boundary tensors, labels) and reads
    // after the last (loss, model output).
    let written: Vec<_> = boundary.iter().copied().chain([parts.label]).collect();
    let read = [parts.loss, parts.output];
    let mut emitted = emit::emit(&graph, &order, &saved, &weight_grads, &written, &read, 1);

    // The frozen prefix on actc's kernels, in micro-batches whose activations fit the arena
    // training needs anyway. The snapshot above stays the training graph: the prefix is
    // plain inference, in the plan but not a rewrite.
    let mut own_prefix = None;
    if !boundary_only_input && opts.prefix != PrefixRunner::Tract {
        let batch = input_shape[0];
        let at = |m: usize| [&[m][..], &input_shape[1..]].concat();
        let threads = opts.threads.clamp(1, lanes::MAX_LANES);
        // With one prefix lane, the fused chains share their bands among the threads; with
        // more, each lane's thread runs its chains alone.
        let build = |m: usize, lanes: usize, runner| {
            let chain_lanes = match lanes {
                1 => threads.min(chain::MAX_LANES),
                _ => 1,
            };
            prefix::build(
                &imported.model,
                dir,
                &at(m),
                &selection.boundary,
                runner,
                chain_lanes,
            )
        };
        // Built at one sample first: whether actc's kernels run this prefix at all.
        if build(1, 1, opts.prefix)?.is_some() {
            let training_arena = emitted.memory.arena;
            let (m, lanes) = match opts.prefix_batch {
                Some(m) if m == 0 || !batch.is_multiple_of(m) => bail!(
                    "--prefix-batch {m} does not divide the batch {batch}; give a divisor of it"
                ),
                Some(m) => (m, threads.min(batch / m)),
                None => prefix::micro_batch(batch, threads, training_arena, |m, lanes| {
                    Ok(build(m, lanes, PrefixRunner::Actc)?.map_or(u64::MAX, |p| p.arena()))
                })?,
            };
            let micro = build(m, lanes, PrefixRunner::Actc)?.expect("built at batch 1");
            let (input, outputs) = micro.attach(&mut graph);
            let order = schedule::schedule(&graph);
            // The full-batch boundary tensors collect every micro-batch: live from the start.
            let written: Vec<_> = [input].into_iter().chain(written).collect();
            let read: Vec<_> = read.into_iter().chain(outputs.iter().copied()).collect();
            emitted = emit::emit(
                &graph,
                &order,
                &saved,
                &weight_grads,
                &written,
                &read,
                lanes,
            );
            emitted.memory.training_arena = training_arena;
            own_prefix = Some((m, input, outputs));
        }
    }
    let feeds: Vec<_> = boundary.iter().copied().chain([parts.label]).collect();

    // The frozen prefix and the rest of the original model, as ONNX.
    let model = &imported.model;
    let g = model.graph.as_ref().expect("decode checked the graph");
    let prefix_nodes = submodel::ancestors(g, &selection.boundary);
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
    let prefix_steps = emitted
        .steps
        .iter()
        .take_while(|s| s.phase() == Phase::Prefix)
        .count();
    let eval_steps = emitted.steps[prefix_steps..]
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
        prefix_steps: prefix_steps as u32,
        input: own_prefix.as_ref().map_or(0, |&(_, t, _)| buffer(t)),
        prefix_batch: own_prefix.as_ref().map_or(0, |&(m, _, _)| m as u32),
        prefix_outputs: own_prefix.as_ref().map_or(Vec::new(), |(_, _, o)| {
            o.iter().map(|&t| buffer(t)).collect()
        }),
        prefix_lanes: emitted.prefix_lanes,
    };
    Ok(Compiled {
        plan,
        ir,
        selection,
        prefix_batch: own_prefix.map(|(m, _, _)| m),
    })
}
