//! `compress`: the saved inputs of the trained layers, kept in compressed form (DESIGN §4).
//!
//! A semantics-preserving rewrite: each trained layer's input `x`, which its weight gradient
//! reads in the backward pass, gets a `Compress` node right after it is computed (forward) and
//! a `Decompress` node that rebuilds `x̂` for the weight gradient (backward). [`fuse`] then
//! folds `Decompress` into the weight gradient where the method can compute it from the
//! compressed form (HOSVD), so no full-size tensor is rebuilt. SVD keeps its `Decompress`, as
//! the paper's baseline does. Gradient filtering has no decompressed form (its weight
//! gradient is defined on the pooled tensors), so it is emitted fused.
//!
//! Layers are what `--layers` counts (convs; dense layers in models without convs); other
//! parameterized ops after them (a conv net's classifier) keep their inputs as they are.

use crate::ir::{Graph, NodeOp, Role, Tensor, TensorId};
use crate::ops;
use actc_runtime::ops::{self as rt, Compressor, Kind, Method};
use actc_runtime::plan::{DType, Phase};
use petgraph::stable_graph::NodeIndex;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Compression {
    #[default]
    None,
    /// The paper's method, HOSVD, with ranks per mode as `ranks` says, capped at `max_rank`.
    Hosvd {
        eps: f32,
        max_rank: u32,
        ranks: HosvdRanks,
    },
    /// The paper's SVD baseline: the (batch, rest) unfolding, rank by the ε rule, capped.
    Svd { eps: f32, max_rank: u32 },
    /// Gradient filtering with `patch`×`patch` patches (convs only).
    GradFilter { patch: u32 },
}

/// How HOSVD's ranks are chosen, step by step or once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HosvdRanks {
    /// The paper's ε rule on the activation.
    Eps,
    /// The per-feature mean kept exactly, the ε rule on the residual.
    Centered,
    /// A conv input with a spatial extent keeps fixed ranks: the batch up to [`AUTO_RANKS`]'s,
    /// the channels up to `max_rank`, each spatial axis up to its; the ε rule's energy share
    /// collapses to ranks 1–3 on such maps and loses 30 accuracy points (issue 20's study,
    /// PAPER_EXPERIMENT.md). Other inputs (1×1 maps, dense layers) take the centered rule.
    #[default]
    Auto,
}

/// `HosvdRanks::Auto`'s fixed ranks of a (batch, channels, height, width) conv input, the
/// channels' being `max_rank`.
pub const AUTO_RANKS: [usize; 4] = [8, 0, 4, 4];

/// A layer's HOSVD ranks chosen ahead (by `--budget`'s calibration), with the ε that gave
/// them on the calibration batch.
#[derive(Clone, Debug, PartialEq)]
pub struct FixedRanks {
    pub eps: f32,
    pub ranks: Vec<u32>,
}

/// Forward values that backward nodes read: what the planner keeps alive across the step.
pub fn saved_activations(graph: &Graph) -> BTreeSet<TensorId> {
    let mut saved = BTreeSet::new();
    for n in graph.nodes.node_indices() {
        let node = &graph.nodes[n];
        if matches!(node.phase, Phase::Backward) && matches!(node.op, NodeOp::Kernel(_)) {
            for &t in &node.inputs {
                let forward_value = graph
                    .producer(t)
                    .is_none_or(|p| graph.nodes[p].phase == Phase::Forward);
                if forward_value && matches!(graph.tensor(t).role, Role::Value | Role::Input) {
                    saved.insert(t);
                }
            }
        }
    }
    saved
}

