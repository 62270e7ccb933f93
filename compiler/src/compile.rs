//! `compile()`: ONNX in (the front end), the passes over one IR in order ([`PASSES`]), the
//! plan out. The IR verifier runs after every pass in debug builds and tests.

use crate::error::Result;
use crate::ir::verify::verify;
use crate::ir::{Graph, TensorId};
use crate::lowrank::rate::{self, FactorLr};
use crate::lowrank::{LayerReport, data};
use crate::onnx::import::{InputShape, import};
use crate::onnx::proto::ModelProto;
use crate::onnx::write::{self, Original};
use crate::onnx::{self};
use crate::passes::compress::{Compression, FixedRanks};
use crate::passes::freeze::Rotate;
use crate::passes::loss::LossParts;
use crate::passes::memplan::{self, Layout, Request};
use crate::passes::optim::Optimizer;
use crate::passes::prefix::{self, PrefixRunner};
use crate::passes::select::{Layers, Selection};
use crate::passes::split::{self, Prefix};
use crate::passes::{
    autodiff, compress, decompose, emit, freeze, lora, loss, optim, recompute, schedule, select,
};
use crate::{bail, err};
use actc_runtime::ops;
use actc_runtime::plan::{
    Adapter, DType, Freeze, Hyper, Layer, LossKind, ModelInput, Phase, Plan, Schedule, Source,
    Step, TrainedOutput, Weight,
};
use actc_runtime::planning::{MAX_CHAIN_LANES, MAX_PREFIX_LANES};
use petgraph::stable_graph::NodeIndex;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub layers: Layers,
    pub input: InputShape,
    /// The outputs the loss reads, in order [default: the model's first]. Several only
    /// with `LossKind::Mse`: the loss is the sum of their mean squared errors.
    pub outputs: Vec<String>,
    pub loss: LossKind,
    /// Each trained output's weight in an MSE over several [default: 1 each].
    pub loss_weights: Vec<f32>,
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
    /// Run the frozen prefix's convs of one group with int8 weights and inputs
    /// (`--prefix-precision int8`) [default: false, f32].
    pub prefix_int8: bool,
    /// Threads the plan is laid out for: the frozen prefix's fused chains keep scratch for
    /// this many bands at once [default: 2; the CLI: the threads it runs with].
    pub threads: usize,
    /// Keep every weight gradient in a buffer of its own (what `--budget`'s calibration and
    /// the gradient tests read) instead of storing conv weight gradients straight into
    /// their SGD update [default: false].
    pub keep_gradients: bool,
    /// Refuse a plan whose planned peak (arena and persistent memory) passes this many
    /// bytes [default: no limit; the CLI: the machine's memory].
    pub max_memory: Option<u64>,
    /// Freeze the selected layers and train a low-rank adapter of this rank beside each
    /// (LoRA) [default: none].
    pub lora: Option<usize>,
    /// Train the factors of each decomposed layer in turns (sequential freezing)
    /// [default: none].
    pub freeze: Option<Rotate>,
    /// The SGD learning rate of decomposed layers' factors [default: auto, cooled by the
    /// factors' magnitudes (`lowrank::rate`)].
    pub factor_lr: FactorLr,
    /// Compute attention's probabilities again in backward instead of keeping them
    /// [default: kept].
    pub recompute_attention: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            layers: Layers::All,
            input: InputShape::default(),
            outputs: Vec::new(),
            loss: LossKind::CrossEntropy,
            loss_weights: Vec::new(),
            optimizer: Optimizer::Sgd(ops::Sgd {
                momentum: 0.0,
                dampening: 0.0,
                nesterov: false,
                weight_decay: 0.0,
                lr_scale: None,
            }),
            lr: 0.01,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            clip_grad_norm: None,
            compression: Compression::None,
            fixed_ranks: BTreeMap::new(),
            prefix: PrefixRunner::Auto,
            prefix_batch: None,
            prefix_int8: false,
            threads: 2,
            keep_gradients: false,
            max_memory: None,
            lora: None,
            freeze: None,
            factor_lr: FactorLr::Auto,
            recompute_attention: false,
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

