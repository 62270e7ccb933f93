//! Activation compression end to end: the compressed plans compute what the method says.
//! HOSVD and SVD with ε = 1 keep every singular vector, so their gradients equal those of the
//! uncompressed plan; smaller ε and caps shrink the planned memory and are reported.

mod common;

use actc::compile::{CompileOptions, compile_file};
use actc::passes::compress::Compression;
use actc::passes::select::Layers;
use actc_runtime::exec::Executor;
use actc_runtime::plan::Plan;
use std::collections::BTreeMap;

fn plan(name: &str, layers: Layers, shape: &[usize], compression: Compression) -> Plan {
    let opts = CompileOptions {
        compression,
        ..common::options(layers, Some(shape.to_vec()))
    };
    compile_file(&common::model(name), &opts).unwrap().plan
}

/// Loss and every weight gradient of one step on a fixed batch.
fn one_step(plan: &Plan) -> (f32, BTreeMap<String, Vec<f32>>) {
    let shape = common::input_shape(plan);
    let n: usize = shape.iter().product();
    let boundary = common::boundary(plan, &varied(n));
    let mut exec = Executor::new(plan.clone(), 1).unwrap();
    common::feed(&mut exec, &boundary, |i| (i % 3) as u32);
    let mut grads = BTreeMap::new();
    let loss = exec.train_step_observed(|b, g| {
        grads.insert(b.name.clone(), g.to_vec());
    });
    (loss, grads)
}

/// A deterministic input with some spread.
fn varied(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

const CASES: &[(&str, Layers, &[usize])] = &[
    ("tiny_cnn", Layers::All, &[2, 3, 16, 16]),
    ("mobilenetv2", Layers::Last(4), &[4, 3, 64, 64]),
    ("resnet18", Layers::Last(4), &[4, 3, 32, 32]),
    ("mcunet", Layers::Last(4), &[4, 3, 32, 32]),
    ("tiny_mlp", Layers::Last(2), &[4, 64]),
    ("tiny_matmul", Layers::All, &[4, 64]),
];

#[test]
fn eps_one_gives_the_uncompressed_gradients() {
    for &(name, layers, shape) in CASES {
        let (loss, want) = one_step(&plan(name, layers, shape, Compression::None));
        for compression in [
            Compression::Hosvd {
                eps: 1.0,
                max_rank: 4096,
            },
            Compression::Svd {
                eps: 1.0,
                max_rank: 4096,
            },
        ] {
            let p = plan(name, layers, shape, compression);
            let compressed = p
                .steps
                .iter()
                .filter(|s| s.name.ends_with("/compress_input"))
                .count();
            assert!(compressed > 0, "{name} {compression:?}: nothing compressed");
            let (l, got) = one_step(&p);
            assert!(
                (l - loss).abs() <= 1e-6 * loss.abs(),
                "{name}: loss {l} vs {loss}"
            );
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>()
            );
            for (k, w) in &want {
                let g = &got[k];
                let err = g
                    .iter()
                    .zip(w)
                    .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    err <= 1e-4 * max_abs(w),
                    "{name} {compression:?}: {k} differs by {err} (scale {})",
                    max_abs(w)
                );
            }
        }
    }
}

#[test]
fn compression_shrinks_the_plan_and_reports_its_ranks() {
    let shape = [8, 3, 224, 224];
    let vanilla = plan("mobilenetv2", Layers::Last(4), &shape, Compression::None);
    let hosvd = plan(
        "mobilenetv2",
        Layers::Last(4),
        &shape,
        Compression::Hosvd {
            eps: 0.9,
            max_rank: 1,
        },
    );
    let (v, h) = (vanilla.memory.unwrap(), hosvd.memory.clone().unwrap());
    assert!(
        h.saved * 4 < v.saved,
        "saved {} vs vanilla {}",
        h.saved,
        v.saved
    );
    assert!(
        h.training_arena < v.training_arena,
        "training arena {} vs vanilla {}",
        h.training_arena,
        v.training_arena
    );

    let boundary = common::boundary(&hosvd, &varied(shape.iter().product()));
    let mut exec = Executor::new(hosvd, 2).unwrap();
    for _ in 0..2 {
        common::feed(&mut exec, &boundary, |i| (i % 10) as u32);
        assert!(exec.train_step().is_finite());
    }
    let stats = exec.compression_stats();
    assert_eq!(stats.len(), 4, "the inputs of the 4 trained convs");
    for s in stats {
        assert_eq!(s.modes, 4);
        assert_eq!(s.paper_bytes.count, 2);
        for m in 0..4 {
            assert!(s.rank_min[m] == 1 && s.rank_max[m] == 1, "{s:?}");
        }
        assert!(s.paper_bytes.max as usize <= s.planned_bytes);
        assert!(s.planned_bytes < s.vanilla_bytes);
    }
    // A cap of 1 at ε = 0.9: the ε rule wants more somewhere.
    assert!(stats.iter().any(|s| s.truncated > 0), "{stats:?}");
    assert_eq!(exec.paper_total().count, 2);
}

#[test]
fn gradient_filtering_trains() {
    let p = plan(
        "tiny_cnn",
        Layers::All,
        &[4, 3, 16, 16],
        Compression::GradFilter { patch: 2 },
    );
    assert!(
        p.steps
            .iter()
            .all(|s| !s.name.ends_with("/decompress_input"))
    );
    let boundary = common::boundary(&p, &vec![0.25; 4 * 3 * 16 * 16]);
    let mut exec = Executor::new(p, 30).unwrap();
    let mut losses = Vec::new();
    for _ in 0..30 {
        common::feed(&mut exec, &boundary, |i| (i % 2) as u32);
        losses.push(exec.train_step());
    }
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]) && losses[29] < 0.85 * losses[0],
        "loss did not fall: {losses:?}"
    );
}
