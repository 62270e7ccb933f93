//! The contract of an op room: everything the compiler knows about one family of ops, in
//! one place. Import, shape checking, layer selection, autodiff and inspect ask the room
//! (through [`super::room_of`] and [`super::room_for_onnx`]) instead of matching on op kinds.

use crate::error::Result;
use crate::ir::{Data, Graph, Node, NodeOp, Role, Tensor, TensorId};
use crate::lowrank::{AdapterForm, LayerReport, Request};
use crate::onnx::proto::{AttributeProto, NodeProto, TensorProto};
use crate::onnx::{Attrs, node_label};
use actc_runtime::ops::{self as rt, Compressor, Kind};
use actc_runtime::plan::{DType, Phase};
use petgraph::stable_graph::NodeIndex;

/// An input of an ONNX node as the rules see it: its shape, its element type, and its data
/// when constant.
#[derive(Clone, Debug)]
pub struct Arg {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub data: Option<Data>,
}

impl Arg {
    pub fn ints(&self) -> Option<Vec<i64>> {
        self.data.as_ref().map(|d| d.as_i64())
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn is_const(&self) -> bool {
        self.data.is_some()
    }
}

/// An output's shape and element type.
pub type Out = (Vec<usize>, DType);

/// An ONNX node being imported, with what is known of its inputs.
pub struct OnnxNode<'a> {
    pub proto: &'a NodeProto,
    pub attrs: Attrs<'a>,
    pub args: &'a [Arg],
    pub opset: i64,
    /// How error messages name the node.
    pub label: String,
}

impl<'a> OnnxNode<'a> {
    pub fn new(proto: &'a NodeProto, args: &'a [Arg], opset: i64) -> OnnxNode<'a> {
        OnnxNode {
            proto,
            attrs: Attrs::new(proto),
            args,
            opset,
            label: node_label(proto),
        }
    }

    pub fn op(&self) -> &str {
        self.proto.op_type()
    }

    /// Input `i`, or an error naming the node.
    pub fn arg(&self, i: usize) -> Result<&'a Arg> {
        self.args.get(i).ok_or_else(|| {
            crate::err!("node '{}' ({}) is missing input {i}", self.label, self.op())
        })
    }

    /// Input `i`'s values, which must be constant once the input shape is fixed.
    pub fn const_ints(&self, i: usize, what: &str) -> Result<Vec<i64>> {
        self.arg(i)?.ints().ok_or_else(|| {
            crate::err!(
                "node '{}' ({}): its {what} input must be constant once the input shape is fixed, and is not",
                self.label,
                self.op()
            )
        })
    }

    /// The first value of input `i` when it is constant; `default` when the input is absent
    /// or empty; `None` when it is computed.
    pub fn const_f32(&self, i: usize, default: f32) -> Option<f32> {
        match self.args.get(i).and_then(|t| t.data.as_ref()) {
            Some(d) if d.is_empty() => Some(default),
            Some(d) => d.as_f32().first().copied(),
            None if self.args.len() <= i => Some(default),
            None => None,
        }
    }
}

/// What a room makes of an ONNX node: its output shapes, and the runtime op with the inputs
/// it reads (the others are constants folded into the op's attributes), or `None` when actc
/// has no kernel for the node as written (it may still run in the frozen prefix).
pub struct Lowered {
    pub outputs: Vec<Out>,
    pub kernel: Option<(Kind, Vec<usize>)>,
}

impl Lowered {
    pub fn kernel(outputs: Vec<Out>, kind: Kind, inputs: Vec<usize>) -> Lowered {
        Lowered {
            outputs,
            kernel: Some((kind, inputs)),
        }
    }

    pub fn onnx(outputs: Vec<Out>) -> Lowered {
        Lowered {
            outputs,
            kernel: None,
        }
    }
}

/// A saved activation as a weight gradient reads it: its shape (a dense layer reads it as a
/// matrix), and for a conv the geometry gradient filtering pools it with.
pub struct SavedInput {
    pub dims: Vec<usize>,
    pub conv: Option<rt::Conv>,
}

/// Which kind of layer a node is for `--layers` (DESIGN §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerClass {
    /// A convolution: the layers of any model that has them.
    Conv,
    /// A dense layer with a constant weight: the layers of a model without convs.
    Dense,
}

