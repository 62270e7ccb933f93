//! `actc decompose`: the model's layers in low-rank factors, written as ONNX, with a report
//! per layer and the output difference on a calibration batch.

use crate::driver::data::{DataOptions, seeded_noise};
use crate::driver::distill::{self, Distill, Distilled, relative};
use crate::driver::fs::{check_output, write_atomically};
use crate::{DecomposeOptions, Decomposed, LayerReport, RankRule, Result, err};
use actc_runtime::data::{Dataset, split};
use actc_runtime::prefix::Prefix;
use prost::Message;
use serde_json::json;
use std::path::Path;

/// Where the calibration batch comes from.
pub enum Calibration<'a> {
    /// Uniform noise in [-1, 1), seeded.
    Noise,
    Data(&'a Path, &'a DataOptions),
}

pub fn decompose(
    model_path: &Path,
    out: &Path,
    opts: &DecomposeOptions,
    calibration: Calibration,
    distill: Option<&Distill>,
    as_json: bool,
) -> Result<()> {
    check_output(out, &[model_path])?;
    let model = crate::load_onnx(model_path)?;
    let original = model.encode_to_vec();
    let dir = model_path.parent().unwrap_or(Path::new("."));
    let name = model_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fail = |e: crate::Error| err!("{}: {}", model_path.display(), e.0);
    let mut d = crate::decompose_model(model, dir, &name, opts).map_err(fail)?;
    let distilled = match distill {
        Some(o) => Some(distill::distill(&mut d, o, dir).map_err(fail)?),
        None => None,
    };
    let input = calibration_batch(&d.input_shape, calibration)?;
    let decomposed = d.model.encode_to_vec();
    let (want, got) = (
        outputs(&original, &d.input_shape, &input)?,
        outputs(&decomposed, &d.input_shape, &input)?,
    );
    let difference = relative(&got, &want);
    let agreement = top1_agreement(&got, &want, d.input_shape[0]);
    write_atomically(out, &decomposed)?;
    if as_json {
        println!(
            "{}",
            report_json(&d, distilled.as_ref(), difference, agreement)
        );
    } else {
        print!(
            "{}",
            report_text(&d, distilled.as_ref(), difference, agreement)
        );
        if let Some(why) = collapsed(&d.layers, opts.request.rule) {
            eprintln!("warning: {why}");
        }
        eprintln!("decomposed {} -> {}", model_path.display(), out.display());
    }
    Ok(())
}

/// VBMF reads a flat spectrum (a pretrained layer's, often) as noise and keeps almost
/// nothing of it: said when a layer kept under a tenth of its full rank and lost most of it.
fn collapsed(layers: &[LayerReport], rule: RankRule) -> Option<String> {
    if rule != RankRule::Vbmf {
        return None;
    }
    let lost: Vec<String> = layers
        .iter()
        .filter(|l| l.decomposed && l.error > 0.9)
        .filter(|l| l.ranks.iter().zip(&l.full_ranks).all(|(r, f)| r * 10 < *f))
        .map(|l| format!("{} (ranks {:?} of {:?})", l.node, l.ranks, l.full_ranks))
        .collect();
    (!lost.is_empty()).then(|| {
        format!(
            "the VBMF estimate kept almost nothing of {} layer(s), with errors above 0.9: {}; their spectra look like noise to it. Choose ranks with --ratio R or --energy E instead",
            lost.len(),
            lost.join(", ")
        )
    })
}

/// One batch at the model's input shape: the first of a seeded shuffle of the data,
/// preprocessed as `train` would, or noise.
fn calibration_batch(shape: &[usize], calibration: Calibration) -> Result<Vec<f32>> {
    let Calibration::Data(path, prep) = calibration else {
        let per: usize = shape[1..].iter().product();
        return Ok(seeded_noise(shape[0] * per));
    };
    Ok(data_batches(shape, path, prep, shape[0])?.remove(0))
}

/// Batches at the model's input shape holding the first `samples` of a seeded shuffle of the
/// data (at most all of it; the last batch wraps around), preprocessed as `train` would.
pub fn data_batches(
    shape: &[usize],
    path: &Path,
    prep: &DataOptions,
    samples: usize,
) -> Result<Vec<Vec<f32>>> {
    let per: usize = shape[1..].iter().product();
    let data = Dataset::load(path, prep.layout).map_err(|e| err!("--calibration {e}"))?;
    let prep = prep.preprocess(&shape[1..], &data)?;
    let mut rows: Vec<usize> = (0..data.len()).collect();
    split::shuffle(&mut rows, 0);
    let samples = samples.min(rows.len()).max(1);
    let batches = samples.div_ceil(shape[0]);
    let mut out = Vec::with_capacity(batches);
    for b in 0..batches {
        let mut input = vec![0.0; shape[0] * per];
        for (i, dst) in input.chunks_exact_mut(per).enumerate() {
            data.write_sample(rows[(b * shape[0] + i) % rows.len()], &prep, dst);
        }
        out.push(input);
    }
    Ok(out)
}

/// The model's first output on `input`, by tract (an implementation actc did not write).
fn outputs(model: &[u8], shape: &[usize], input: &[f32]) -> Result<Vec<f32>> {
    let fail =
        |e: actc_runtime::exec::ExecError| err!("running the model on the calibration batch: {e}");
    let mut first = Vec::new();
    Prefix::new(model, shape)
        .map_err(fail)?
        .run(input, |k, v| {
            if k == 0 {
                first = v.to_vec();
            }
        })
        .map_err(fail)?;
    Ok(first)
}