/// What `actc decompose` is asked: which layers (counted as compile counts them), at which
/// input shape, and how their ranks are chosen.
#[derive(Clone, Debug)]
pub struct DecomposeOptions {
    pub layers: Layers,
    pub input: InputShape,
    /// The outputs whose layers count (as `CompileOptions::outputs`).
    pub outputs: Vec<String>,
    pub request: crate::lowrank::Request<'static>,
    /// Factor the layer nearest each output too (`--include-head`) [default: kept whole].
    pub include_head: bool,
    /// Factor 1×1 convs, Gemms and MatMuls to keep their outputs on this data rather than
    /// their weights (`--calibration`) [default: none, the weights].
    pub calibration: Option<crate::lowrank::data::Calibration>,
    /// Also give the original's features on the calibration data ([`Teacher`]): needs
    /// `calibration` [default: false].
    pub distill: bool,
    /// More maps for the teacher, before the last feature map (`--distill-maps`)
    /// [default: the stage outputs].
    pub distill_maps: DistillMaps,
}

/// Which maps `decompose --distill` matches besides the last feature map.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum DistillMaps {
    /// The last of the narrowest maps at each spatial size, after a factored layer
    /// ([`decompose::stage_maps`]).
    #[default]
    Stages,
    /// These tensors, by name (none: the last feature map alone).
    Named(Vec<String>),
}

/// The model with its layers in thin factors, and what happened to each.
pub struct Decomposed {
    pub model: ModelProto,
    pub layers: Vec<LayerReport>,
    /// The input shape the shapes were fixed at (the model keeps a symbolic batch).
    pub input_shape: Vec<usize>,
    /// The rewritten graph as text (what the snapshot tests pin).
    pub ir: String,
    /// What `--distill` trains on, when asked.
    pub teacher: Option<Teacher>,
}

/// The original model's features on the calibration inputs, for `decompose --distill` to
/// train the decomposed model towards (LRD's fine-tuning after decomposition, without labels):
/// any maps asked for, then the map the kept head reads, before pooling (with the head
/// factored, the first output).
pub struct Teacher {
    /// The maps' tensors, named as in both models.
    pub outputs: Vec<String>,
    /// The calibration inputs, samples back to back at the input shape's sample size.
    pub inputs: Vec<f32>,
    /// The original's maps on them: per sample, each map in `outputs`' order.
    pub targets: Vec<f32>,
    /// One sample's values of each map.
    pub sizes: Vec<usize>,
    /// The decomposed model with the maps as more outputs.
    pub student: ModelProto,
}

/// Low-rank decomposition of the layers `opts` selects: an IR rewrite of the imported model,
/// written back to ONNX whole.
pub fn decompose_model(
    model: ModelProto,
    dir: &Path,
    model_name: &str,
    opts: &DecomposeOptions,
) -> Result<Decomposed> {
    let compile = CompileOptions {
        layers: opts.layers,
        input: opts.input.clone(),
        outputs: opts.outputs.clone(),
        ..CompileOptions::default()
    };
    let mut cx = Context::import(model, dir, model_name, &compile)?;
    select_layers(&mut cx)?;
    let selection = cx.selection.as_ref().expect("select ran");
    let original = Original::new(&cx.model, &cx.declared);
    let trained: Vec<String> = selection.trained.iter().map(|l| l.node.clone()).collect();
    let heads = match opts.include_head {
        true => BTreeSet::new(),
        false => decompose::heads(&cx.graph, selection),
    };
    // A decomposed layer is merged back first, so decomposing again lowers its ranks.
    let names = crate::lowrank::merge::merge_layers(&mut cx.graph, &trained);
    let batches = match &opts.calibration {
        Some(source) => (source.0)(&cx.input_shape)?,
        None if opts.distill => bail!("distilling needs calibration data to run the models on"),
        None => Vec::new(),
    };
    let on_data = match batches.is_empty() {
        true => BTreeMap::new(),
        false => data::whitenings(&cx.graph, &original, &names, &cx.input_shape, &batches)?,
    };
    let mut maps = Vec::new();
    if opts.distill {
        let last =
            decompose::features(&cx.graph, &heads).or_else(|| selection.outputs.first().copied());
        match (&opts.distill_maps, last) {
            (DistillMaps::Stages, Some(last)) => {
                maps = decompose::stage_maps(&cx.graph, last, &names);
            }
            (DistillMaps::Stages, None) => {}
            (DistillMaps::Named(named), _) => {
                for name in named {
                    let t = cx
                        .graph
                        .tensor_named(name)
                        .filter(|&t| cx.graph.producer(t).is_some());
                    maps.push(t.ok_or_else(|| {
                        err!(
                            "--distill-maps: '{name}' is not a tensor any node of the model computes"
                        )
                    })?);
                }
            }
        }
        maps.extend(last);
    }
    let targets = match maps.is_empty() {
        true => Vec::new(),
        false => data::values(&cx.graph, &original, &maps, &cx.input_shape, &batches)?,
    };
    let layers = decompose::decompose(
        &mut cx.graph,
        &names,
        &heads,
        &on_data,
        &opts.request,
        &original,
    )?;
    check(&cx, "decompose")?;
    let g = &cx.graph;
    let order = g.topo_order();
    let model = write::write(g, &original, &order, &g.outputs)?;
    let teacher = match maps.is_empty() {
        true => None,
        false => Some(Teacher {
            outputs: maps.iter().map(|&t| g.tensor(t).name.clone()).collect(),
            inputs: batches.concat(),
            targets,
            sizes: maps
                .iter()
                .map(|&t| g.tensor(t).shape[1..].iter().product::<usize>())
                .collect(),
            student: write::write(g, &original, &order, &[&g.outputs[..], &maps].concat())?,
        }),
    };
    Ok(Decomposed {
        model,
        layers,
        input_shape: cx.input_shape.clone(),
        ir: g.dump(&order, &[]),
        teacher,
    })
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
    let cx = Context::import(model, dir, model_name, opts)?;
    run(cx, &[])
}

