//! Low-rank decomposition of weights (DESIGN §4): a layer's constant weight replaced by thin
//! factors from its singular values, so the layer costs fewer parameters and FLOPs. The
//! rooms of the ops that have such weights rewrite their nodes ([`Room::low_rank`]); this
//! module holds what they share: the ranks a rule picks, the truncated SVD and Tucker-2
//! factors, the rewrite into stages, and the report.
//!
//! [`Room::low_rank`]: crate::ops::room::Room::low_rank

pub mod data;
pub mod merge;
pub mod rate;
pub mod speed;
mod vbmf;

use crate::err;
use crate::error::Result;
use crate::ir::{Data, Graph, Node, NodeOp, Role, Tensor, TensorId};
use actc_runtime::ops::{Empty, Kind};
use actc_runtime::plan::{Adapter, DType, Phase};
use petgraph::stable_graph::NodeIndex;

/// How ranks are chosen, per mode of a weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// The smallest rank keeping this share of the squared singular values.
    Energy(f64),
    /// Ranks whose factors hold this share of the layer's parameters.
    Ratio(f64),
    /// The empirical variational Bayes matrix factorization estimate (Nakajima et al.).
    Vbmf,
    /// This rank in every mode.
    Fixed(usize),
    /// These ranks: the output mode's, and (Tucker-2) the input mode's; each at most the
    /// full rank (what `--optimize-ranks` tries).
    Modes([usize; 2]),
}

/// What a decomposition is asked.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub rule: Rule,
    /// Decompose a layer even when its factors cost more than it (to check the rewrite).
    pub even_if_larger: bool,
    /// Choose each layer's ranks near the rule's by measured speed (`--optimize-ranks`).
    pub optimize: Option<speed::Optimize>,
    /// Keep the layer whole, for this reason.
    pub keep: Option<&'static str>,
    /// The layer input's second moment on calibration data: factor to keep its output on
    /// that data ([`data`]) rather than its weight.
    pub on_data: Option<&'a data::Whitening>,
}

/// One layer, decomposed or not: what `actc decompose` reports.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    pub node: String,
    pub op: String,
    /// `svd` (two factors), `tucker2` (three), or empty when the layer was kept.
    pub form: &'static str,
    /// The ranks kept per mode, beside the full ranks.
    pub ranks: Vec<usize>,
    pub full_ranks: Vec<usize>,
    /// Before and after.
    pub params: (usize, usize),
    pub flops: (u64, u64),
    /// ‖W − Ŵ‖ / ‖W‖ (Frobenius).
    pub error: f64,
    pub decomposed: bool,
    /// Why a layer was kept as it was.
    pub kept_because: String,
    /// With `--optimize-ranks`: each candidate's measured time, the layer as it is first.
    pub timings: Vec<speed::Timing>,
}

impl LayerReport {
    /// A layer rewritten into factors.
    pub fn factored(
        node: &Node,
        form: &'static str,
        ranks: (Vec<usize>, Vec<usize>),
        params: (usize, usize),
        flops: (u64, u64),
        error: f64,
    ) -> LayerReport {
        LayerReport {
            node: node.name.clone(),
            op: node.op_name(),
            form,
            ranks: ranks.0,
            full_ranks: ranks.1,
            params,
            flops,
            error,
            decomposed: true,
            kept_because: String::new(),
            timings: Vec::new(),
        }
    }

    /// A layer left as it is, for `why`.
    pub fn kept(node: &Node, params: usize, flops: u64, why: impl Into<String>) -> LayerReport {
        LayerReport {
            node: node.name.clone(),
            op: node.op_name(),
            form: "",
            ranks: Vec::new(),
            full_ranks: Vec::new(),
            params: (params, params),
            flops: (flops, flops),
            error: 0.0,
            decomposed: false,
            kept_because: why.into(),
            timings: Vec::new(),
        }
    }
}

/// A row-major matrix of doubles: factors are computed in f64 and stored as f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Matrix {
    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> f64) -> Matrix {
        let data = (0..rows * cols).map(|i| f(i / cols, i % cols)).collect();
        Matrix { rows, cols, data }
    }

    pub fn at(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }

    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }

    pub fn transposed(&self) -> Matrix {
        Matrix::from_fn(self.cols, self.rows, |r, c| self.at(c, r))
    }
}

/// A thin SVD: `u` (rows × k), `s` (k, non-increasing), `vt` (k × cols).
pub struct Svd {
    pub u: Matrix,
    pub s: Vec<f64>,
    pub vt: Matrix,
}