/// The share of samples whose highest score is the same class in both outputs.
fn top1_agreement(got: &[f32], want: &[f32], batch: usize) -> f64 {
    let classes = want.len() / batch.max(1);
    let best = |row: &[f32]| (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b]));
    let same = got
        .chunks(classes.max(1))
        .zip(want.chunks(classes.max(1)))
        .filter(|(a, b)| best(a) == best(b))
        .count();
    same as f64 / batch.max(1) as f64
}

fn totals(layers: &[LayerReport]) -> ((usize, usize), (u64, u64)) {
    layers
        .iter()
        .fold(((0, 0), (0, 0)), |((p0, p1), (f0, f1)), l| {
            (
                (p0 + l.params.0, p1 + l.params.1),
                (f0 + l.flops.0, f1 + l.flops.1),
            )
        })
}

fn report_text(
    d: &Decomposed,
    distilled: Option<&Distilled>,
    difference: f64,
    agreement: f64,
) -> String {
    let join = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let mut text = format!(
        "{:<36} {:<6} {:<8} {:>12} {:>21} {:>19} {:>9}\n",
        "layer", "op", "form", "ranks/full", "params before→after", "MFLOP before→after", "error"
    );
    for l in &d.layers {
        let (form, ranks) = match l.decomposed {
            true => (
                l.form,
                format!("{}/{}", join(&l.ranks), join(&l.full_ranks)),
            ),
            false => ("kept", "-".to_string()),
        };
        text.push_str(&format!(
            "{:<36} {:<6} {:<8} {:>12} {:>10} → {:<8} {:>8.2} → {:<8.2} {:>9.2e}\n",
            l.node,
            l.op,
            form,
            ranks,
            l.params.0,
            l.params.1,
            l.flops.0 as f64 / 1e6,
            l.flops.1 as f64 / 1e6,
            l.error
        ));
        if !l.decomposed {
            text.push_str(&format!("  kept: {}\n", l.kept_because));
        }
        if !l.timings.is_empty() {
            let runs: Vec<String> = l
                .timings
                .iter()
                .map(|t| {
                    let ranks = match t.ranks.is_empty() {
                        true => "as is".to_string(),
                        false => join(&t.ranks),
                    };
                    format!("{ranks} {:.3}{}", t.ms, if t.chosen { "*" } else { "" })
                })
                .collect();
            text.push_str(&format!("  ms by ranks: {}\n", runs.join(", ")));
        }
    }
    let ((p0, p1), (f0, f1)) = totals(&d.layers);
    text.push_str(&format!(
        "these layers: {p0} → {p1} parameters ({:.2}×), {:.1} → {:.1} MFLOP per batch of {} ({:.2}×)\n",
        p1 as f64 / p0.max(1) as f64,
        f0 as f64 / 1e6,
        f1 as f64 / 1e6,
        d.input_shape[0],
        f1 as f64 / f0.max(1) as f64
    ));
    if let Some(t) = distilled {
        text.push_str(&format!(
            "distilled {} epochs on {} calibration samples towards {}: their relative error on the {} held out {:.3e} → {:.3e}\n",
            t.epochs, t.samples, t.maps.join(", "), t.held_out, t.before, t.after
        ));
    }
    text.push_str(&format!(
        "output on the calibration batch: {difference:.3e} relative difference, top-1 agreement {agreement:.3}\n"
    ));
    text
}

fn report_json(
    d: &Decomposed,
    distilled: Option<&Distilled>,
    difference: f64,
    agreement: f64,
) -> serde_json::Value {
    let ((p0, p1), (f0, f1)) = totals(&d.layers);
    let layers: Vec<serde_json::Value> = d
        .layers
        .iter()
        .map(|l| {
            json!({
                "node": l.node, "op": l.op, "decomposed": l.decomposed, "form": l.form,
                "ranks": l.ranks, "full_ranks": l.full_ranks,
                "params_before": l.params.0, "params_after": l.params.1,
                "flops_before": l.flops.0, "flops_after": l.flops.1,
                "relative_error": l.error, "kept_because": l.kept_because,
                "timings": l.timings.iter().map(|t| json!({
                    "ranks": t.ranks, "ms": t.ms, "chosen": t.chosen,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "input_shape": d.input_shape,
        "layers": layers,
        "params_before": p0, "params_after": p1,
        "flops_before": f0, "flops_after": f1,
        "distill": distilled.map(|t| json!({
            "epochs": t.epochs, "samples": t.samples, "held_out": t.held_out, "maps": t.maps,
            "error_before": t.before, "error_after": t.after,
        })),
        "output_relative_difference": difference,
        "top1_agreement": agreement,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(ranks: usize, full: usize, error: f64) -> LayerReport {
        LayerReport {
            node: format!("conv{ranks}"),
            op: "Conv".into(),
            form: "svd",
            ranks: vec![ranks],
            full_ranks: vec![full],
            params: (0, 0),
            flops: (0, 0),
            error,
            decomposed: true,
            kept_because: String::new(),
            timings: Vec::new(),
        }
    }

    #[test]
    fn a_collapsed_vbmf_estimate_is_said() {
        let layers = [layer(1, 320, 0.99), layer(60, 160, 0.5)];
        let why = collapsed(&layers, RankRule::Vbmf).unwrap();
        assert!(why.contains("conv1 (ranks [1] of [320])") && !why.contains("conv60"));
        assert!(collapsed(&layers, RankRule::Ratio(0.5)).is_none());
        assert!(collapsed(&layers[1..], RankRule::Vbmf).is_none());
    }
}