/// One job over the context.
type Pass = fn(&mut Context) -> Result<()>;

/// The pipeline after import, in order.
const PASSES: &[(&str, Pass)] = &[
    ("patterns", rewrite_patterns),
    ("select", select_layers),
    ("onnx", write_onnx),
    ("split", split_prefix),
    ("lora", add_adapters),
    ("loss", append_loss),
    ("autodiff", differentiate),
    ("recompute", recompute_attention),
    ("compress", compress_saved),
    ("optimizer", append_updates),
    ("prefix", own_prefix),
    ("schedule", order_steps),
    ("memplan", plan_memory),
    ("emit", emit_steps),
    ("freeze", freeze_turns),
];

/// Runs `rewrites` (graph rewrites a caller adds right after import), then [`PASSES`].
fn run(mut cx: Context, rewrites: &[(&str, Pass)]) -> Result<Compiled> {
    check(&cx, "import")?;
    for &(name, pass) in rewrites.iter().chain(PASSES) {
        pass(&mut cx)?;
        check(&cx, name)?;
    }
    cx.finish()
}

fn check(cx: &Context, pass: &str) -> Result<()> {
    if cfg!(debug_assertions) {
        verify(&cx.graph)
            .map_err(|e| err!("internal error: the IR after pass '{pass}' is invalid: {e}"))?;
    }
    Ok(())
}

/// What the passes share: the IR and what each pass leaves for the later ones.
struct Context<'o> {
    opts: &'o CompileOptions,
    model_name: String,
    /// The decoded ONNX model (the back end keeps its metadata and initializers).
    model: ModelProto,
    graph: Graph,
    /// The first model input and its compiled shape.
    input: TensorId,
    input_shape: Vec<usize>,
    /// Every model input, in the model's order, and their names and compiled shapes.
    inputs: Vec<TensorId>,
    declared: Vec<(String, Vec<usize>)>,
    selection: Option<Selection>,
    /// The frozen prefix and the rest, written as ONNX from the IR before training rewrites.
    prefix_onnx: Vec<u8>,
    rest_onnx: Vec<u8>,
    prefix: Option<Prefix>,
    loss: Option<LossParts>,
    grads: Vec<(TensorId, TensorId)>,
    saved: BTreeSet<TensorId>,
    /// The own prefix: micro-batch, its input and its micro-batch boundary tensors.
    own_prefix: Option<(usize, TensorId, Vec<TensorId>)>,
    lanes: usize,
    /// The arena training alone needs, when an own prefix joins it.
    training_arena: Option<u64>,
    order: Vec<NodeIndex>,
    layout: Option<Layout>,
    steps: Vec<Step>,
    weights: Vec<Weight>,
    adapters: Vec<Adapter>,
    freeze: Option<Freeze>,
}