/// Wraps the saved input of every weight gradient of a layer in `layers` (forward node
/// names) in Compress/Decompress, then fuses; and whatever the compression, keeps the saved
/// input of each ReLU and Clip as a 1-bit mask. Layers in `fixed` (HOSVD only) keep the
/// ranks given there every step. Returns the saved activations afterwards.
pub fn compress(
    graph: &mut Graph,
    layers: &BTreeSet<String>,
    compression: Compression,
    fixed: &BTreeMap<String, FixedRanks>,
) -> BTreeSet<TensorId> {
    masks(graph);
    if compression != Compression::None {
        let targets: Vec<(NodeIndex, Compressor)> = graph
            .nodes
            .node_indices()
            .filter(|&n| {
                let node = &graph.nodes[n];
                node.origin.as_ref().is_some_and(|o| layers.contains(o))
            })
            .filter_map(|n| Some((n, compressor(graph, n, compression, fixed)?)))
            .collect();
        let decompress = targets
            .into_iter()
            .map(|(n, c)| wrap(graph, n, c))
            .collect();
        fuse(graph, decompress);
    }
    saved_activations(graph)
}

/// The compressor for weight-gradient node `n`'s saved input, if the method applies to it.
fn compressor(
    graph: &Graph,
    n: NodeIndex,
    compression: Compression,
    fixed: &BTreeMap<String, FixedRanks>,
) -> Option<Compressor> {
    let node = &graph.nodes[n];
    let (room, kind) = ops::room_of_node(node)?;
    let x = *node.inputs.first()?;
    let saved = room.saved_input(kind, &graph.tensor(x).shape)?;
    let dims = saved.dims;
    let cap = |max_rank: u32, d: usize, numel: usize| (max_rank as usize).min(d).min(numel / d);
    let numel: usize = dims.iter().product();
    let method = match compression {
        Compression::None => return None,
        Compression::Hosvd {
            eps,
            max_rank,
            ranks,
        } => Method::Hosvd(match node.origin.as_ref().and_then(|o| fixed.get(o)) {
            Some(f) => rt::Hosvd {
                eps: f.eps,
                caps: f.ranks.clone(),
                fixed: true,
                center: ranks == HosvdRanks::Centered,
            },
            None if ranks == HosvdRanks::Auto && dims.len() == 4 && dims[2] * dims[3] > 1 => {
                rt::Hosvd {
                    eps: 0.0,
                    caps: (0..4)
                        .map(|m| {
                            let r = if m == 1 {
                                max_rank
                            } else {
                                AUTO_RANKS[m] as u32
                            };
                            cap(r, dims[m], numel) as u32
                        })
                        .collect(),
                    fixed: true,
                    center: false,
                }
            }
            None => rt::Hosvd {
                eps,
                caps: dims
                    .iter()
                    .map(|&d| cap(max_rank, d, numel) as u32)
                    .collect(),
                fixed: false,
                center: ranks != HosvdRanks::Eps,
            },
        }),
        // SVD keeps a dense layer's tokens as the matrix its gradient reads.
        Compression::Svd { eps, max_rank } if saved.conv.is_none() && dims.len() > 2 => {
            let k = dims[dims.len() - 1];
            return Some(Compressor {
                shape: vec![(numel / k) as u64, k as u64],
                method: Some(Method::Svd(rt::Svd {
                    eps,
                    cap: cap(max_rank, numel / k, numel) as u32,
                })),
            });
        }
        Compression::Svd { eps, max_rank } => Method::Svd(rt::Svd {
            eps,
            cap: cap(max_rank, dims[0], numel) as u32,
        }),
        Compression::GradFilter { patch } => {
            let w = graph.tensor(node.outputs[0]);
            Method::GradFilter(rt::GradFilter {
                patch,
                conv: Some(saved.conv?),
                weight_shape: w.dims(),
            })
        }
    };
    Some(Compressor {
        shape: dims.iter().map(|&d| d as u64).collect(),
        method: Some(method),
    })
}

