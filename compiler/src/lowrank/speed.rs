//! `decompose --optimize-ranks`: ranks chosen by measured speed, the seeds' "rank
//! quantization" and hardware-aware selection (DESIGN §4). Speed is not monotone in the rank
//! (GEMM tiles, vector width, threads), so around each layer's estimated ranks the factors
//! are compiled alone, at the layer's real input shape, and timed on actc's own kernels:
//! a training step (forward, backward, update) or a forward pass. The fastest wins, never
//! below the estimate by more than the window; the layer as it is competes too, and stays
//! when nothing beats it.

use super::{LayerReport, Request, Rule, factor_of};
use crate::compile::{CompileOptions, compile_model};
use crate::err;
use crate::error::Result;
use crate::ir::{Graph, TensorId};
use crate::onnx::import::InputShape;
use crate::onnx::write::{self, Original};
use crate::ops::Room;
use crate::passes::prefix::PrefixRunner;
use actc_runtime::exec::Executor;
use actc_runtime::ops::Kind;
use actc_runtime::plan::LossKind;
use petgraph::stable_graph::NodeIndex;
use std::path::Path;
use std::time::Instant;

/// What is timed: a training step of the layer, or its forward pass alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    Train,
    Infer,
}

#[derive(Clone, Copy, Debug)]
pub struct Optimize {
    pub goal: Goal,
    /// How far below the estimated rank a candidate may go, as a share of it.
    pub window: f64,
    /// Timed runs per candidate, interleaved (the median counts).
    pub rounds: usize,
}

/// One candidate's measured time.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// The ranks per mode; empty for the layer as it is.
    pub ranks: Vec<usize>,
    /// Median milliseconds per run.
    pub ms: f64,
    pub chosen: bool,
}

/// A faster candidate replaces the estimate only by more than this share: less is noise.
const MARGIN: f64 = 0.03;

/// Candidate ranks of one mode around the estimate `r` (of `full`): `r` itself and the
/// multiples of the vector-friendly step from `r·(1 − window)` to one step above `r`.
pub fn candidates(r: usize, full: usize, window: f64) -> Vec<usize> {
    let step = if r < 32 { 4 } else { 8 };
    let low = ((r as f64 * (1.0 - window)).ceil() as usize).max(1);
    let high = (r.next_multiple_of(step) + step).min(full);
    let mut ranks: Vec<usize> = (low..=high).filter(|k| k % step == 0).collect();
    ranks.push(r);
    ranks.sort_unstable();
    ranks.dedup();
    ranks
}

