//! `actc plrd`: progressive low-rank decomposition (DESIGN §4). One model is fine-tuned, then
//! lowered step by step (decompose at the next energy, which merges the factors of the step
//! before and factors them afresh), fine-tuned between steps; each size is written as ONNX,
//! and a table compares them: parameters, the decomposed layers' FLOPs, inference time,
//! training step time and validation accuracy.

use crate::driver::fs::{check_output, write_atomically};
use crate::driver::run::{self, TrainOptions, percentile};
use crate::{
    CompileOptions, DecomposeOptions, LayerReport, LowRankRequest, ModelProto, RankRule, Result,
    bail, compile_file, err,
};
use actc_runtime::prefix::Prefix;
use prost::Message;
use serde_json::json;
use std::path::{Path, PathBuf};

pub struct Plrd<'a> {
    /// The energy of each step, falling.
    pub energies: &'a [f64],
    pub compile: CompileOptions,
    /// What each step's fine-tuning does (its `epochs`: per step; `save` is set per step).
    pub train: TrainOptions,
    pub out_dir: &'a Path,
    pub as_json: bool,
}

/// One size of the model, measured.
struct Size {
    name: String,
    params: u64,
    /// The decomposed layers' FLOPs per batch (before any decomposition for the original).
    flops: u64,
    /// At the compiled input shape's batch.
    batch: usize,
    infer_ms: f64,
    step_ms: f64,
    suffix_ms: f64,
    accuracy: f64,
}

pub fn plrd(model: &Path, p: &Plrd) -> Result<()> {
    if p.energies.is_empty() || p.energies.iter().any(|&e| !(e > 0.0 && e <= 1.0)) {
        bail!("--energies must be one or more values in (0, 1], like 0.95,0.9,0.8");
    }
    if p.energies.windows(2).any(|w| w[1] >= w[0]) {
        bail!(
            "--energies must fall from step to step (each step lowers the ranks), like 0.95,0.9,0.8"
        );
    }
    if p.out_dir.exists() && !p.out_dir.is_dir() {
        bail!("-o {}: not a folder", p.out_dir.display());
    }
    std::fs::create_dir_all(p.out_dir)
        .map_err(|e| err!("-o {}: cannot create: {e}", p.out_dir.display()))?;
    let mut sizes: Vec<Size> = Vec::new();
    let mut current = model.to_path_buf();
    let steps = std::iter::once(None).chain(p.energies.iter().copied().map(Some));
    for energy in steps {
        let name = energy.map_or("original".to_string(), |e| format!("energy_{e}"));
        let (source, flops) = match energy {
            None => (current.clone(), 0),
            Some(e) => {
                let (path, before, after) = decompose(&current, &name, e, p)?;
                if let Some(original) = sizes.first_mut().filter(|s| s.flops == 0) {
                    original.flops = before;
                }
                (path, after)
            }
        };
        eprintln!("plrd: {name}: fine-tuning {}", source.display());
        let size = fine_tune(&source, &name, flops, p)?;
        if energy.is_some() {
            let _ = std::fs::remove_file(&source);
        }
        current = p.out_dir.join(format!("{name}.onnx"));
        sizes.push(size);
    }
    if p.as_json {
        println!("{}", table_json(&sizes, p));
    } else {
        print!("{}", table_text(&sizes, p));
    }
    Ok(())
}

/// `model` decomposed at `energy` (the layers `--layers` picks), written next to the
/// outputs; with the decomposed layers' FLOPs before and after.
fn decompose(model: &Path, name: &str, energy: f64, p: &Plrd) -> Result<(PathBuf, u64, u64)> {
    let opts = DecomposeOptions {
        layers: p.compile.layers,
        input: p.compile.input.clone(),
        outputs: p.compile.outputs.clone(),
        request: LowRankRequest {
            rule: RankRule::Energy(energy),
            even_if_larger: false,
            optimize: None,
            keep: None,
            on_data: None,
        },
        include_head: false,
        calibration: None,
        distill: false,
        distill_maps: Default::default(),
    };
    let m = crate::load_onnx(model)?;
    let dir = model.parent().unwrap_or(Path::new("."));
    let d = crate::decompose_model(m, dir, name, &opts)
        .map_err(|e| err!("{}: {}", model.display(), e.0))?;
    let flops = |f: fn(&LayerReport) -> u64| d.layers.iter().map(f).sum::<u64>();
    let path = p.out_dir.join(format!("{name}.decomposed.onnx"));
    write_atomically(&path, &d.model.encode_to_vec())?;
    Ok((path, flops(|l| l.flops.0), flops(|l| l.flops.1)))
}