pub fn svd(m: &Matrix) -> Result<Svd> {
    let a = faer::Mat::<f64>::from_fn(m.rows, m.cols, |r, c| m.at(r, c));
    let d = a
        .thin_svd()
        .map_err(|e| err!("the SVD of a {}×{} weight failed: {e:?}", m.rows, m.cols))?;
    let k = m.rows.min(m.cols);
    let (u, v, s) = (d.U(), d.V(), d.S().column_vector());
    Ok(Svd {
        u: Matrix::from_fn(m.rows, k, |r, c| u[(r, c)]),
        s: (0..k).map(|i| s[i]).collect(),
        vt: Matrix::from_fn(k, m.cols, |r, c| v[(c, r)]),
    })
}

/// The smallest rank whose singular values hold `energy` of the squared total (at least 1).
pub fn energy_rank(s: &[f64], energy: f64) -> usize {
    let total: f64 = s.iter().map(|v| v * v).sum();
    let mut kept = 0.0;
    for (r, v) in s.iter().enumerate() {
        kept += v * v;
        // Within rounding of the total: energy 1 keeps every non-negligible direction.
        if kept >= energy * total - 1e-12 * total {
            return r + 1;
        }
    }
    s.len().max(1)
}

/// The rank of a mode whose singular values are `s`, of a `rows × cols` unfolding.
pub fn mode_rank(rule: Rule, s: &[f64], rows: usize, cols: usize) -> Result<usize> {
    let r = match rule {
        Rule::Energy(e) => energy_rank(s, e),
        Rule::Vbmf => vbmf::rank(s, rows, cols).max(1),
        // Two factors of rank r hold r·(rows + cols) parameters.
        Rule::Ratio(q) => ((q * (rows * cols) as f64 / (rows + cols) as f64) as usize).max(1),
        Rule::Fixed(r) if r > s.len() => {
            return Err(err!(
                "--ranks {r} is above the full rank {} of its {rows}×{cols} weight",
                s.len()
            ));
        }
        Rule::Fixed(r) | Rule::Modes([r, _]) => r,
    };
    Ok(r.min(s.len()))
}

/// The constant weight (input 1) of node `n`, its values and its data input (input 0),
/// when that input is not constant: what a decomposition factors and an adapter sits beside.
pub fn factorable(graph: &Graph, n: NodeIndex) -> Option<(&Data, &Tensor, &Tensor)> {
    let node = &graph.nodes[n];
    let (x, w) = (graph.tensor(node.inputs[0]), graph.tensor(node.inputs[1]));
    let data = w.data.as_ref().filter(|_| !x.is_const())?;
    Some((data, x, w))
}

/// Relative error of keeping the first `r` of singular values `s`.
pub fn truncation_error(s: &[f64], r: usize) -> f64 {
    // Folds from +0: an empty sum of f64 is −0, which printed as an error of "-0".
    let squares = |s: &[f64]| s.iter().fold(0.0, |acc, v| acc + v * v);
    let (total, dropped) = (squares(s), squares(&s[r.min(s.len())..]));
    if total > 0.0 {
        (dropped / total).sqrt()
    } else {
        0.0
    }
}

/// W ≈ A·B with A = U_r·√S (rows × r) and B = √S·Vᵀ_r (r × cols).
pub fn split(d: &Svd, r: usize) -> (Matrix, Matrix) {
    let root: Vec<f64> = d.s[..r].iter().map(|v| v.sqrt()).collect();
    let a = Matrix::from_fn(d.u.rows, r, |i, j| d.u.at(i, j) * root[j]);
    let b = Matrix::from_fn(r, d.vt.cols, |i, j| root[i] * d.vt.at(i, j));
    (a, b)
}

/// Tucker-2 of a conv kernel `w` (M, C, taps): factors of its output and input modes and the
/// core, W ≈ G ×₀ U_out ×₁ U_in.
pub struct Tucker2 {
    /// M × r_out and C × r_in, orthonormal columns.
    pub out: Matrix,
    pub input: Matrix,
    /// (r_out, r_in, taps), row-major.
    pub core: Vec<f64>,
    pub error: f64,
    pub full: [usize; 2],
}