/// [`Room::low_rank`] of node `n` at the ranks that measured fastest near those `req`'s rule
/// picks (or the layer kept, when it measured fastest as it is).
pub fn low_rank(
    room: &dyn Room,
    kind: &Kind,
    graph: &mut Graph,
    n: NodeIndex,
    req: &Request,
    opt: Optimize,
    original: &Original,
) -> Result<Option<LayerReport>> {
    let mut trial = graph.clone();
    let Some(estimate) = room.low_rank(kind, &mut trial, n, req)? else {
        return Ok(None);
    };
    if !estimate.decomposed {
        return Ok(Some(estimate));
    }
    let node = graph.nodes[n].clone();
    let output = node.outputs[0];
    let exact = |ranks: &[usize]| Request {
        rule: Rule::Modes([ranks[0], ranks.get(1).copied().unwrap_or(0)]),
        even_if_larger: true,
        optimize: None,
        keep: None,
        on_data: req.on_data,
    };
    let mut combos: Vec<Vec<usize>> = vec![Vec::new()];
    for (&r, &full) in estimate.ranks.iter().zip(&estimate.full_ranks) {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                candidates(r, full, opt.window).into_iter().map(move |k| {
                    let mut c = c.clone();
                    c.push(k);
                    c
                })
            })
            .collect();
    }
    let mut runs = vec![(Vec::new(), bench(graph, &[n], output, original, opt.goal)?)];
    for ranks in combos {
        let mut g = graph.clone();
        room.low_rank(kind, &mut g, n, &exact(&ranks))?;
        let factors: Vec<NodeIndex> = g
            .topo_order()
            .into_iter()
            .filter(|&m| factor_of(&g.nodes[m].name) == Some(&node.name))
            .collect();
        runs.push((ranks, bench(&g, &factors, output, original, opt.goal)?));
    }
    // A first untimed run touches every page of each plan's memory.
    for (_, run) in &mut runs {
        run.time();
    }
    let mut times = vec![Vec::with_capacity(opt.rounds); runs.len()];
    for _ in 0..opt.rounds.max(1) {
        for ((_, run), t) in runs.iter_mut().zip(&mut times) {
            t.push(run.time());
        }
    }
    let mut timings: Vec<Timing> = runs
        .iter()
        .zip(&mut times)
        .map(|((ranks, _), t)| {
            t.sort_by(f64::total_cmp);
            Timing {
                ranks: ranks.clone(),
                ms: t[t.len() / 2],
                chosen: false,
            }
        })
        .collect();
    let at_estimate = timings
        .iter()
        .position(|t| t.ranks == estimate.ranks)
        .expect("the estimate is a candidate");
    let fastest = (1..timings.len())
        .min_by(|&a, &b| timings[a].ms.total_cmp(&timings[b].ms))
        .expect("candidates");
    let pick = match timings[fastest].ms < timings[at_estimate].ms * (1.0 - MARGIN) {
        true => fastest,
        false => at_estimate,
    };
    if timings[0].ms <= timings[pick].ms {
        timings[0].chosen = true;
        let why = format!(
            "measured faster as it is ({:.3} ms against {:.3} ms at ranks {:?})",
            timings[0].ms, timings[pick].ms, timings[pick].ranks
        );
        let mut kept = LayerReport::kept(&node, estimate.params.0, estimate.flops.0, why);
        kept.timings = timings;
        return Ok(Some(kept));
    }
    timings[pick].chosen = true;
    let mut report = room
        .low_rank(kind, graph, n, &exact(&timings[pick].ranks))?
        .ok_or_else(|| err!("internal error: the layer lost its factors"))?;
    report.timings = timings;
    Ok(Some(report))
}

/// `nodes` of `graph` alone, compiled to train every weight on an MSE loss at the real
/// input shape, ready to time.
struct Run {
    exec: Executor,
    goal: Goal,
}

fn bench(
    graph: &Graph,
    nodes: &[NodeIndex],
    output: TensorId,
    original: &Original,
    goal: Goal,
) -> Result<Run> {
    let model = write::write(graph, original, nodes, &[output])?;
    let x = graph.tensor(graph.nodes[nodes[0]].inputs[0]).shape.clone();
    let opts = CompileOptions {
        input: InputShape {
            shape: Some(x),
            batch: None,
        },
        loss: LossKind::Mse,
        lr: 1e-6,
        prefix: PrefixRunner::Tract,
        ..CompileOptions::default()
    };
    let plan = compile_model(model, Path::new("."), "layer", &opts)?.plan;
    let mut exec = Executor::new(plan, u64::MAX).map_err(|e| err!("{e}"))?;
    for (i, v) in exec.boundary_mut(0).iter_mut().enumerate() {
        *v = ((i * 7919 % 2003) as f32 / 1001.5) - 1.0;
    }
    exec.targets_mut().map_err(|e| err!("{e}"))?.fill(0.0);
    Ok(Run { exec, goal })
}

impl Run {
    /// Milliseconds of one run.
    fn time(&mut self) -> f64 {
        let start = Instant::now();
        match self.goal {
            Goal::Train => {
                self.exec.train_step();
            }
            Goal::Infer => self.exec.forward(),
        }
        start.elapsed().as_secs_f64() * 1e3
    }
}