impl<'o> Context<'o> {
    fn import(
        model: ModelProto,
        dir: &Path,
        model_name: &str,
        opts: &'o CompileOptions,
    ) -> Result<Context<'o>> {
        let mut model = model;
        onnx::inline_external(&mut model, dir)?;
        let imported = import(&model, &opts.input)?;
        let input_shape = imported.graph.tensor(imported.input).shape.clone();
        let inputs = imported.graph.inputs.clone();
        let declared = inputs
            .iter()
            .map(|&t| {
                let t = imported.graph.tensor(t);
                (t.name.clone(), t.shape.clone())
            })
            .collect();
        Ok(Context {
            opts,
            model_name: model_name.to_string(),
            model,
            graph: imported.graph,
            input: imported.input,
            input_shape,
            inputs,
            declared,
            selection: None,
            prefix_onnx: Vec::new(),
            rest_onnx: Vec::new(),
            prefix: None,
            loss: None,
            grads: Vec::new(),
            saved: BTreeSet::new(),
            own_prefix: None,
            lanes: 1,
            training_arena: None,
            order: Vec::new(),
            layout: None,
            steps: Vec::new(),
            weights: Vec::new(),
            adapters: Vec::new(),
            freeze: None,
        })
    }

    /// Whether the runtime feeds the inputs packed into one float row per sample: several
    /// inputs, or an integer one (token ids are exact in f32 up to 2^24). The frozen prefix
    /// then runs on tract, which unpacks them.
    fn packed(&self) -> bool {
        self.inputs.len() > 1 || self.graph.tensor(self.input).dtype != DType::F32
    }

    fn selection(&self) -> &Selection {
        self.selection.as_ref().expect("select ran")
    }

    fn loss(&self) -> &LossParts {
        self.loss.as_ref().expect("loss ran")
    }

    /// What the runtime writes before the first step (boundary tensors, labels) and reads
    /// after the last (loss, model output), own prefix included.
    fn feeds_and_reads(&self) -> (Vec<TensorId>, Vec<TensorId>) {
        let parts = self.loss();
        let mut feeds: Vec<_> = self
            .graph
            .inputs
            .iter()
            .copied()
            .chain([parts.label])
            .collect();
        let mut reads = vec![parts.loss, parts.output];
        if let Some((_, input, outputs)) = &self.own_prefix {
            feeds.insert(0, *input);
            reads.extend(outputs);
        }
        (feeds, reads)
    }

    fn memory_layout(&self, order: &[NodeIndex], lanes: usize) -> Layout {
        let weight_grads: BTreeSet<_> = self.grads.iter().map(|&(_, g)| g).collect();
        let (feeds, keep_alive) = self.feeds_and_reads();
        let req = Request {
            saved: &self.saved,
            weight_grads: &weight_grads,
            feeds: &feeds,
            keep_alive: &keep_alive,
            prefix_lanes: lanes,
        };
        memplan::layout(&self.graph, order, &req)
    }
}

/// Ops written in another spelling (a decomposed pattern) become the one op.
fn rewrite_patterns(cx: &mut Context) -> Result<()> {
    crate::ops::rewrite(&mut cx.graph)
}

fn select_layers(cx: &mut Context) -> Result<()> {
    let selection = select::select(&mut cx.graph, &cx.opts.outputs, cx.opts.layers)?;
    cx.selection = Some(selection);
    Ok(())
}

/// The back end, before any training rewrite: the frozen prefix (model input → boundary
/// tensors, for tract) and every other node (for `export`), written from the IR.
fn write_onnx(cx: &mut Context) -> Result<()> {
    let original = Original::new(&cx.model, &cx.declared);
    let g = &cx.graph;
    let boundary = &cx.selection().boundary_ids;
    let order = g.topo_order();
    let in_prefix = g.ancestors_of(boundary);
    if cx.packed() && boundary.iter().any(|b| cx.inputs.contains(b)) {
        let name = &g
            .tensor(*boundary.iter().find(|b| cx.inputs.contains(b)).unwrap())
            .name;
        bail!(
            "the trainable part reads model input '{name}' directly; with several or integer inputs actc trains only layers after a frozen prefix: give a smaller --layers"
        );
    }
    if !boundary.iter().all(|b| cx.inputs.contains(b)) {
        let nodes: Vec<_> = order
            .iter()
            .copied()
            .filter(|n| in_prefix.contains(n))
            .collect();
        cx.prefix_onnx = write::write(g, &original, &nodes, boundary)?.encode_to_vec();
    }
    let rest: Vec<_> = order
        .iter()
        .copied()
        .filter(|n| !in_prefix.contains(n))
        .collect();
    cx.rest_onnx = write::write(g, &original, &rest, &g.outputs)?.encode_to_vec();
    Ok(())
}