/// One family of ops. Every method has a sensible default, so a room states only what its
/// ops need.
pub trait Room: Sync {
    /// The ONNX op types this room imports.
    fn onnx_ops(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether `kind` is one of this room's runtime ops.
    fn owns(&self, kind: &Kind) -> bool;

    /// ONNX node → output shapes and, where actc has one, the runtime op.
    fn import(&self, node: &OnnxNode) -> Result<Lowered> {
        crate::bail!("node '{}': op {} has no import rule", node.label, node.op())
    }

    /// The shape rule on IR nodes: whether outputs `outs` of `kind` over `ins` have the shapes
    /// and types the op gives them. An `Err` says what is wrong.
    fn check(
        &self,
        kind: &Kind,
        ins: &[&Tensor],
        outs: &[&Tensor],
    ) -> std::result::Result<(), String>;

    /// Input positions whose constant float tensors train when the node (in `graph`) does.
    fn params(&self, _kind: &Kind, _node: &Node, _graph: &Graph) -> &'static [usize] {
        &[]
    }

    /// Whether the node (a runtime op of this room, or an ONNX op it imports but has no
    /// kernel for) counts as a layer for `--layers`.
    fn layer(&self, _node: &Node, _graph: &Graph) -> Option<LayerClass> {
        None
    }

    /// Whether autodiff can differentiate the node (in `graph`); [`Room::backward`] must
    /// handle every node this accepts.
    fn differentiable(&self, _kind: &Kind, _node: &Node, _graph: &Graph) -> bool {
        false
    }

    /// Emits the backward nodes of a forward node.
    fn backward(&self, kind: &Kind, _ad: &mut Backward) {
        unreachable!(
            "{} is not differentiable; select keeps it out of the suffix",
            super::op_name(kind)
        )
    }

    /// FLOPs of one run, from the buffers' shapes: multiply-adds count as two, elementwise
    /// ops one per output element.
    fn flops(&self, _kind: &Kind, ins: &[&[u64]], outs: &[&[u64]]) -> u64 {
        let numel = |s: Option<&&[u64]>| s.map_or(0, |s| s.iter().product::<u64>());
        numel(outs.first()).max(numel(ins.first()))
    }

    /// For a softmax: the axis it normalizes (cross-entropy reads the logits before a final
    /// softmax over the last axis).
    fn softmax_axis(&self, _kind: &Kind) -> Option<usize> {
        None
    }

    /// For a backward that reads its saved input only to know whether it lay within bounds:
    /// those bounds. The input is then kept as a 1-bit mask.
    fn pass_bounds(&self, _kind: &Kind) -> Option<rt::Clip> {
        None
    }

    /// For a weight gradient that reads a saved activation `x` as its input 0: that input as
    /// a compressor sees it.
    fn saved_input(&self, _kind: &Kind, _x: &[usize]) -> Option<SavedInput> {
        None
    }

    /// The op that computes the same weight gradient from compressor `c`'s compressed form.
    fn on_compressed(&self, _kind: &Kind, _c: Compressor) -> Option<Kind> {
        None
    }

    /// For a weight gradient whose product can store it straight into its SGD update (`dw`
    /// read by nothing else): the op that does both. It reads the gradient's inputs, then
    /// the weight, then its momentum when there is one.
    fn with_sgd(
        &self,
        _kind: &Kind,
        _ins: &[&Tensor],
        _dw: &Tensor,
        _sgd: &rt::Sgd,
    ) -> Option<Kind> {
        None
    }

    /// Inference-only fusions of this room's ops in the frozen prefix, laid out for `lanes`
    /// threads.
    fn fuse_inference(&self, _graph: &mut Graph, _lanes: usize) {}

    /// This room's ops of the frozen prefix with int8 weights (`--prefix-precision int8`),
    /// after [`Room::fuse_inference`].
    fn quantize_inference(&self, _graph: &mut Graph) {}

    /// Rewrites the imported graph where this room recognises its ops in another spelling
    /// (a decomposed pattern an older exporter writes for one op).
    fn rewrite(&self, _graph: &mut Graph) -> Result<()> {
        Ok(())
    }

    /// Whether the op combines samples of the batch (reduces, normalizes or moves data along
    /// axis 0), so running it on part of the batch would change what it computes.
    fn mixes_batch(&self, _kind: &Kind) -> bool {
        false
    }

    /// Whether the schedule runs the node as soon as it can: what it makes replaces a larger
    /// tensor that can then die (a compressed form, a mask).
    fn urgent(&self, _kind: &Kind) -> bool {
        false
    }

    /// The ONNX form of a node a pass made (the back end writes imported nodes as they
    /// were); an `Err` says why there is none.
    fn to_onnx(&self, kind: &Kind, _out: &mut OnnxOut) -> std::result::Result<(), String> {
        Err(format!("{} has no ONNX form", crate::ir::kind_name(kind)))
    }

    /// Whether the output is the input's memory under another shape.
    fn aliases_input(&self, _kind: &Kind) -> bool {
        false
    }

