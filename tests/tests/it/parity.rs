//! One training step of every bundled model against PyTorch autograd: the loss, the
//! gradient of every trainable tensor and the updated weights, from the golden data that
//! `models/golden/make_golden.py` made (see its README).
//!
//! Tolerance, per tensor: max |actc − torch| ≤ 1e-4 · max |torch|. The golden data's own
//! float32 rounding (against a float64 recomputation) is ≤ 2.6e-6 of that scale, and a
//! different but correct summation order moves it by about as much; 1e-4 leaves room for
//! summation orders that differ more over large reductions, and still catches any wrong
//! index, missing term or wrong scale (those are O(1) of the scale).
//!
//! A gradient that is zero in exact arithmetic (a key's bias in attention: softmax ignores
//! a shift shared by all keys) is rounding noise in both implementations, so each tensor's
//! scale is at least 1e-4 of the largest gradient of the case (so such a tensor may be off by
//! 1e-8 of that gradient; a wrong term is far more).

use crate::common;

use actc::{CompileOptions, InputShape, Layers};
use actc_runtime::data::npz;
use actc_runtime::exec::Executor;
use actc_runtime::plan::{BufferKind, LossKind};
use std::collections::BTreeMap;
use std::path::PathBuf;

const TOLERANCE: f32 = 1e-4;

fn golden() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/golden"))
}

/// Scales below this share of a case's largest gradient are rounding noise.
const NOISE: f32 = 1e-4;

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// max |ours − theirs| over max |theirs|, the scale at least `floor`.
fn rel_error(ours: &[f32], theirs: &[f32], floor: f32) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    let scale = max_abs(theirs).max(floor).max(f32::MIN_POSITIVE);
    let diff = ours
        .iter()
        .zip(theirs)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

fn check_case(case: &str, entry: &serde_json::Value) -> f32 {
    let file = golden().join(entry["file"].as_str().unwrap());
    let model = common::model(entry["model"].as_str().unwrap().trim_end_matches(".onnx"));
    let layers: Layers = entry["layers"].as_str().unwrap().parse().unwrap();
    let shape: Vec<usize> = entry["input_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    // A regression case trains several outputs on the weighted sum of their MSEs.
    let mse = entry["loss_kind"].as_str() == Some("mse");
    let strings = |key: &str| -> Vec<String> {
        entry[key].as_array().map_or(Vec::new(), |a| {
            a.iter().map(|v| v.as_str().unwrap().to_string()).collect()
        })
    };
    let weights: Vec<f32> = entry["loss_weights"].as_array().map_or(Vec::new(), |a| {
        a.iter().map(|v| v.as_f64().unwrap() as f32).collect()
    });
    let opts = CompileOptions {
        layers,
        input: InputShape {
            shape: Some(shape.clone()),
            batch: None,
        },
        outputs: strings("outputs"),
        loss: match mse {
            true => LossKind::Mse,
            false => LossKind::CrossEntropy,
        },
        loss_weights: weights,
        lr: 0.1,
        keep_gradients: true,
        // The golden step is plain SGD at one rate for every weight, factors included.
        factor_lr: actc::FactorLr::Scale(1.0),
        ..CompileOptions::default()
    };
    let plan = actc::compile_file(&model, &opts).unwrap().plan;
    // The default plan stores conv weight gradients straight into their update: it holds
    // no gradient to compare, but the same updated weights.
    let fused = CompileOptions {
        keep_gradients: false,
        ..opts.clone()
    };
    let fused = actc::compile_file(&model, &fused).unwrap().plan;

    let input = npz::read(&file, "input").unwrap().values;
    let boundary = common::boundary(&plan, &input);
    let mut exec = Executor::new(plan.clone(), 1).unwrap();
    let mut fused_exec = Executor::new(fused, 1).unwrap();
    for exec in [&mut exec, &mut fused_exec] {
        if mse {
            // One row per sample: the outputs' targets back to back, as actc feeds them.
            let targets = npz::read(&file, "targets").unwrap().values;
            common::feed_targets(exec, &boundary, &targets);
        } else {
            let labels = npz::read(&file, "labels").unwrap().values;
            common::feed(exec, &boundary, |i| labels[i] as u32);
        }
    }
    let fused_loss = fused_exec.train_step();
    let fused_after = fused_exec.snapshot().unwrap();

    // weight gradient buffers are named "<initializer>.grad"
    let mut grads: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let loss = exec.train_step_observed(|b, g| {
        grads.insert(b.name.trim_end_matches(".grad").to_string(), g.to_vec());
    });
    let want_loss = entry["loss"].as_f64().unwrap() as f32;
    for loss in [loss, fused_loss] {
        assert!(
            (loss - want_loss).abs() <= TOLERANCE * want_loss.abs(),
            "{case}: loss {loss} vs torch {want_loss}"
        );
    }

    let trainable: Vec<String> = entry["trainable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let ours: Vec<String> = plan
        .weights
        .iter()
        .filter(|w| plan.buffer(w.buffer).kind() == BufferKind::Trainable)
        .map(|w| w.source.clone())
        .collect();
    let (mut a, mut b) = (ours.clone(), trainable.clone());
    a.sort();
    b.sort();
    assert_eq!(
        a, b,
        "{case}: actc and the reference train different tensors"
    );

    let mut worst = 0.0f32;
    let after = exec.snapshot().unwrap();
    let want_grads: Vec<Vec<f32>> = trainable
        .iter()
        .map(|name| npz::read(&file, &format!("grad/{name}")).unwrap().values)
        .collect();
    let floor = NOISE * want_grads.iter().map(|g| max_abs(g)).fold(0.0, f32::max);
    for (name, want) in trainable.iter().zip(&want_grads) {
        let got = grads
            .get(name)
            .unwrap_or_else(|| panic!("{case}: no gradient for {name}"));
        let e = rel_error(got, want, floor);
        assert!(
            e <= TOLERANCE,
            "{case}: gradient of {name} off by {e:.2e} of its scale"
        );
        worst = worst.max(e);
        if entry["updated_stored"].as_bool().unwrap() {
            let want = npz::read(&file, &format!("updated/{name}")).unwrap().values;
            for (after, how) in [(&after, "kept"), (&fused_after, "fused")] {
                let w = after.weights.iter().find(|w| &w.source == name).unwrap();
                let got: Vec<f32> = w
                    .data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                let e = rel_error(&got, &want, 0.0);
                assert!(
                    e <= TOLERANCE,
                    "{case}: updated {name} ({how} gradient) off by {e:.2e} of its scale"
                );
            }
        }
    }
    worst
}

#[test]
fn one_training_step_matches_pytorch() {
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden().join("index.json")).unwrap())
            .unwrap();
    let cases = index["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 55);
    for (case, entry) in cases {
        let worst = check_case(case, entry);
        println!("{case}: worst gradient error {worst:.2e} of the tensor's scale");
    }
}