fn split_prefix(cx: &mut Context) -> Result<()> {
    cx.prefix = split::split(
        &mut cx.graph,
        cx.selection.as_ref().expect("select ran"),
        &cx.inputs,
    );
    Ok(())
}

fn add_adapters(cx: &mut Context) -> Result<()> {
    if let Some(rank) = cx.opts.lora {
        let selection = cx.selection.as_mut().expect("select ran");
        cx.adapters = lora::add_adapters(&mut cx.graph, selection, rank)?;
    }
    Ok(())
}

fn append_loss(cx: &mut Context) -> Result<()> {
    let outputs = cx.selection().outputs.clone();
    let (kind, weights) = (cx.opts.loss, &cx.opts.loss_weights);
    cx.loss = Some(loss::append_loss(&mut cx.graph, &outputs, kind, weights)?);
    Ok(())
}

fn differentiate(cx: &mut Context) -> Result<()> {
    let g = &cx.graph;
    let forward: Vec<_> = g
        .topo_order()
        .into_iter()
        .filter(|&n| g.nodes[n].phase == Phase::Forward)
        .collect();
    let parts = cx.loss();
    let (output, seed) = (parts.output, parts.seed);
    cx.grads = autodiff::differentiate(&mut cx.graph, &forward, output, seed);
    Ok(())
}

fn recompute_attention(cx: &mut Context) -> Result<()> {
    if cx.opts.recompute_attention && recompute::attention(&mut cx.graph) == 0 {
        bail!(
            "--recompute attention: the trained part holds no attention (a softmax over a batched product) whose probabilities the backward reads; leave it out, or train more with --layers or --blocks"
        );
    }
    Ok(())
}

fn compress_saved(cx: &mut Context) -> Result<()> {
    let layers: BTreeSet<String> = cx
        .selection()
        .trained
        .iter()
        .filter(|l| l.from_output > 0)
        .map(|l| l.node.clone())
        .collect();
    cx.saved = compress::compress(
        &mut cx.graph,
        &layers,
        cx.opts.compression,
        &cx.opts.fixed_ranks,
    );
    Ok(())
}

fn append_updates(cx: &mut Context) -> Result<()> {
    let o = cx.opts;
    let params: Vec<TensorId> = cx.grads.iter().map(|&(p, _)| p).collect();
    let scales = rate::lr_scales(&cx.graph, &params, o.factor_lr, o.freeze.is_some());
    optim::append_updates(
        &mut cx.graph,
        &cx.grads,
        &scales,
        &o.optimizer,
        o.clip_grad_norm,
        !o.keep_gradients,
    );
    Ok(())
}

