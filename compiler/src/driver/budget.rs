//! `--budget`: HOSVD ranks fixed per layer so that the compressed activations fit a byte
//! budget, chosen on a calibration batch to keep the weight gradients closest to the exact
//! ones.
//!
//! A layer's compressed input enters only that layer's weight gradient (input gradients flow
//! through the weights and the lossless ReLU masks), so a layer's gradient error depends on
//! its own ranks alone. One training step per candidate ε, on the same batch and weights,
//! therefore measures every layer's option at once; picking one option per layer under the
//! budget is then a multiple-choice knapsack, solved by dynamic programming over the bytes.

use crate::driver::data::{DataOptions, check_labels, classes};
use crate::driver::inspect::human;
use crate::{CompileOptions, Compression, FixedRanks, HosvdRanks, Result, compile_file, err};
use actc_runtime::data::{Dataset, split};
use actc_runtime::ops::{Compressor, Hosvd, Kind, Method};
use actc_runtime::plan::Plan;
use actc_runtime::train::Session;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The ε values tried on the calibration batch: each gives one set of ranks per layer.
const CANDIDATES: [f32; 10] = [0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.995];

/// One way to compress a layer's input: the ranks an ε gave on the calibration batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub eps: f32,
    pub ranks: Vec<u32>,
    /// The compressed buffer and the factors kept for the next step, as the plan holds them.
    pub bytes: usize,
    /// ‖dW − dW_exact‖ / ‖dW_exact‖ on the calibration batch.
    pub error: f64,
}

/// What calibration chose for one layer, and what it compressed.
#[derive(Clone, Debug)]
pub struct LayerChoice {
    pub layer: String,
    pub dims: Vec<usize>,
    pub choice: Choice,
}

/// The rank rule calibration measures its candidates with: the ε rule, centered or not
/// (`Auto` would fix most layers' ranks before calibration could choose them).
fn calibrated(ranks: HosvdRanks) -> HosvdRanks {
    match ranks {
        HosvdRanks::Auto => HosvdRanks::Eps,
        r => r,
    }
}

/// Ranks for every compressed layer of the model under `opts` (HOSVD, caps at its max
/// rank) whose compressed inputs take at most `budget` bytes, from one batch of `data`.
pub fn calibrate(
    model: &Path,
    opts: &CompileOptions,
    budget: usize,
    data_path: &Path,
    prep: &DataOptions,
) -> Result<Vec<LayerChoice>> {
    let Compression::Hosvd {
        max_rank,
        ranks: rule,
        ..
    } = opts.compression
    else {
        return Err(err!("--budget needs --compress hosvd"));
    };
    let data = Dataset::load(data_path, prep.layout).map_err(|e| err!("{e}"))?;
    if data.is_empty() {
        return Err(err!(
            "--calibration {}: no samples to calibrate on",
            data_path.display()
        ));
    }
    let exact = CompileOptions {
        compression: Compression::None,
        fixed_ranks: BTreeMap::new(),
        keep_gradients: true,
        ..opts.clone()
    };
    // Compiled at one candidate ε and run at each: every ε below 1 plans the same buffers
    // (ε = 1 would plan no state for the modes the ε rule tracks from step to step).
    let capped = CompileOptions {
        compression: Compression::Hosvd {
            eps: CANDIDATES[0],
            max_rank,
            ranks: calibrated(rule),
        },
        fixed_ranks: BTreeMap::new(),
        keep_gradients: true,
        ..opts.clone()
    };
    let plan = compile_file(model, &capped)?.plan;
    let layers = compressed_layers(&plan);
    if layers.is_empty() {
        return Err(err!(
            "--budget: no layer of {} is compressed (HOSVD applies to the trained convs and dense layers)",
            model.display()
        ));
    }
    let batch = Batch::new(&plan, &data, data_path, prep)?;
    let reference = batch.gradients(compile_file(model, &exact)?.plan)?;
    let mut options: Vec<Vec<Choice>> = vec![Vec::new(); layers.len()];
    for eps in CANDIDATES {
        let mut plan = plan.clone();
        set_eps(&mut plan, eps);
        let (grads, ranks) = batch.gradients_and_ranks(plan)?;
        for (l, layer) in layers.iter().enumerate() {
            let (got, want) = (&grads[&layer.gradient], &reference[&layer.gradient]);
            let ranks = ranks[&layer.name].clone();
            // What the plan will hold at these ranks: the compressed form and its state.
            let fixed = Compressor {
                shape: layer.dims.iter().map(|&d| d as u64).collect(),
                method: Some(Method::Hosvd(Hosvd {
                    eps,
                    caps: ranks.clone(),
                    fixed: true,
                    center: calibrated(rule) == HosvdRanks::Centered,
                })),
            };
            let floats = fixed.packed_len() + fixed.state_len();
            let choice = Choice {
                eps,
                ranks,
                bytes: floats * 4,
                error: relative_error(got, want),
            };
            // A larger ε that gave the same ranks gave the same factors: one option.
            if options[l].last().is_none_or(|c| c.ranks != choice.ranks) {
                options[l].push(choice);
            }
        }
    }
    let picks = choose(&options, budget).ok_or_else(|| {
        let least: usize = options.iter().map(|o| o[0].bytes).sum();
        err!(
            "--budget {budget} B: the smallest ranks calibration found (every layer at eps {}) take {least} B; give at least that",
            CANDIDATES[0]
        )
    })?;
    Ok(layers
        .into_iter()
        .zip(picks)
        .zip(options)
        .map(|((layer, k), mut o)| LayerChoice {
            layer: layer.name,
            dims: layer.dims,
            choice: o.swap_remove(k),
        })
        .collect())
}