/// The Tucker-2 of `w` (M × C × taps, row-major) at the ranks `rule` picks per mode.
pub fn tucker2(w: &[f64], m: usize, c: usize, taps: usize, rule: Rule) -> Result<Tucker2> {
    let out_mode = Matrix::from_fn(m, c * taps, |i, j| w[i * c * taps + j]);
    let in_mode = Matrix::from_fn(c, m * taps, |i, j| {
        let (o, t) = (j / taps, j % taps);
        w[(o * c + i) * taps + t]
    });
    let (so, si) = (svd(&out_mode)?, svd(&in_mode)?);
    let (r_out, r_in) = match rule {
        Rule::Ratio(q) => tucker_ratio_ranks(q, m, c, taps),
        Rule::Modes([r_out, r_in]) => (r_out.clamp(1, so.s.len()), r_in.clamp(1, si.s.len())),
        _ => (
            mode_rank(rule, &so.s, m, c * taps)?,
            mode_rank(rule, &si.s, c, m * taps)?,
        ),
    };
    let out = Matrix::from_fn(m, r_out, |i, j| so.u.at(i, j));
    let input = Matrix::from_fn(c, r_in, |i, j| si.u.at(i, j));
    // G[a, b, t] = Σ_o Σ_i U_out[o, a] · U_in[i, b] · W[o, i, t], one mode at a time.
    let mut half = vec![0.0; r_out * c * taps];
    for a in 0..r_out {
        for o in 0..m {
            let f = out.at(o, a);
            let (dst, src) = (
                &mut half[a * c * taps..][..c * taps],
                &w[o * c * taps..][..c * taps],
            );
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += f * s);
        }
    }
    let mut core = vec![0.0; r_out * r_in * taps];
    for a in 0..r_out {
        for b in 0..r_in {
            let dst = &mut core[(a * r_in + b) * taps..][..taps];
            for i in 0..c {
                let f = input.at(i, b);
                let src = &half[(a * c + i) * taps..][..taps];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += f * s);
            }
        }
    }
    let error = reconstruction_error(w, &core);
    Ok(Tucker2 {
        out,
        input,
        core,
        error,
        full: [so.s.len(), si.s.len()],
    })
}

/// Ranks ρ·C and ρ·M whose three factors hold `q` of the kernel's M·C·taps parameters:
/// ρ²·M·C·taps + ρ·(C² + M²) = q·M·C·taps.
fn tucker_ratio_ranks(q: f64, m: usize, c: usize, taps: usize) -> (usize, usize) {
    let (m, c, k) = (m as f64, c as f64, taps as f64);
    let (a, b) = (m * c * k, c * c + m * m);
    let rho = (-b + (b * b + 4.0 * a * q * a).sqrt()) / (2.0 * a);
    let rank = |n: f64| ((rho * n) as usize).clamp(1, n as usize);
    (rank(m), rank(c))
}

/// ‖W − Ŵ‖ / ‖W‖ for Ŵ = G ×₀ U_out ×₁ U_in: with orthonormal factors Ŵ is W projected on
/// their column spaces, so ‖W − Ŵ‖² = ‖W‖² − ‖Ŵ‖² and ‖Ŵ‖ = ‖G‖ (no reconstruction, which
/// costs M·C·taps·r_out·r_in).
fn reconstruction_error(w: &[f64], core: &[f64]) -> f64 {
    let squares = |v: &[f64]| v.iter().fold(0.0, |acc, x| acc + x * x);
    let (total, kept) = (squares(w), squares(core));
    if total > 0.0 {
        ((total - kept).max(0.0) / total).sqrt()
    } else {
        0.0
    }
}

/// One factor of a rewritten layer: its kernel, its new constant weight, any inputs it
/// keeps from the layer (a bias), and its output's shape.
pub struct Stage {
    pub kind: Kind,
    pub weight: (Vec<usize>, Vec<f32>),
    pub extra: Vec<TensorId>,
    pub out_shape: Vec<usize>,
}

/// The layer a factor node came from: `<layer>` of `<layer>/lowrank<i>`, the names
/// [`replace_with_stages`] gives.
pub fn factor_of(node: &str) -> Option<&str> {
    let (layer, i) = node.rsplit_once("/lowrank")?;
    (!i.is_empty() && i.bytes().all(|b| b.is_ascii_digit())).then_some(layer)
}