    /// Node `n` rewritten into thin factors of its constant weight at the ranks `req` picks
    /// ([`crate::lowrank`]), or left as it is when that would not make it cheaper; the
    /// report says which. `None`: the op has no weight to factor.
    fn low_rank(
        &self,
        _kind: &Kind,
        _graph: &mut Graph,
        _n: NodeIndex,
        _req: &Request,
    ) -> Result<Option<LayerReport>> {
        Ok(None)
    }

    /// A rank-`rank` adapter to train beside node `n`'s frozen weight (`compile --lora`);
    /// `None` when the node has no weight one can sit beside.
    fn adapter(
        &self,
        _kind: &Kind,
        _graph: &Graph,
        _n: NodeIndex,
        _rank: usize,
    ) -> Option<AdapterForm> {
        None
    }
}

/// The gradient builder a room's [`Room::backward`] writes into: the forward node, the
/// gradient of its first output, and the contributions made so far.
pub struct Backward<'g> {
    pub graph: &'g mut Graph,
    pub node: NodeIndex,
    /// The gradient of the node's first output.
    pub dy: TensorId,
    forward: Node,
    made: Vec<(TensorId, TensorId)>,
    /// Gradients passed through unchanged, listed after the ones made.
    direct: Vec<(TensorId, TensorId)>,
}

impl<'g> Backward<'g> {
    pub fn new(graph: &'g mut Graph, node: NodeIndex, dy: TensorId) -> Backward<'g> {
        let forward = graph.nodes[node].clone();
        Backward {
            graph,
            node,
            dy,
            forward,
            made: Vec::new(),
            direct: Vec::new(),
        }
    }

    /// The (input, gradient contribution) pairs made.
    pub fn into_contributions(mut self) -> Vec<(TensorId, TensorId)> {
        self.made.append(&mut self.direct);
        self.made
    }

    pub fn input(&self, i: usize) -> TensorId {
        self.forward.inputs[i]
    }

    pub fn inputs(&self) -> &[TensorId] {
        &self.forward.inputs
    }

    pub fn output(&self, i: usize) -> TensorId {
        self.forward.outputs[i]
    }

    pub fn shape(&self, t: TensorId) -> &[usize] {
        &self.graph.tensor(t).shape
    }

    /// Whether input `i` exists and needs a gradient: a value computed in the suffix or a
    /// trainable weight (nothing flows into boundary tensors or frozen constants).
    pub fn needs(&self, i: usize) -> bool {
        self.forward.inputs.get(i).is_some_and(|&t| {
            self.graph.tensor(t).role == Role::Trainable || self.graph.producer(t).is_some()
        })
    }

    /// One node `kind(inputs)` writing the gradient of input `i`, named `<node>/<suffix>`.
    pub fn grad(&mut self, i: usize, suffix: &str, kind: Kind, inputs: Vec<TensorId>) {
        self.grads(suffix, kind, inputs, &[i]);
    }

    /// One node writing the gradients of several inputs at once (`of`, in output order);
    /// only those inputs that need one count as contributions.
    pub fn grads(&mut self, suffix: &str, kind: Kind, inputs: Vec<TensorId>, of: &[usize]) {
        let outputs = of
            .iter()
            .map(|&i| self.contribution(self.forward.inputs[i]))
            .collect();
        let name = format!("{}/{suffix}", self.forward.name);
        let origin = Some(self.forward.name.clone());
        let ids = self
            .graph
            .push(name, kind, inputs, outputs, Phase::Backward, origin);
        for (&i, g) in of.iter().zip(ids) {
            if self.needs(i) {
                self.made.push((self.forward.inputs[i], g));
            }
        }
    }

    /// An intermediate value of the backward, `kind(inputs)` with `like`'s shape, named
    /// `<node>/<suffix>`.
    pub fn temp(
        &mut self,
        suffix: &str,
        kind: Kind,
        inputs: Vec<TensorId>,
        like: TensorId,
    ) -> TensorId {
        let name = format!("{}/{suffix}", self.forward.name);
        let t = Tensor::value(name.clone(), self.shape(like).to_vec(), DType::F32);
        let origin = Some(self.forward.name.clone());
        self.graph
            .push(name, kind, inputs, vec![t], Phase::Backward, origin)[0]
    }

    /// Input `i`'s gradient is `g` as it is (shared, not copied).
    pub fn pass(&mut self, i: usize, g: TensorId) {
        self.direct.push((self.forward.inputs[i], g));
    }

    /// Output `i` of the forward node, which gets it when it has none yet: what a backward
    /// needs from the forward pass beyond its outputs (a max pool's winners).
    pub fn forward_output(&mut self, i: usize, make: impl FnOnce(&Graph) -> Tensor) -> TensorId {
        if let Some(&t) = self.graph.nodes[self.node].outputs.get(i) {
            return t;
        }
        let t = make(self.graph);
        let id = self.graph.add_tensor(t);
        self.graph.add_output(self.node, id);
        self.forward.outputs.push(id);
        id
    }

    /// The gradient tensor of `of` that this node contributes. When `of` has several
    /// forward consumers the contributions are summed into `of.grad`, so each is named for
    /// its consumer.
    fn contribution(&self, of: TensorId) -> Tensor {
        let shared = self
            .graph
            .consumers(of)
            .filter(|&c| self.graph.nodes[c].phase == Phase::Forward)
            .count()
            > 1;
        if shared {
            self.graph
                .gradient_tensor(of, &format!("grad[{}]", self.forward.name))
        } else {
            self.graph.gradient_tensor(of, "grad")
        }
    }
}

/// What [`Room::to_onnx`] writes: ONNX nodes and the initializers they read, for one IR
/// node whose tensors are `ins` and `outs`.
pub struct OnnxOut<'t> {
    pub name: String,
    pub opset: i64,
    pub ins: Vec<&'t Tensor>,
    pub outs: Vec<&'t Tensor>,
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
}