/// The compile options' fixed ranks for these choices.
pub fn fixed_ranks(choices: &[LayerChoice]) -> BTreeMap<String, FixedRanks> {
    choices
        .iter()
        .map(|c| {
            let f = FixedRanks {
                eps: c.choice.eps,
                ranks: c.choice.ranks.clone(),
            };
            (c.layer.clone(), f)
        })
        .collect()
}

/// The choices as a table for the terminal.
pub fn report(choices: &[LayerChoice], budget: usize) -> String {
    let total: usize = choices.iter().map(|c| c.choice.bytes).sum();
    let vanilla: usize = choices
        .iter()
        .map(|c| c.dims.iter().product::<usize>() * 4)
        .sum();
    let mut out = format!(
        "budget {budget} B: {} compressed layers take {} ({} as they are); ranks per layer, fixed from step to step:\n",
        choices.len(),
        human(total as u64),
        human(vanilla as u64),
    );
    for c in choices {
        let ranks: Vec<String> = c.choice.ranks.iter().map(u32::to_string).collect();
        out += &format!(
            "  eps {:<5} ranks {:<14} {:>10}  weight-gradient error {:.4}  {}\n",
            c.choice.eps,
            ranks.join(","),
            human(c.choice.bytes as u64),
            c.choice.error,
            c.layer,
        );
    }
    out
}

/// A compressed layer of a plan: its input's shape and its weight gradient's buffer.
struct Compressed {
    name: String,
    dims: Vec<usize>,
    gradient: String,
}

fn compressed_layers(plan: &Plan) -> Vec<Compressed> {
    let gradient_of = |layer: &str| {
        plan.steps.iter().find_map(|s| match s.kind() {
            Some(Kind::ConvBackwardWeightCompressed(_) | Kind::LinearGradWCompressed(_))
                if s.origin == layer =>
            {
                Some(plan.buffer(s.outputs[0]).name.clone())
            }
            _ => None,
        })
    };
    plan.steps
        .iter()
        .filter_map(|s| match s.kind() {
            Some(Kind::Compress(c)) if matches!(c.method, Some(Method::Hosvd(_))) => {
                Some(Compressed {
                    name: s.origin.clone(),
                    dims: c.shape.iter().map(|&d| d as usize).collect(),
                    gradient: gradient_of(&s.origin)?,
                })
            }
            _ => None,
        })
        .collect()
}

fn set_eps(plan: &mut Plan, eps: f32) {
    for s in &mut plan.steps {
        if let Some(Kind::Compress(c)) = s.op.as_mut().and_then(|o| o.kind.as_mut())
            && let Some(Method::Hosvd(h)) = &mut c.method
        {
            h.eps = eps;
        }
    }
}

/// Vectors by buffer or layer name.
type ByName<T> = HashMap<String, Vec<T>>;

/// The calibration batch: the first batch of a seeded shuffle of the data, preprocessed
/// as `actc train` would.
struct Batch<'a> {
    data: &'a Dataset,
    prep: actc_runtime::data::Preprocess,
    rows: Vec<usize>,
}

impl<'a> Batch<'a> {
    fn new(plan: &Plan, data: &'a Dataset, path: &Path, prep: &DataOptions) -> Result<Self> {
        check_labels(classes(plan), data, "--calibration ", path)?;
        let sample: Vec<usize> = plan
            .source
            .as_ref()
            .map(|s| s.input_shape.iter().skip(1).map(|&d| d as usize).collect())
            .unwrap_or_default();
        let batch = plan.hyper.as_ref().map_or(1, |h| h.batch as usize).max(1);
        let mut rows: Vec<usize> = (0..data.len()).collect();
        split::shuffle(&mut rows, 0);
        rows.truncate(batch);
        Ok(Batch {
            data,
            prep: prep.preprocess(&sample, data)?,
            rows,
        })
    }

    /// One training step of `plan` on the batch: every weight gradient, by buffer name.
    fn gradients(&self, plan: Plan) -> Result<ByName<f32>> {
        Ok(self.gradients_and_ranks(plan)?.0)
    }