/// Compiles `source`, fine-tunes it, exports the best weights as `<name>.onnx` and measures
/// it. Keeps `<name>.onnx` and `<name>.best.actc` (the trained plan).
fn fine_tune(source: &Path, name: &str, flops: u64, p: &Plrd) -> Result<Size> {
    let dir = p.out_dir;
    let plan_path = dir.join(format!("{name}.actc"));
    let onnx = dir.join(format!("{name}.onnx"));
    check_output(&onnx, &[source])?;
    let compiled = compile_file(source, &p.compile)?;
    write_atomically(&plan_path, &compiled.plan.to_bytes())?;
    let train = TrainOptions {
        save: Some(dir.join(name)),
        ..p.train.clone()
    };
    let accuracy = run::train(&plan_path, &train)?.unwrap_or(0.0);
    let (best, last) = run::save_paths(&plan_path, train.save.as_deref());
    run::export_onnx(&plan_path, Some(&best), &onnx, false)?;
    let (total, suffix, _) = run::time_steps(&best, 10, 2, None)?;
    let _ = std::fs::remove_file(&plan_path);
    let _ = std::fs::remove_file(&last);
    let bytes = std::fs::read(&onnx).map_err(|e| err!("{}: cannot read: {e}", onnx.display()))?;
    let exported = ModelProto::decode(bytes.as_slice())
        .map_err(|e| err!("{}: cannot decode: {e}", onnx.display()))?;
    let shape: Vec<usize> = compiled
        .plan
        .source
        .as_ref()
        .map(|s| s.input_shape.iter().map(|&d| d as usize).collect())
        .unwrap_or_default();
    Ok(Size {
        name: name.to_string(),
        params: parameters(&exported),
        flops,
        batch: shape.first().copied().unwrap_or(1),
        infer_ms: inference_ms(&bytes, &shape)?,
        step_ms: percentile(&total, 0.5),
        suffix_ms: percentile(&suffix, 0.5),
        accuracy,
    })
}

/// Elements of the model's initializers.
fn parameters(model: &ModelProto) -> u64 {
    model.graph.as_ref().map_or(0, |g| {
        g.initializer
            .iter()
            .map(|t| t.dims.iter().product::<i64>().max(0) as u64)
            .sum()
    })
}

/// Median milliseconds of the whole model's forward pass at `shape`, run by tract (as a
/// deployment runs the exported model).
fn inference_ms(model: &[u8], shape: &[usize]) -> Result<f64> {
    let prefix = Prefix::new(model, shape).map_err(|e| err!("running the export: {e}"))?;
    let input = crate::driver::data::seeded_noise(shape.iter().product());
    let mut times = Vec::new();
    for i in 0..6 {
        let start = std::time::Instant::now();
        prefix
            .run(&input, |_, _| {})
            .map_err(|e| err!("running the export: {e}"))?;
        if i > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(percentile(&times, 0.5))
}

fn table_text(sizes: &[Size], p: &Plrd) -> String {
    let batch = sizes[0].batch;
    let mut text = format!(
        "{:<14} {:>12} {:>14} {:>14} {:>16} {:>10}\n",
        "model", "parameters", "layers MFLOP", "infer ms", "train step ms", "val acc"
    );
    let base = &sizes[0];
    for s in sizes {
        text.push_str(&format!(
            "{:<14} {:>12} {:>14} {:>14} {:>16} {:>10.4}\n",
            s.name,
            format!(
                "{} ({:.2}×)",
                s.params,
                s.params as f64 / base.params.max(1) as f64
            ),
            format!("{:.1}", s.flops as f64 / 1e6),
            format!(
                "{:.2} ({:.2}×)",
                s.infer_ms,
                base.infer_ms / s.infer_ms.max(1e-9)
            ),
            format!(
                "{:.2} ({:.2}×)",
                s.step_ms,
                base.step_ms / s.step_ms.max(1e-9)
            ),
            s.accuracy,
        ));
    }
    text.push_str(&format!(
        "infer: tract, the whole model at batch {batch}; train step: actc, the prefix included \
         (median of 10; the suffix alone, what later epochs run from the prefix cache: {}); \
         (×): speed-up over the original. Models in {}\n",
        sizes
            .iter()
            .map(|s| format!("{} {:.2} ms", s.name, s.suffix_ms))
            .collect::<Vec<_>>()
            .join(", "),
        p.out_dir.display()
    ));
    text
}

fn table_json(sizes: &[Size], p: &Plrd) -> serde_json::Value {
    json!({
        "out_dir": p.out_dir.display().to_string(),
        "sizes": sizes.iter().map(|s| json!({
            "name": s.name, "parameters": s.params, "layers_flops": s.flops,
            "infer_ms": s.infer_ms, "step_ms": s.step_ms, "suffix_ms": s.suffix_ms,
            "val_accuracy": s.accuracy,
            "onnx": p.out_dir.join(format!("{}.onnx", s.name)).display().to_string(),
        })).collect::<Vec<_>>(),
    })
}
