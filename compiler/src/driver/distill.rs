//! `actc decompose --distill`: the fine-tuning LRD papers give a model after decomposing it,
//! without labels. Factored layer by layer, each layer keeps its own output on the data, but
//! the errors compound: MobileNetV2 decomposed whole at `--ratio 0.5` on data is 0.94 off at
//! its last feature map (0.87 at the logits), and with only its last layers fine-tuned on a
//! task it trailed the original by 20 points. Here every layer of the decomposed model trains
//! to reproduce the original's maps on the calibration inputs (mean squared error), a fifth of
//! them held out to measure it and to pick the epoch whose weights are kept.

use crate::driver::data::DataOptions;
use crate::driver::run::{RunData, TrainOptions};
use crate::driver::trainer::Trainer;
use crate::{CompileOptions, Decomposed, InputShape, Layers, Optimizer, Result, err};
use actc_runtime::data::{Dataset, Preprocess, SampleValues};
use actc_runtime::ops;
use actc_runtime::plan::LossKind;
use std::path::{Path, PathBuf};

pub struct Distill {
    pub epochs: usize,
    pub lr: f32,
    pub quiet: bool,
}

/// What distilling did: the maps' relative error (‖f − f₀‖ / ‖f₀‖, all maps' values together)
/// on the held-out calibration samples before and after.
pub struct Distilled {
    pub epochs: usize,
    /// The maps matched, by tensor name: any `--distill-maps`, then the last feature map.
    pub maps: Vec<String>,
    pub samples: usize,
    pub held_out: usize,
    pub before: f64,
    pub after: f64,
}

/// Trains `d.model`'s layers towards its teacher's features and puts the trained model in
/// `d.model`; `dir` is where the model's external data lives.
pub fn distill(d: &mut Decomposed, o: &Distill, dir: &Path) -> Result<Distilled> {
    let t = d
        .teacher
        .take()
        .ok_or_else(|| err!("--distill: the decomposition gave no features to distill"))?;
    // Each map's MSE relative to its mean square: maps of different sizes and scales
    // count alike, as their relative errors.
    let per_sample: usize = t.sizes.iter().sum();
    let loss_weights = mean_squares(&t.targets, &t.sizes)
        .into_iter()
        .map(|ms| 1.0 / ms.max(f32::MIN_POSITIVE))
        .collect();
    let opts = CompileOptions {
        layers: Layers::All,
        input: InputShape {
            shape: Some(d.input_shape.clone()),
            batch: None,
        },
        outputs: t.outputs.clone(),
        loss: LossKind::Mse,
        loss_weights,
        // Factored on data, a layer's two factors differ in scale by up to 300× (the
        // whitening's), which SGD's one rate serves badly: AdamW's per-weight steps took the
        // logits from 0.37 to 0.25 off the original's in as many epochs (LOWRANK.md).
        optimizer: Optimizer::AdamW(ops::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
        }),
        lr: o.lr,
        ..CompileOptions::default()
    };
    let compiled = crate::compile_model(t.student, dir, "the decomposed model", &opts)?;
    let mut trainer = Trainer::new(&compiled.plan.to_bytes(), "--distill")?;
    let per: usize = d.input_shape[1..].iter().product();
    let samples = t.inputs.len() / per;
    let x_shape = [&[samples][..], &d.input_shape[1..]].concat();
    let y_shape = vec![samples, per_sample];
    let data = Dataset::from_arrays_with_targets(
        "--calibration",
        x_shape,
        SampleValues::F32(t.inputs),
        y_shape,
        t.targets,
        None,
    )
    .map_err(|e| err!("--distill: {e}"))?;
    let train = TrainOptions {
        data: PathBuf::from("--calibration"),
        val: None,
        val_fraction: 0.2,
        epochs: o.epochs,
        seed: 0,
        log: None,
        save: None,
        quiet: o.quiet,
        cache_budget: 0,
        cache_disk: 0,
        cache_dir: std::env::temp_dir(),
        // The calibration inputs are model inputs already.
        prep: DataOptions {
            layout: None,
            scale: Some(1.0),
            mean: Some(vec![0.0]),
            std: Some(vec![1.0]),
            text: None,
        },
        max_loss: f32::INFINITY,
        resume: false,
        checkpoint_every: 0,
        // The held-out error need not fall every epoch: the best epoch's weights are kept.
        keep_best: true,
    };
    let run = RunData::split(data, None, &train)?;
    let prep = train.prep.preprocess(&d.input_shape[1..], &run.data)?;
    let held_out = held_out(&run, &prep, d.input_shape[0], per);
    let before = error(&mut trainer, &held_out)?;
    let held = run.val_rows.len();
    trainer
        .fit(&train, Some(run))
        .map_err(|e| err!("--distill: {}; a lower --distill-lr may hold", e.0))?;
    let after = error(&mut trainer, &held_out)?;
    let mut model = trainer.model()?;
    // The student's outputs are the model's, then the maps.
    let kept = d.model.graph.as_ref().map_or(0, |g| g.output.len());
    if let Some(g) = model.graph.as_mut() {
        g.output.truncate(kept);
    }
    d.model = model;
    Ok(Distilled {
        epochs: o.epochs,
        maps: t.outputs,
        samples,
        held_out: held,
        before,
        after,
    })
}

/// The held-out samples in whole batches (the last one filled with the first samples, which
/// are then counted once): each batch's inputs and targets, and how many target values count.
fn held_out(
    run: &RunData,
    prep: &Preprocess,
    batch: usize,
    per: usize,
) -> Vec<(Vec<f32>, Vec<f32>, usize)> {
    let rows = &run.val_rows;
    rows.chunks(batch)
        .map(|chunk| {
            let mut x = vec![0.0; batch * per];
            let mut y = Vec::new();
            for (i, dst) in x.chunks_exact_mut(per).enumerate() {
                let r = chunk.get(i).copied().unwrap_or(rows[i % rows.len()]);
                run.data.write_sample(r, prep, dst);
                y.extend_from_slice(run.data.target(r));
            }
            let counted = y.len() / batch * chunk.len();
            (x, y, counted)
        })
        .collect()
}

/// The mean square of each map's values in `targets` (samples of maps `sizes` long, back
/// to back).
fn mean_squares(targets: &[f32], sizes: &[usize]) -> Vec<f32> {
    let mut sums = vec![0.0f64; sizes.len()];
    for sample in targets.chunks_exact(sizes.iter().sum()) {
        let mut rest = sample;
        for (sum, &n) in sums.iter_mut().zip(sizes) {
            let (map, tail) = rest.split_at(n);
            *sum += map.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
            rest = tail;
        }
    }
    let samples = (targets.len() / sizes.iter().sum::<usize>()).max(1);
    sums.iter()
        .zip(sizes)
        .map(|(s, &n)| (s / (samples * n) as f64) as f32)
        .collect()
}

/// ‖f − f₀‖ / ‖f₀‖ over the counted values of `batches`.
fn error(trainer: &mut Trainer, batches: &[(Vec<f32>, Vec<f32>, usize)]) -> Result<f64> {
    let (mut got, mut want) = (Vec::new(), Vec::new());
    for (x, y, counted) in batches {
        got.extend_from_slice(&trainer.predict(x)?[..*counted]);
        want.extend_from_slice(&y[..*counted]);
    }
    Ok(relative(&got, &want))
}

/// ‖got − want‖ / ‖want‖.
pub fn relative(got: &[f32], want: &[f32]) -> f64 {
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}