    /// [`Batch::gradients`] and the ranks each compressed layer used, by layer.
    fn gradients_and_ranks(&self, plan: Plan) -> Result<(ByName<f32>, ByName<u32>)> {
        let mut session = Session::new(plan, 1).map_err(|e| err!("calibration: {e}"))?;
        session
            .load(self.data, &self.prep, &self.rows)
            .map_err(|e| err!("calibration: {e}"))?;
        let mut grads = HashMap::new();
        let exec = session.executor();
        exec.train_step_observed(|b, g| {
            grads.insert(b.name.clone(), g.to_vec());
        });
        let ranks = exec
            .compression_stats()
            .iter()
            .map(|c| {
                let r = (0..c.modes).map(|m| c.rank_max[m] as u32).collect();
                (c.layer.clone(), r)
            })
            .collect();
        Ok((grads, ranks))
    }
}

fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        diff += (f64::from(g) - f64::from(w)).powi(2);
        norm += f64::from(w).powi(2);
    }
    if norm == 0.0 {
        return if diff == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (diff / norm).sqrt()
}

/// Steps of the knapsack's byte axis: fine enough that rounding each option's bytes up to
/// a step costs at most 1/STEPS of the budget per layer.
const STEPS: usize = 4096;

/// One option per layer with the least summed error whose bytes fit `budget` (each option's
/// bytes rounded up to a step, so the sum never exceeds it); None when nothing fits. Ties go
/// to the earlier option (the options come smallest first).
fn choose(layers: &[Vec<Choice>], budget: usize) -> Option<Vec<usize>> {
    let unit = budget.div_ceil(STEPS).max(1);
    let cap = budget / unit;
    let weight = |c: &Choice| c.bytes.div_ceil(unit);
    // best[j]: the least error of the layers so far within j steps; took[l][j]: the option
    // of layer l on that path.
    let mut best = vec![0.0f64; cap + 1];
    let mut took = Vec::with_capacity(layers.len());
    for options in layers {
        let mut next = vec![f64::INFINITY; cap + 1];
        let mut pick = vec![usize::MAX; cap + 1];
        for (k, c) in options.iter().enumerate() {
            let w = weight(c);
            for j in w..=cap {
                let e = best[j - w] + c.error;
                if e < next[j] {
                    next[j] = e;
                    pick[j] = k;
                }
            }
        }
        best = next;
        took.push(pick);
    }
    if !best[cap].is_finite() {
        return None;
    }
    let mut j = cap;
    let mut picks = vec![0; layers.len()];
    for l in (0..layers.len()).rev() {
        picks[l] = took[l][j];
        j -= weight(&layers[l][picks[l]]);
    }
    Some(picks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(bytes: usize, error: f64) -> Choice {
        Choice {
            eps: 0.0,
            ranks: vec![],
            bytes,
            error,
        }
    }

    /// Against every combination, on small random instances.
    #[test]
    fn knapsack_finds_the_least_error_that_fits() {
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for _ in 0..200 {
            let layers: Vec<Vec<Choice>> = (0..1 + next(4))
                .map(|_| {
                    (0..1 + next(4))
                        .map(|_| option(1 + next(100) as usize, next(1000) as f64 / 100.0))
                        .collect()
                })
                .collect();
            let budget = 1 + next(300) as usize;
            // Brute force over every combination.
            let mut best: Option<(f64, usize)> = None;
            let mut pick = vec![0; layers.len()];
            loop {
                let bytes: usize = pick.iter().zip(&layers).map(|(&k, o)| o[k].bytes).sum();
                let error: f64 = pick.iter().zip(&layers).map(|(&k, o)| o[k].error).sum();
                if bytes <= budget && best.is_none_or(|(e, _)| error < e) {
                    best = Some((error, bytes));
                }
                let Some(l) = (0..layers.len()).find(|&l| pick[l] + 1 < layers[l].len()) else {
                    break;
                };
                pick[l] += 1;
                pick[..l].fill(0);
            }
            let got = choose(&layers, budget);
            match (best, got) {
                (None, None) => {}
                (Some((error, _)), Some(picks)) => {
                    let bytes: usize = picks.iter().zip(&layers).map(|(&k, o)| o[k].bytes).sum();
                    let got: f64 = picks.iter().zip(&layers).map(|(&k, o)| o[k].error).sum();
                    assert!(bytes <= budget, "{bytes} B over the budget {budget}");
                    assert!((got - error).abs() < 1e-9, "error {got}, best {error}");
                }
                (want, got) => panic!("budget {budget}: {want:?} vs {got:?} for {layers:?}"),
            }
        }
    }

    #[test]
    fn ties_go_to_the_smaller_option() {
        let layers = vec![vec![option(10, 0.0), option(20, 0.0)]];
        assert_eq!(choose(&layers, 100), Some(vec![0]));
        assert_eq!(choose(&layers, 9), None);
    }
}