/// Replaces node `n` by `stages`, run one after another from the node's input 0; the last
/// writes the node's own outputs. The stages are `<node>/lowrank<i>` and their weights
/// `<weight>.lowrank<i>`: a later compile counts them as the one layer they came from.
pub fn replace_with_stages(graph: &mut Graph, n: NodeIndex, stages: Vec<Stage>) {
    let node = graph.remove_node(n).expect("a node to replace");
    let weight_name = graph.tensor(node.inputs[1]).name.clone();
    let mut x = node.inputs[0];
    let last = stages.len() - 1;
    for (i, s) in stages.into_iter().enumerate() {
        let (shape, values) = s.weight;
        let w = graph.add_tensor(Tensor::constant(
            format!("{weight_name}.lowrank{i}"),
            shape,
            Data::F32(values.into()),
        ));
        let mut inputs = vec![x, w];
        inputs.extend(s.extra);
        let name = format!("{}/lowrank{i}", node.name);
        if i == last {
            graph.add_node_in_place(Node {
                name,
                op: NodeOp::Kernel(s.kind),
                inputs,
                outputs: node.outputs.clone(),
                phase: Phase::Forward,
                source: None,
                origin: None,
            });
        } else {
            let out = Tensor::value(format!("{name}_out"), s.out_shape, DType::F32);
            x = graph.push(name, s.kind, inputs, vec![out], Phase::Forward, None)[0];
        }
    }
}

/// A low-rank adapter (LoRA, Hu et al. 2021) for a layer whose weight stays frozen: the
/// branch x → `a` → `b` whose output adds to the layer's, and how `a`·`b` lays out in the
/// weight (`export` merges it in). `a` starts uniform in ±1/√fan-in, `b` at zero, so
/// training starts from the model as it was.
pub struct AdapterForm {
    pub a: Stage,
    pub b: Stage,
    /// ΔW = left · right in the weight's layout: `a`·`b` for a dense weight (K × N),
    /// `b`·`a` for a conv's (M × C·k²); transposed for a Gemm that stores W transposed.
    pub a_is_left: bool,
    pub transpose: bool,
}

/// `len` values uniform in ±1/√`fan_in`, from a fixed seed (the same adapter every compile).
pub fn lora_init(len: usize, fan_in: usize, seed: u64) -> Vec<f32> {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * bound) as f32
        })
        .collect()
}

/// Puts `form`'s branch beside node `n`, whose weight and bias freeze: the node's readers
/// (and the graph's outputs) read its output plus the branch's, a new tensor, returned with
/// the plan's record of the adapter.
pub fn attach_adapter(graph: &mut Graph, n: NodeIndex, form: AdapterForm) -> (Adapter, TensorId) {
    let node = graph.nodes[n].clone();
    for &p in &node.inputs[1..] {
        graph.tensor_mut(p).role = Role::Const;
    }
    let (w, y) = (graph.tensor(node.inputs[1]).name.clone(), node.outputs[0]);
    let mut x = node.inputs[0];
    let mut names = Vec::new();
    for (tag, stage) in [("lora_a", form.a), ("lora_b", form.b)] {
        let (shape, values) = stage.weight;
        let name = format!("{w}.{tag}");
        let weight = graph.add_tensor(Tensor {
            role: Role::Trainable,
            ..Tensor::constant(name.clone(), shape, Data::F32(values.into()))
        });
        names.push(name);
        let out = Tensor::value(
            format!("{}/{tag}_out", node.name),
            stage.out_shape,
            DType::F32,
        );
        let step = format!("{}/{tag}", node.name);
        x = graph.push(
            step,
            stage.kind,
            vec![x, weight],
            vec![out],
            Phase::Forward,
            None,
        )[0];
    }
    // The sum takes the layer output's name (a model output keeps its own); the frozen
    // layer's part is renamed.
    let (name, shape) = (graph.tensor(y).name.clone(), graph.tensor(y).shape.clone());
    graph.tensor_mut(y).name = format!("{name}.frozen");
    let sum = graph.add_tensor(Tensor::value(name, shape, DType::F32));
    graph.replace_uses(y, sum);
    graph.add_node_in_place(Node {
        name: format!("{}/lora_add", node.name),
        op: NodeOp::Kernel(Kind::Add(Empty {})),
        inputs: vec![y, x],
        outputs: vec![sum],
        phase: Phase::Forward,
        source: None,
        origin: None,
    });
    let [a, b] = [names[0].clone(), names[1].clone()];
    let (left, right) = if form.a_is_left { (a, b) } else { (b, a) };
    let adapter = Adapter {
        weight: w,
        left,
        right,
        transpose: form.transpose,
    };
    (adapter, sum)
}

#[cfg(test)]
mod tests;