/// x → Compress → packed → Decompress → x̂ → the weight gradient `n`. A compression with
/// state reads and writes it in a persistent tensor, its second input.
fn wrap(graph: &mut Graph, n: NodeIndex, c: Compressor) -> (NodeIndex, Compressor) {
    let x = graph.nodes[n].inputs[0];
    let origin = graph.nodes[n].origin.clone();
    let layer = origin.clone().unwrap_or_default();
    let x_name = graph.tensor(x).name.clone();
    let packed = Tensor::value(
        format!("{x_name}.{}", method_name(&c)),
        vec![c.packed_len()],
        DType::F32,
    );
    let mut inputs = vec![x];
    if c.state_len() > 0 {
        inputs.push(graph.add_tensor(Tensor {
            role: Role::CompressorState,
            ..Tensor::value(format!("{x_name}.factors"), vec![c.state_len()], DType::F32)
        }));
    }
    let packed = graph.push(
        format!("{layer}/compress_input"),
        Kind::Compress(c.clone()),
        inputs,
        vec![packed],
        Phase::Forward,
        origin.clone(),
    )[0];
    let x_hat = Tensor::value(
        format!("{x_name}.decompressed"),
        graph.tensor(x).shape.clone(),
        DType::F32,
    );
    let x_hat = graph.push(
        format!("{layer}/decompress_input"),
        Kind::Decompress(c.clone()),
        vec![packed],
        vec![x_hat],
        Phase::Backward,
        origin,
    )[0];
    graph.set_input(n, 0, x_hat);
    (graph.producer(x_hat).expect("just made"), c)
}

fn method_name(c: &Compressor) -> &'static str {
    match c.method {
        Some(Method::Hosvd(_)) => "hosvd",
        Some(Method::Svd(_)) => "svd",
        Some(Method::GradFilter(_)) => "gradfilter",
        None => "packed",
    }
}

/// Folds each `Decompress` node (of `compressors`) into the weight gradient that reads its
/// output, where the method computes that gradient from the compressed form: the rebuilt
/// tensor then never exists.
fn fuse(graph: &mut Graph, decompress: Vec<(NodeIndex, Compressor)>) {
    for (d, c) in decompress {
        if matches!(c.method, Some(Method::Svd(_))) {
            continue;
        }
        let (packed, x_hat) = (graph.nodes[d].inputs[0], graph.nodes[d].outputs[0]);
        let consumers: Vec<NodeIndex> = graph.consumers(x_hat).collect();
        let [g] = consumers[..] else { continue };
        let Some(fused) =
            ops::room_of_node(&graph.nodes[g]).and_then(|(room, k)| room.on_compressed(k, c))
        else {
            continue;
        };
        graph.remove_node(d);
        graph.nodes[g].op = NodeOp::Kernel(fused);
        graph.nodes[g].name = graph.nodes[g].name.replace("grad_", "compressed_grad_");
        graph.set_input(g, 0, packed);
    }
}

/// ReLU and Clip backward read their input only to know where it lay inside the bounds: a
/// `PassMask` node keeps that as one bit per element, and the backward reads the mask. A
/// lossless rewrite, so it is always made.
fn masks(graph: &mut Graph) {
    let targets: Vec<(NodeIndex, rt::Clip)> = graph
        .nodes
        .node_indices()
        .filter_map(|n| {
            let (room, kind) = ops::room_of_node(&graph.nodes[n])?;
            Some((n, room.pass_bounds(kind)?))
        })
        .collect();
    for (n, bounds) in targets {
        let x = graph.nodes[n].inputs[0];
        let origin = graph.nodes[n].origin.clone();
        let t = graph.tensor(x);
        let numel: usize = t.shape.iter().product();
        let mask = Tensor::value(
            format!("{}.mask", t.name),
            vec![numel.div_ceil(32)],
            DType::U32,
        );
        let mask = graph.push(
            format!("{}/pass_mask", origin.clone().unwrap_or_default()),
            Kind::PassMask(bounds),
            vec![x],
            vec![mask],
            Phase::Forward,
            origin,
        )[0];
        graph.nodes[n].op = NodeOp::Kernel(Kind::MaskedGrad(rt::Empty {}));
        graph.set_input(n, 0, mask);
    }
}
