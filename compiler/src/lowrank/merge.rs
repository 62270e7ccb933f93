//! Decomposing a decomposed model lowers its ranks (progressive LRD): each selected layer's
//! factors are first multiplied back into one weight — the layer as it stands, fine-tuned
//! or not, at its current rank — which the decomposition then factors afresh. Factoring a
//! factor instead would nest thin layers in thin layers.

use super::{Matrix, factor_of};
use crate::ir::{Data, Graph, Node, NodeOp, Tensor};
use actc_runtime::ops::{self, Kind};
use petgraph::stable_graph::NodeIndex;

/// A weight's shape and values.
type Weight = (Vec<usize>, Vec<f32>);

/// Merges the factors of each layer named in `layers` (as `<layer>/lowrank<i>`) into one
/// node named `<layer>`; returns the layers' names after merging (in the given order,
/// each once).
pub fn merge_layers(graph: &mut Graph, layers: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in layers {
        let stem = factor_of(name).unwrap_or(name).to_string();
        if !names.contains(&stem) {
            names.push(stem);
        }
    }
    for stem in &names {
        let factors: Vec<NodeIndex> = graph
            .topo_order()
            .into_iter()
            .filter(|&n| factor_of(&graph.nodes[n].name) == Some(stem.as_str()))
            .collect();
        if factors.len() > 1
            && let Some((kind, weight)) = merged(graph, &factors)
        {
            replace(graph, &factors, stem, kind, weight);
        }
    }
    names
}

/// The one kernel and weight (shape, values) the chain of `factors` computes, when they
/// form a chain of one kind this knows how to multiply out.
fn merged(graph: &Graph, factors: &[NodeIndex]) -> Option<(Kind, Weight)> {
    let nodes: Vec<&Node> = factors.iter().map(|&n| &graph.nodes[n]).collect();
    // Each factor reads the one before it, and only it does; no factor but the last has a
    // bias.
    for w in nodes.windows(2) {
        let link = w[0].outputs[0];
        let readers = graph.consumers(link).count();
        if w[1].inputs[0] != link || readers != 1 || w[0].inputs.len() != 2 {
            return None;
        }
    }
    let weights: Vec<Weight> = nodes
        .iter()
        .map(|n| {
            let t = graph.tensor(*n.inputs.get(1)?);
            Some((t.shape.clone(), t.data.as_ref()?.as_f32()))
        })
        .collect::<Option<_>>()?;
    let kinds: Vec<&Kind> = nodes
        .iter()
        .map(|n| match &n.op {
            NodeOp::Kernel(k) => Some(k),
            NodeOp::Onnx(_) => None,
        })
        .collect::<Option<_>>()?;
    match kinds[0] {
        Kind::Conv(_) => merge_convs(&kinds, &weights),
        Kind::Gemm(first) => {
            let last = match kinds.last()? {
                Kind::Gemm(g) => g,
                _ => return None,
            };
            let plain = kinds[1..kinds.len() - 1]
                .iter()
                .all(|k| matches!(k, Kind::Gemm(g) if !g.trans_a && !g.trans_b && g.alpha == 1.0));
            let chainable = !first.trans_b && !last.trans_a && !last.trans_b && plain;
            let scaled = first.alpha == 1.0 || kinds.len() == 1;
            if !chainable || !scaled {
                return None;
            }
            let kind = Kind::Gemm(ops::Gemm {
                trans_a: first.trans_a,
                trans_b: false,
                alpha: last.alpha,
                beta: last.beta,
            });
            Some((kind, product(&weights)?))
        }
        Kind::MatMul(_) if kinds.iter().all(|k| matches!(k, Kind::MatMul(_))) => {
            Some((kinds[0].clone(), product(&weights)?))
        }
        _ => None,
    }
}

