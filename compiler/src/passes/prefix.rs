//! `prefix`: the frozen prefix (model input → boundary tensors) as steps of the plan itself,
//! so actc's kernels run it in the planned arena instead of tract (DESIGN §2).
//!
//! The prefix is inference only: nothing in it is differentiated, saved or compressed. It
//! runs in micro-batches of `m` samples (m divides the batch): its activations are the
//! largest tensors of the whole model (the first layers' maps), and at the full batch they
//! would set the arena's peak many times over what training needs. So `split`'s prefix is
//! re-batched to `m` (every value whose leading axis is the batch gets `m` there, and the
//! verifier checks each op's shape rule still holds), and the runtime runs it `batch / m`
//! times per step, copying each micro-batch's boundary tensors into the full-batch ones.
//! Inference allows fusions, which the rooms make (`Room::fuse_inference`): a
//! BatchNormalization right after a conv goes into its weights, a Relu or Clip into its
//! output, a MobileNet block into one banded step.

use super::memplan::{self, Request};
use super::schedule;
use super::split::Prefix;
use crate::bail;
use crate::error::Result;
use crate::ir::verify::verify;
use crate::ir::{Data, Graph, NodeOp, Role, TensorId};
use crate::ops;
use actc_runtime::plan::Phase;
use std::collections::BTreeSet;

/// Who runs the frozen prefix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrefixRunner {
    /// actc's kernels when every prefix op has one, else tract.
    #[default]
    Auto,
    Actc,
    Tract,
}

/// The prefix alone, at some batch size: its graph holds only the prefix nodes.
pub struct PrefixGraph {
    graph: Graph,
    input: TensorId,
    /// The boundary tensors, in the order of the training graph's inputs.
    outputs: Vec<TensorId>,
}

/// The prefix at micro-batch `m` (of the compiled `batch`), its fused chains laid out for
/// `lanes` threads, its convs int8 where they can be when `int8`. `Ok(None)` when `runner`
/// is auto and a prefix op has no actc kernel (tract runs the prefix then), or when the
/// prefix cannot run on part of the batch.
pub fn build(
    prefix: &Prefix,
    batch: usize,
    m: usize,
    runner: PrefixRunner,
    lanes: usize,
    int8: bool,
) -> Result<Option<PrefixGraph>> {
    let mut graph = prefix.graph.clone();
    if let Some(n) = graph
        .topo_order()
        .into_iter()
        .find(|&n| matches!(graph.nodes[n].op, NodeOp::Onnx(_)))
    {
        if runner == PrefixRunner::Auto {
            return Ok(None);
        }
        let (node, op) = (&graph.nodes[n].name, graph.nodes[n].op_name());
        if int8 {
            bail!(
                "--prefix-precision int8: node '{node}' (op {op}) of the frozen prefix has no actc kernel, and only actc's prefix runs in int8; leave --prefix-precision int8 out"
            );
        }
        bail!(
            "--prefix actc: node '{node}' (op {op}) of the frozen prefix has no actc kernel; use --prefix tract (or auto)"
        );
    }
    if m != batch && rebatch(&mut graph, batch, m).is_err() {
        return Ok(None);
    }
    ops::fuse_inference(&mut graph, lanes);
    if int8 {
        ops::quantize_inference(&mut graph);
    }
    Ok(Some(PrefixGraph {
        outputs: graph.outputs.clone(),
        input: prefix.input,
        graph,
    }))
}

/// Gives every computed tensor whose leading axis is the batch `m` samples there. An op that
/// combines samples, or a shape rule that no longer holds, makes it an error.
fn rebatch(graph: &mut Graph, batch: usize, m: usize) -> std::result::Result<(), String> {
    for n in graph.nodes.node_indices() {
        let node = &graph.nodes[n];
        if ops::kernel(node).is_some_and(|k| ops::room_of(k).mixes_batch(k)) {
            return Err(format!(
                "node '{}' combines the samples of a batch",
                node.name
            ));
        }
    }
    for t in graph.tensors.iter_mut() {
        if t.shape.first() != Some(&batch) {
            continue;
        }
        match &t.data {
            None => t.shape[0] = m,
            // A constant spread along the batch (a ViT's class token expanded to it, folded
            // at import) is the same row at any batch. Were its leading axis not the
            // batch's, the shape rules below would tell.
            Some(Data::F32(d)) if batch > 1 && rows_equal(d, batch) => {
                let row = d.len() / batch;
                t.data = Some(Data::F32(d[..m * row].into()));
                t.shape[0] = m;
            }
            Some(_) => {}
        }
    }
    verify(graph)
}

/// Whether the `rows` rows of `d` are all equal.
fn rows_equal(d: &[f32], rows: usize) -> bool {
    let row = d.len() / rows;
    d.chunks_exact(row.max(1)).all(|r| r == &d[..row])
}

impl PrefixGraph {
    /// Arena bytes the prefix needs when planned alone.
    pub fn arena(&self) -> u64 {
        let order = schedule::schedule(&self.graph);
        let none = BTreeSet::new();
        let req = Request {
            saved: &none,
            weight_grads: &none,
            feeds: &[self.input],
            keep_alive: &self.outputs,
            prefix_lanes: 1,
        };
        memplan::layout(&self.graph, &order, &req).memory.arena
    }

