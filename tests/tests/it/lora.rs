//! `compile --lora R`: the selected layers freeze, rank-R adapters beside them train, and the
//! export merges them into the weights — checked by tract running the export against the
//! executor's own forward pass.

use crate::common::{self, model, tract_output};
use actc::Layers;
use actc_runtime::plan::BufferKind;
use actc_runtime::train::Session;
use prost::Message;

fn relative(got: &[f32], want: &[f32]) -> f32 {
    let diff: f32 = got.iter().zip(want).map(|(a, b)| (a - b).powi(2)).sum();
    let norm: f32 = want.iter().map(|b| b * b).sum();
    (diff / norm).sqrt()
}

#[test]
fn adapters_train_and_merge_into_the_export() {
    // tiny_matmul's model output is the softmax of the logits actc trains on.
    for (name, shape, layers, softmax) in [
        ("tiny_mlp", vec![4, 64], Layers::All, false),
        ("tiny_matmul", vec![4, 64], Layers::All, true),
        ("tiny_cnn", vec![4, 3, 16, 16], Layers::Last(3), false),
    ] {
        let opts = actc::CompileOptions {
            lora: Some(2),
            lr: 0.05,
            ..common::options(layers, Some(shape.clone()))
        };
        let plan = actc::compile_file(&model(name), &opts).unwrap().plan;
        assert!(!plan.adapters.is_empty(), "{name}");
        // Only the adapters train.
        for w in &plan.weights {
            let trains = plan.buffer(w.buffer).kind() == BufferKind::Trainable;
            assert_eq!(trains, w.source.contains(".lora_"), "{name}: {}", w.source);
        }
        let input: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0)
            .collect();
        let original = std::fs::read(model(name)).unwrap();
        // B starts at zero: before training, the merged export is the model itself.
        let untrained = actc::export(&plan, &plan).unwrap().encode_to_vec();
        let start = relative(
            &tract_output(&untrained, &shape, &input),
            &tract_output(&original, &shape, &input),
        );
        assert!(start < 1e-6, "{name}: {start}");

        let per = input.len() / shape[0];
        let mut session = Session::new(plan.clone(), 4).unwrap();
        let sample = |r: usize, dst: &mut [f32]| dst.copy_from_slice(&input[r * per..][..per]);
        let mut losses = Vec::new();
        for _ in 0..4 {
            session.feed(&sample, |r| r as u32 % 10, None).unwrap();
            losses.push(session.executor().train_step());
        }
        assert!(losses[3] < losses[0], "{name}: {losses:?}");
        session.feed(&sample, |r| r as u32 % 10, None).unwrap();
        session.executor().forward();
        let mut ours = session.executor().output().to_vec();
        if softmax {
            for row in ours.chunks_mut(10) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                row.iter_mut().for_each(|v| *v = (*v - max).exp());
                let sum: f32 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= sum);
            }
        }
        let trained = session.executor().snapshot().unwrap();
        let exported = actc::export(&plan, &trained).unwrap().encode_to_vec();
        let theirs = tract_output(&exported, &shape, &input);
        let diff = relative(&theirs, &ours);
        assert!(diff < 1e-4, "{name}: the merged export differs by {diff}");
        // The adapters moved (B left zero), so the merge above checked a real product.
        let b_moved = trained
            .weights
            .iter()
            .filter(|w| w.source.ends_with(".lora_b"))
            .all(|w| {
                w.data
                    .chunks_exact(4)
                    .any(|c| f32::from_le_bytes(c.try_into().unwrap()) != 0.0)
            });
        assert!(b_moved, "{name}: an adapter's B is still zero");
    }
}