/// W₀·W₁·…: matrices of shapes (k × r₀), (r₀ × r₁), ….
fn product(weights: &[Weight]) -> Option<Weight> {
    let as_matrix = |(shape, v): &Weight| -> Option<Matrix> {
        let [rows, cols] = shape[..] else { return None };
        Some(Matrix::from_fn(rows, cols, |i, j| v[i * cols + j] as f64))
    };
    let mut acc = as_matrix(&weights[0])?;
    for w in &weights[1..] {
        let m = as_matrix(w)?;
        if m.rows != acc.cols {
            return None;
        }
        acc = Matrix::from_fn(acc.rows, m.cols, |i, j| {
            (0..m.rows).map(|k| acc.at(i, k) * m.at(k, j)).sum()
        });
    }
    Some((vec![acc.rows, acc.cols], acc.to_f32()))
}

/// A chain of convs in which every factor but one (the main one: the Tucker-2 core, or the
/// strided first factor of an SVD pair) is a plain 1×1 conv: the main kernel with the
/// 1×1 factors after it applied to its output mode, those before it to its input mode.
fn merge_convs(kinds: &[&Kind], weights: &[Weight]) -> Option<(Kind, Weight)> {
    let convs: Vec<&ops::Conv> = kinds
        .iter()
        .map(|k| match k {
            Kind::Conv(c) if c.group == 1 => Some(c),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let plain = |c: &ops::Conv| {
        c.kernel == [1, 1]
            && c.strides.iter().all(|&s| s == 1)
            && c.pads.iter().all(|&p| p == 0)
            && c.dilations.iter().all(|&d| d == 1)
    };
    let main = match convs.iter().filter(|c| !plain(c)).count() {
        0 => 0,
        1 => convs.iter().position(|c| !plain(c))?,
        _ => return None,
    };
    let (shape, values) = &weights[main];
    let [mut m, mut c, kh, kw] = shape[..] else {
        return None;
    };
    let taps = kh * kw;
    let mut k: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    for (shape, p) in &weights[main + 1..] {
        let [out, inner, 1, 1] = shape[..] else {
            return None;
        };
        if inner != m {
            return None;
        }
        // K'[o, i, t] = Σ_a P[o, a] · K[a, i, t]
        let mut next = vec![0.0; out * c * taps];
        for o in 0..out {
            for a in 0..m {
                let f = p[o * m + a] as f64;
                let src = &k[a * c * taps..][..c * taps];
                let dst = &mut next[o * c * taps..][..c * taps];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += f * s);
            }
        }
        (k, m) = (next, out);
    }
    for (shape, p) in weights[..main].iter().rev() {
        let [inner, input, 1, 1] = shape[..] else {
            return None;
        };
        if inner != c {
            return None;
        }
        // K'[o, j, t] = Σ_i K[o, i, t] · P[i, j]
        let mut next = vec![0.0; m * input * taps];
        for o in 0..m {
            for i in 0..c {
                let src = &k[(o * c + i) * taps..][..taps];
                for j in 0..input {
                    let f = p[i * input + j] as f64;
                    let dst = &mut next[(o * input + j) * taps..][..taps];
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d += f * s);
                }
            }
        }
        (k, c) = (next, input);
    }
    let values = k.iter().map(|&v| v as f32).collect();
    Some((
        Kind::Conv(convs[main].clone()),
        (vec![m, c, kh, kw], values),
    ))
}

/// `factors` replaced by one node `name` computing `kind` with `weight`, from the first
/// factor's input to the last one's outputs, with the last one's bias.
fn replace(
    graph: &mut Graph,
    factors: &[NodeIndex],
    name: &str,
    kind: Kind,
    (shape, values): Weight,
) {
    let first = graph.nodes[factors[0]].clone();
    let last = graph.nodes[*factors.last().expect("factors")].clone();
    let weight_name = graph.tensor(first.inputs[1]).name.clone();
    let weight_name = weight_name
        .rsplit_once(".lowrank")
        .map_or(weight_name.clone(), |(stem, _)| stem.to_string());
    for &n in factors {
        graph.remove_node(n);
    }
    let w = graph.add_tensor(Tensor::constant(
        weight_name,
        shape,
        Data::F32(values.into()),
    ));
    let mut inputs = vec![first.inputs[0], w];
    inputs.extend(&last.inputs[2..]);
    graph.add_node_in_place(Node {
        name: name.to_string(),
        op: NodeOp::Kernel(kind),
        inputs,
        outputs: last.outputs,
        phase: last.phase,
        source: None,
        origin: None,
    });
}