/// The frozen prefix on actc's kernels, in micro-batches whose activations fit the arena
/// training needs anyway.
fn own_prefix(cx: &mut Context) -> Result<()> {
    let int8 = cx.opts.prefix_int8;
    let Some(prefix) = cx.prefix.as_ref() else {
        if int8 {
            bail!(
                "--prefix-precision int8: every layer trains, so there is no frozen prefix to quantize; train fewer --layers or leave the flag out"
            );
        }
        return Ok(());
    };
    if (cx.opts.prefix == PrefixRunner::Actc || int8) && cx.packed() {
        let (flag, way_out) = match int8 {
            true => ("--prefix-precision int8", "leave it out"),
            false => (
                "--prefix actc",
                "leave --prefix out (or give --prefix tract)",
            ),
        };
        bail!(
            "{flag}: this model's inputs (several, or integer ones) reach the runtime packed into one row per sample, which only tract unpacks; {way_out}"
        );
    }
    if int8 && cx.opts.prefix == PrefixRunner::Tract {
        bail!(
            "--prefix-precision int8 runs on actc's prefix kernels, not tract's; leave --prefix tract out"
        );
    }
    if cx.opts.prefix == PrefixRunner::Tract || cx.packed() {
        return Ok(());
    }
    let order = schedule::schedule(&cx.graph);
    let training_arena = cx.memory_layout(&order, 1).memory.arena;
    let batch = cx.input_shape[0];
    let threads = cx.opts.threads.clamp(1, MAX_PREFIX_LANES);
    // With one prefix lane, the fused chains share their bands among the threads; with
    // more, each lane's thread runs its chains alone.
    let build = |m: usize, lanes: usize, runner| {
        let chain_lanes = match lanes {
            1 => threads.min(MAX_CHAIN_LANES),
            _ => 1,
        };
        prefix::build(prefix, batch, m, runner, chain_lanes, int8)
    };
    // Built at the whole batch first: whether actc's kernels run this prefix at all.
    let runner = if int8 {
        PrefixRunner::Actc
    } else {
        cx.opts.prefix
    };
    if build(batch, 1, runner)?.is_none() {
        return Ok(());
    }
    // Whether the prefix runs on part of the batch at all (its ops treat samples apart and
    // its shapes follow the batch): else it runs at the whole batch.
    let splits = batch == 1 || build(1, 1, PrefixRunner::Actc)?.is_some();
    let (m, lanes) = match cx.opts.prefix_batch {
        Some(m) if m == 0 || !batch.is_multiple_of(m) => {
            bail!("--prefix-batch {m} does not divide the batch {batch}; give a divisor of it")
        }
        Some(m) if m != batch && !splits => bail!(
            "--prefix-batch {m}: the frozen prefix mixes the samples of a batch, so it runs on the whole batch; leave --prefix-batch out"
        ),
        Some(m) => (m, threads.min(batch / m)),
        None if !splits => (batch, 1),
        None => prefix::micro_batch(batch, threads, training_arena, |m, lanes| {
            Ok(build(m, lanes, PrefixRunner::Actc)?.map_or(u64::MAX, |p| p.arena()))
        })?,
    };
    let micro = build(m, lanes, PrefixRunner::Actc)?.ok_or_else(|| {
        err!("the frozen prefix does not run at micro-batch {m}; give --prefix-batch {batch}")
    })?;
    let (input, outputs) = micro.attach(&mut cx.graph);
    cx.training_arena = Some(training_arena);
    cx.own_prefix = Some((m, input, outputs));
    cx.lanes = lanes;
    Ok(())
}

fn order_steps(cx: &mut Context) -> Result<()> {
    let order = schedule::schedule(&cx.graph);
    let mut paired = order.clone();
    schedule::gather_small_compressions(&cx.graph, &mut paired);
    // Compressions side by side where the longer lifetimes cost no planned memory (a
    // transformer block's small maps, moved past a few ops, took a larger arena).
    let arena = |order: &[NodeIndex]| cx.memory_layout(order, cx.lanes).memory.arena;
    cx.order = match paired != order && arena(&paired) <= arena(&order) {
        true => paired,
        false => order,
    };
    Ok(())
}

fn plan_memory(cx: &mut Context) -> Result<()> {
    let mut layout = cx.memory_layout(&cx.order, cx.lanes);
    // Without an own prefix the arena is training's alone, as the layout says already.
    if let Some(training) = cx.training_arena {
        layout.memory.training_arena = training;
    }
    let peak = layout.memory.arena + layout.memory.persistent;
    if let Some(limit) = cx.opts.max_memory.filter(|&l| peak > l) {
        let mut biggest: Vec<_> = layout.buffers.iter().collect();
        biggest.sort_by_key(|b| std::cmp::Reverse(b.bytes));
        let names: Vec<String> = biggest
            .iter()
            .take(3)
            .map(|b| format!("{} ({} B)", b.name, b.bytes))
            .collect();
        bail!(
            "the plan needs {peak} bytes at its peak, more than the limit of {limit} (--max-memory); its largest buffers: {}; try a smaller batch or input shape, fewer --layers, or --compress",
            names.join(", ")
        );
    }
    cx.layout = Some(layout);
    Ok(())
}

fn emit_steps(cx: &mut Context) -> Result<()> {
    let layout = cx.layout.as_ref().expect("memplan ran");
    (cx.steps, cx.weights) = emit::emit(&cx.graph, &cx.order, layout);
    Ok(())
}