    /// Copies the prefix into `graph` (the training graph) in phase `Prefix`. Returns its
    /// model input and its boundary tensors (micro-batch copies, named `<name>@prefix`).
    pub fn attach(self, graph: &mut Graph) -> (TensorId, Vec<TensorId>) {
        let map = graph.absorb(&self.graph, Phase::Prefix);
        let input = map[&self.input];
        graph.tensor_mut(input).role = Role::ModelInput;
        let outputs: Vec<_> = self.outputs.iter().map(|t| map[t]).collect();
        for &t in &outputs {
            let name = format!("{}@prefix", graph.tensor(t).name);
            graph.tensor_mut(t).name = name;
        }
        (input, outputs)
    }
}

/// The micro-batch and the lanes that run micro-batches at once: the most lanes (up to
/// `threads`) for which some micro-batch fits, and the largest such micro-batch, a divisor
/// of `batch` that leaves one for each lane and whose prefix, built at it for that many
/// lanes (`arena(m, lanes)`), needs no more than `budget` bytes of arena in all lanes. At
/// least 1 sample in 1 lane. Found by bisection over the divisors, as the arena grows with
/// the micro-batch. Built, not estimated from the arena at 1 times the samples: the fused
/// chains' scratch does not grow with them, and which chains are fused depends on the
/// micro-batch's maps and the lanes.
pub fn micro_batch(
    batch: usize,
    threads: usize,
    budget: u64,
    mut arena: impl FnMut(usize, usize) -> Result<u64>,
) -> Result<(usize, usize)> {
    for lanes in (1..=threads.clamp(1, batch.max(1))).rev() {
        let mut fits = |m: usize| -> Result<bool> {
            Ok(arena(m, lanes)?.saturating_mul(lanes as u64) <= budget)
        };
        if !fits(1)? {
            continue;
        }
        let divisors: Vec<usize> = divisors(batch)
            .into_iter()
            .filter(|&m| m <= batch / lanes)
            .collect();
        let (mut lo, mut hi) = (0, divisors.len() - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(divisors[mid])? {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        return Ok((divisors[lo], lanes));
    }
    Ok((1, 1))
}

/// The divisors of `n`, ascending, found up to its square root.
fn divisors(n: usize) -> Vec<usize> {
    let (mut low, mut high) = (Vec::new(), Vec::new());
    let mut d = 1;
    while d * d <= n {
        if n.is_multiple_of(d) {
            low.push(d);
            if d * d != n {
                high.push(n / d);
            }
        }
        d += 1;
    }
    low.extend(high.into_iter().rev());
    low
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Tensor;
    use actc_runtime::ops::{Axes, Empty, Kind};
    use actc_runtime::plan::DType;

    /// input (4, 8) → Relu → `then` → output.
    fn graph(then: Kind, out: Vec<usize>) -> Graph {
        let mut g = Graph::default();
        let x = g.add_tensor(Tensor::value("x", vec![4, 8], DType::F32));
        g.inputs = vec![x];
        let r = Tensor::value("r", vec![4, 8], DType::F32);
        let r = g.push(
            "relu".into(),
            Kind::Relu(Empty {}),
            vec![x],
            vec![r],
            Phase::Forward,
            None,
        )[0];
        let y = Tensor::value("y", out, DType::F32);
        g.outputs = g.push("then".into(), then, vec![r], vec![y], Phase::Forward, None);
        g
    }

    #[test]
    fn a_prefix_runs_on_part_of_the_batch_unless_it_mixes_samples() {
        let mut per_sample = graph(Kind::ReduceMean(Axes { axes: vec![1] }), vec![4, 1]);
        rebatch(&mut per_sample, 4, 2).unwrap();
        let shapes: Vec<_> = per_sample.tensors.iter().map(|t| t.shape.clone()).collect();
        assert_eq!(shapes, [vec![2, 8], vec![2, 8], vec![2, 1]]);

        let mut mixing = graph(Kind::ReduceMean(Axes { axes: vec![0] }), vec![1, 8]);
        let e = rebatch(&mut mixing, 4, 2).unwrap_err();
        assert!(e.contains("combines the samples"), "{e}");

        // A constant spread along the batch (a class token expanded to it) is cut to the
        // micro-batch; one whose rows differ is not the batch's and breaks the shape rule.
        for (rows, ok) in [([1.0, 1.0, 1.0, 1.0], true), ([1.0, 1.0, 2.0, 1.0], false)] {
            let mut g = graph(Kind::Relu(Empty {}), vec![4, 8]);
            let data: Vec<f32> = rows.iter().flat_map(|&v| [v; 8]).collect();
            let c = g.add_tensor(Tensor::constant("c", vec![4, 8], Data::F32(data.into())));
            let y = Tensor::value("sum", vec![4, 8], DType::F32);
            let kind = Kind::Add(Empty {});
            g.outputs = g.push(
                "add".into(),
                kind,
                vec![g.outputs[0], c],
                vec![y],
                Phase::Forward,
                None,
            );
            let result = rebatch(&mut g, 4, 2);
            assert_eq!(result.is_ok(), ok, "{result:?}");
            if ok {
                assert_eq!(g.tensor(c).shape, [2, 8]);
                assert_eq!(g.tensor(c).data.as_ref().map(Data::len), Some(16));
            }
        }

        // A reshape that folds the batch into another axis breaks the shape rule.
        let mut folding = graph(Kind::Reshape(Empty {}), vec![32]);
        let e = rebatch(&mut folding, 4, 2).unwrap_err();
        assert!(e.contains("elements"), "{e}");
    }
}