impl<'t> OnnxOut<'t> {
    pub fn new(name: &str, opset: i64, ins: Vec<&'t Tensor>, outs: Vec<&'t Tensor>) -> OnnxOut<'t> {
        OnnxOut {
            name: name.to_string(),
            opset,
            ins,
            outs,
            nodes: Vec::new(),
            initializers: Vec::new(),
        }
    }

    /// The names of the IR node's inputs.
    pub fn inputs(&self) -> Vec<String> {
        self.ins.iter().map(|t| t.name.clone()).collect()
    }

    /// One ONNX node reading `inputs` and writing the IR node's outputs.
    pub fn node(&mut self, op_type: &str, inputs: Vec<String>, attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            name: Some(self.name.clone()),
            op_type: Some(op_type.to_string()),
            input: inputs,
            output: self.outs.iter().map(|t| t.name.clone()).collect(),
            attribute,
            ..Default::default()
        });
    }

    /// An initializer holding `data`, named for the node; returns its name.
    pub fn constant(&mut self, suffix: &str, dims: &[usize], data: Data) -> String {
        let name = format!("{}/{suffix}", self.name);
        self.initializers
            .push(crate::onnx::tensor_proto(&name, dims, &data));
        name
    }
}

/// A node's op as a runtime kernel, when it is one.
pub fn kernel(node: &Node) -> Option<&Kind> {
    match &node.op {
        NodeOp::Kernel(k) => Some(k),
        NodeOp::Onnx(_) => None,
    }
}

/// `check` helper: outputs must equal `want`, in order.
pub fn expect(outs: &[&Tensor], want: &[Out]) -> std::result::Result<(), String> {
    if outs.len() != want.len() {
        return Err(format!("{} outputs, expected {}", outs.len(), want.len()));
    }
    for (i, (t, (shape, dtype))) in outs.iter().zip(want).enumerate() {
        if &t.shape != shape || t.dtype != *dtype {
            return Err(format!(
                "output {i} '{}' is {:?}{:?}, expected {:?}{:?}",
                t.name, t.dtype, t.shape, dtype, shape
            ));
        }
    }
    Ok(())
}

/// `check` helper: the output height and width of a 2-D window (a conv's kernel, a pool's)
/// sliding over `hw`, with the attributes as the runtime's ops hold them: `strides` and
/// `dilations` per axis (missing: 1), `pads` top, left, bottom, right (missing: 0).
pub fn window_out(
    hw: [usize; 2],
    kernel: [usize; 2],
    strides: &[u32],
    dilations: &[u32],
    pads: &[u32],
) -> std::result::Result<[usize; 2], String> {
    let at = |v: &[u32], i: usize, d: u32| v.get(i).copied().unwrap_or(d) as usize;
    let len = |i: usize| {
        let extent = at(dilations, i, 1) * kernel[i].saturating_sub(1) + 1;
        let span = hw[i] + at(pads, i, 0) + at(pads, i + 2, 0);
        span.checked_sub(extent)
            .map(|r| r / at(strides, i, 1).max(1) + 1)
            .ok_or_else(|| format!("padded size {span} is smaller than the window {extent}"))
    };
    Ok([len(0)?, len(1)?])
}

/// `check` helper: a float tensor of this shape.
pub fn f32_like(shape: &[usize]) -> Out {
    (shape.to_vec(), DType::F32)
}

/// `check` helper: the shapes of the inputs, which must number at least `n`.
pub fn shapes<'t>(ins: &[&'t Tensor], n: usize) -> std::result::Result<Vec<&'t [usize]>, String> {
    if ins.len() < n {
        return Err(format!("{} inputs, expected at least {n}", ins.len()));
    }
    Ok(ins.iter().map(|t| t.shape.as_slice()).collect())
}