fn freeze_turns(cx: &mut Context) -> Result<()> {
    let Some(rotate) = cx.opts.freeze else {
        return Ok(());
    };
    if cx.opts.clip_grad_norm.is_some() {
        bail!(
            "--freeze-schedule with --clip-grad-norm: the clipping norm would mix frozen and training factors' gradients; leave one out"
        );
    }
    if cx.opts.lora.is_some() {
        bail!(
            "--freeze-schedule with --lora: the adapters train while the layers stay frozen, so no factors take turns; leave one out"
        );
    }
    cx.freeze = Some(freeze::turns(&cx.graph, &cx.order, cx.selection(), rotate)?);
    Ok(())
}

impl Context<'_> {
    /// The plan and the reports.
    fn finish(self) -> Result<Compiled> {
        let packed = self.packed();
        let beside: Vec<usize> = (self.steps.iter().enumerate())
            .filter_map(|(s, step)| step.beside_next.then_some(s))
            .collect();
        let ir = self.graph.dump(&self.order, &beside);
        let layout = self.layout.expect("memplan ran");
        let selection = self.selection.expect("select ran");
        let parts = self.loss.expect("loss ran");
        let opts = self.opts;
        let buffer = |t| layout.buffer_of[&t];
        let input_name = self.graph.tensor(self.input).name.clone();
        let model_inputs: Vec<ModelInput> = match packed {
            false => Vec::new(),
            true => self
                .inputs
                .iter()
                .map(|&t| {
                    let t = self.graph.tensor(t);
                    ModelInput {
                        name: t.name.clone(),
                        shape: t.shape.iter().map(|&d| d as u64).collect(),
                        dtype: t.dtype as i32,
                    }
                })
                .collect(),
        };
        // Packed: one row per sample holding every input's values in turn.
        let input_shape: Vec<u64> = match packed {
            false => self.input_shape.iter().map(|&d| d as u64).collect(),
            true => {
                let per: u64 = model_inputs
                    .iter()
                    .map(|i| i.shape[1..].iter().product::<u64>())
                    .sum();
                vec![self.input_shape[0] as u64, per]
            }
        };
        let feeds: Vec<u32> = self
            .graph
            .inputs
            .iter()
            .chain([&parts.label])
            .map(|&t| buffer(t))
            .collect();
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
                    .filter_map(|t| layout.buffer_of.get(t).copied())
                    .collect(),
            })
            .collect();
        let prefix_steps = self
            .steps
            .iter()
            .take_while(|s| s.phase() == Phase::Prefix)
            .count();
        let eval_steps = self.steps[prefix_steps..]
            .iter()
            .take_while(|s| s.phase() == Phase::Forward)
            .count() as u32;
        let own = self.own_prefix.as_ref();
        let plan = Plan {
            source: Some(Source {
                model: self.model_name.clone(),
                producer: format!("actc {}", env!("CARGO_PKG_VERSION")),
                input_name,
                input_shape,
                output_name: selection.output_names[0].clone(),
                layers: opts.layers.to_string(),
                inputs: model_inputs,
                outputs: selection
                    .output_names
                    .iter()
                    .zip(&selection.output_shapes)
                    .map(|(name, shape)| TrainedOutput {
                        name: name.clone(),
                        shape: shape.iter().map(|&d| d as u64).collect(),
                    })
                    .collect(),
            }),
            prefix_onnx: self.prefix_onnx,
            rest_onnx: self.rest_onnx,
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
                batch: self.input_shape.first().copied().unwrap_or(1) as u32,
            }),
            buffers: layout.buffers,
            steps: self.steps,
            weights: self.weights,
            memory: Some(layout.memory),
            prefix_steps: prefix_steps as u32,
            input: own.map_or(0, |&(_, t, _)| buffer(t)),
            prefix_batch: own.map_or(0, |&(m, _, _)| m as u32),
            prefix_outputs: own.map_or(Vec::new(), |(_, _, o)| {
                o.iter().map(|&t| buffer(t)).collect()
            }),
            prefix_lanes: layout.prefix_lanes,
            progress: None,
            adapters: self.adapters,
            freeze: self.freeze,
        };
        Ok(Compiled {
            plan,
            ir,
            selection,
            prefix_batch: self.own_prefix.map(|(m, _, _)| m),
        })
    }
}

// tract runs the export to check it.
#[cfg(all(test, feature = "tract"))]
mod tests {
    use super::*;
    use crate::ir::{Data, Node, NodeOp, Tensor};
    use actc_runtime::exec::Executor;
    use actc_runtime::ops::{Gemm, Kind};
    use actc_runtime::plan::DType;
    use actc_runtime::prefix::Prefix;

    /// A rewrite as a weight decomposition makes one: `fc3` (y = x·Wᵀ + b) becomes
    /// y = (x·Iᵀ)·Wᵀ + b, two Gemms that compute the same function.
    fn split_gemm(cx: &mut Context) -> Result<()> {
        let g = &mut cx.graph;
        let n = g
            .nodes
            .node_indices()
            .find(|&n| g.nodes[n].name == "/fc3/Gemm")
            .expect("tiny_mlp has fc3");
        let node = g.remove_node(n).expect("exists");
        let (x, w, b) = (node.inputs[0], node.inputs[1], node.inputs[2]);
        let k = g.tensor(x).shape[1];
        let eye: Vec<f32> = (0..k * k)
            .map(|i| (i % (k + 1) == 0) as u8 as f32)
            .collect();
        let eye = g.add_tensor(Tensor::constant(
            "fc3.first",
            vec![k, k],
            Data::F32(eye.into()),
        ));
        let hidden = Tensor::value(
            "/fc3/first_output",
            vec![g.tensor(x).shape[0], k],
            DType::F32,
        );
        let gemm = |beta| {
            Kind::Gemm(Gemm {
                trans_a: false,
                trans_b: true,
                alpha: 1.0,
                beta,
            })
        };
        let h = g.push(
            "/fc3/first".into(),
            gemm(0.0),
            vec![x, eye],
            vec![hidden],
            Phase::Forward,
            None,
        )[0];
        g.add_node_in_place(Node {
            name: "/fc3/second".into(),
            op: NodeOp::Kernel(gemm(1.0)),
            inputs: vec![h, w, b],
            outputs: node.outputs,
            phase: Phase::Forward,
            source: None,
            origin: None,
        });
        Ok(())
    }

    #[test]
    fn a_rewritten_graph_trains_and_exports() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/tiny_mlp.onnx"
        ));
        let opts = CompileOptions {
            input: InputShape {
                shape: Some(vec![4, 64]),
                batch: None,
            },
            lr: 0.05,
            ..CompileOptions::default()
        };
        let model = onnx::load(path).unwrap();
        let cx = Context::import(model, path.parent().unwrap(), "tiny_mlp.onnx", &opts).unwrap();
        let compiled = run(cx, &[("split gemm", split_gemm)]).unwrap();
        assert!(compiled.ir.contains("/fc3/first") && compiled.ir.contains("/fc3/second"));
        let plan = compiled.plan;
        let input: Vec<f32> = (0..4 * 64)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let mut exec = Executor::new(plan.clone(), 3).unwrap();
        for _ in 0..3 {
            exec.boundary_mut(0).copy_from_slice(&input);
            for (i, l) in exec.labels_mut().unwrap().iter_mut().enumerate() {
                *l = i as u32 % 10;
            }
            exec.train_step();
        }
        let trained = exec.snapshot().unwrap();
        exec.boundary_mut(0).copy_from_slice(&input);
        exec.forward();
        let ours = exec.output().to_vec();
        let exported = crate::onnx::export::export(&plan, &trained).unwrap();
        let g = exported.graph.as_ref().unwrap();
        let gemms = g.node.iter().filter(|n| n.op_type() == "Gemm").count();
        assert_eq!(gemms, 4, "fc1, fc2 and the two halves of fc3");
        // tract runs the export, at the compiled batch and at another one.
        let bytes = exported.encode_to_vec();
        for batch in [4, 2] {
            let mut theirs = Vec::new();
            Prefix::new(&bytes, &[batch, 64])
                .unwrap()
                .run(&input[..batch * 64], |_, v| theirs = v.to_vec())
                .unwrap();
            let diff = ours[..batch * 10]
                .iter()
                .zip(&theirs)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert_eq!(theirs.len(), batch * 10);
            assert!(diff <= 1e-5, "batch {batch}: the export differs by {diff}");
        }
        assert_ne!(plan.weights, trained.weights);
    }
}
