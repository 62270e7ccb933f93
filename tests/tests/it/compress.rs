//! Activation compression end to end: the compressed plans compute what the method says.
//! HOSVD and SVD with ε = 1 keep every singular vector, so their gradients equal those of the
//! uncompressed plan; smaller ε and caps shrink the planned memory and are reported.

use crate::common;

use actc::{CompileOptions, Compression, HosvdRanks, Layers, compile_file};
use actc_runtime::exec::Executor;
use actc_runtime::plan::Plan;
use std::collections::BTreeMap;

/// A plan that keeps its weight gradients in buffers, which [`one_step`] reads.
fn plan(name: &str, layers: Layers, shape: &[usize], compression: Compression) -> Plan {
    let opts = CompileOptions {
        compression,
        keep_gradients: true,
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
                ranks: HosvdRanks::Eps,
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
            assert_same_step(
                &format!("{name} {compression:?}"),
                (loss, &want),
                one_step(&p),
            );
        }
    }
}

/// The loss and every weight gradient of `got` match `want`'s (gradients to 1e-4 of their
/// largest entry).
fn assert_same_step(
    what: &str,
    (loss, want): (f32, &BTreeMap<String, Vec<f32>>),
    (l, got): (f32, BTreeMap<String, Vec<f32>>),
) {
    assert!(
        (l - loss).abs() <= 1e-6 * loss.abs(),
        "{what}: loss {l} vs {loss}"
    );
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, w) in want {
        let err = got[k]
            .iter()
            .zip(w)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-4 * max_abs(w),
            "{what}: {k} differs by {err} (scale {})",
            max_abs(w)
        );
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
            ranks: HosvdRanks::Eps,
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

fn fashion_mnist() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/data/fashion-mnist")
}

/// `--budget`: calibration picks ranks whose compressed inputs fit the budget, a larger
/// budget buys a smaller gradient error, and the plan reserves exactly what was chosen and
/// trains at those ranks.
#[test]
fn a_budget_fixes_ranks_that_fit_it() {
    use actc::driver::budget;
    use actc_runtime::ops::Kind;
    let shape = vec![8, 3, 32, 32];
    let opts = CompileOptions {
        compression: Compression::Hosvd {
            eps: 0.8,
            max_rank: 32,
            ranks: HosvdRanks::Eps,
        },
        ..common::options(Layers::Last(4), Some(shape.clone()))
    };
    let model = common::model("mobilenetv2");
    let prep = actc::driver::data::DataOptions::default();
    let mut last_error = f64::INFINITY;
    for budget in [20_000, 200_000] {
        let choices = budget::calibrate(&model, &opts, budget, &fashion_mnist(), &prep).unwrap();
        assert_eq!(choices.len(), 4, "the inputs of the 4 trained convs");
        let total: usize = choices.iter().map(|c| c.choice.bytes).sum();
        assert!(total <= budget, "{total} B over the budget {budget}");
        let error: f64 = choices.iter().map(|c| c.choice.error).sum();
        assert!(
            error < last_error,
            "budget {budget}: error {error} vs {last_error}"
        );
        last_error = error;

        let fixed = CompileOptions {
            fixed_ranks: budget::fixed_ranks(&choices),
            ..opts.clone()
        };
        let plan = compile_file(&model, &fixed).unwrap().plan;
        let reserved: u64 = plan
            .steps
            .iter()
            .filter(|s| matches!(s.kind(), Some(Kind::Compress(_))))
            .map(|s| plan.buffer(s.outputs[0]).bytes + plan.buffer(s.inputs[1]).bytes)
            .sum();
        assert_eq!(
            reserved as usize, total,
            "the plan holds what calibration counted"
        );

        let boundary = common::boundary(&plan, &varied(shape.iter().product()));
        let mut exec = Executor::new(plan, 3).unwrap();
        for _ in 0..3 {
            common::feed(&mut exec, &boundary, |i| (i % 10) as u32);
            assert!(exec.train_step().is_finite());
        }
        for (s, c) in exec.compression_stats().iter().zip(&choices) {
            assert_eq!(s.layer, c.layer);
            for m in 0..4 {
                assert_eq!(
                    s.rank_min[m] as u32, c.choice.ranks[m],
                    "{} mode {m}",
                    s.layer
                );
                assert_eq!(
                    s.rank_max[m] as u32, c.choice.ranks[m],
                    "{} mode {m}",
                    s.layer
                );
            }
            assert_eq!(s.truncated, 0);
        }
    }
}

/// Fixed ranks as large as the modes keep everything: the uncompressed gradients.
#[test]
fn full_fixed_ranks_give_the_uncompressed_gradients() {
    use actc::FixedRanks;
    let (name, layers, shape) = CASES[1];
    let hosvd = Compression::Hosvd {
        eps: 0.8,
        max_rank: 4096,
        ranks: HosvdRanks::Eps,
    };
    let capped = plan(name, layers, shape, hosvd);
    let fixed_ranks = capped
        .steps
        .iter()
        .filter_map(|s| match s.kind() {
            Some(actc_runtime::ops::Kind::Compress(c)) => Some((
                s.origin.clone(),
                FixedRanks {
                    eps: 1.0,
                    ranks: c.shape.iter().map(|&d| d as u32).collect(),
                },
            )),
            _ => None,
        })
        .collect();
    let opts = CompileOptions {
        compression: hosvd,
        fixed_ranks,
        keep_gradients: true,
        ..common::options(layers, Some(shape.to_vec()))
    };
    let fixed = compile_file(&common::model(name), &opts).unwrap().plan;
    let (loss, want) = one_step(&plan(name, layers, shape, Compression::None));
    assert_same_step("full fixed ranks", (loss, &want), one_step(&fixed));
}

/// A weight gradient from a compressed input stored straight into its SGD update (the
/// default plan) moves the weights as the held gradient and a separate update do, over
/// steps that store into the momentum buffer with dampening (alpha 0.9) and without
/// (beta 0 on the first step, 0.9 after). Weight decay is the update's own (optim tests).
#[test]
fn fused_compressed_updates_match_held_ones() {
    use actc::Optimizer;
    use actc_runtime::ops::{self, Kind};
    let sgd = Optimizer::Sgd(ops::Sgd {
        momentum: 0.9,
        dampening: 0.1,
        nesterov: false,
        weight_decay: 0.0,
        lr_scale: None,
    });
    let hosvd = Compression::Hosvd {
        eps: 0.8,
        max_rank: 4096,
        ranks: HosvdRanks::Eps,
    };
    // MobileNetV2's 1×1 and its classifier; tiny_constants' grouped, dilated and padded convs
    let cases: [(&str, Layers, &[usize], Compression); 3] = [
        ("mobilenetv2", Layers::Last(4), &[4, 3, 32, 32], hosvd),
        (
            "mobilenetv2",
            Layers::Last(4),
            &[4, 3, 32, 32],
            Compression::GradFilter { patch: 2 },
        ),
        ("tiny_constants", Layers::Last(4), &[2, 3, 16, 16], hosvd),
    ];
    for (name, layers, shape, compression) in cases {
        let opts = |keep_gradients| CompileOptions {
            compression,
            keep_gradients,
            optimizer: sgd.clone(),
            lr: 0.1,
            ..common::options(layers, Some(shape.to_vec()))
        };
        let weights_after = |keep_gradients| {
            let p = compile_file(&common::model(name), &opts(keep_gradients))
                .unwrap()
                .plan;
            let fused = p
                .steps
                .iter()
                .filter(|s| match s.kind() {
                    Some(Kind::ConvBackwardWeightSgd(cs)) => cs.compressor.is_some(),
                    _ => false,
                })
                .count();
            let n: usize = shape.iter().product();
            let boundary = common::boundary(&p, &varied(n));
            let mut exec = Executor::new(p, 3).unwrap();
            for _ in 0..3 {
                common::feed(&mut exec, &boundary, |i| (i % 3) as u32);
                exec.train_step();
            }
            (fused, exec.snapshot().unwrap().weights)
        };
        let (none, held) = weights_after(true);
        let (fused, got) = weights_after(false);
        assert_eq!(
            none, 0,
            "{compression:?}: a plan that keeps gradients fused"
        );
        assert!(
            fused >= 2,
            "{compression:?}: {fused} fused compressed updates"
        );
        for (held, fused) in held.iter().zip(&got) {
            let floats = |b: &[u8]| -> Vec<f32> {
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            };
            let (h, g) = (floats(&held.data), floats(&fused.data));
            let err = h
                .iter()
                .zip(&g)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= 1e-5 * max_abs(&h),
                "{name} {compression:?}: {} moved differently, by {err} (scale {})",
                fused.source,
                max_abs(&h)
            );
        }
    }
}

/// MobileNetV2 at 8×3×32² with the default HOSVD: four compressions of 1×1 maps, which the
/// schedule pairs.
fn paired_plan() -> Plan {
    plan(
        "mobilenetv2",
        Layers::Last(4),
        &[8, 3, 32, 32],
        Compression::Hosvd {
            eps: 0.95,
            max_rank: 32,
            ranks: HosvdRanks::Auto,
        },
    )
}

/// Compressions of small maps run two at a time, one per thread (`Step::beside_next`): the
/// losses, the ranks kept and the weights after a few updates are those of the same plan run
/// one step after the other, to the bit (each compression's arithmetic is its own; only the
/// thread that runs it differs).
#[test]
fn compressions_side_by_side_match_one_after_the_other() {
    let paired = paired_plan();
    let pairs = paired.steps.iter().filter(|s| s.beside_next).count();
    assert_eq!(pairs, 2, "the four 1×1 maps' compressions, in two pairs");
    let mut apart = paired.clone();
    apart.steps.iter_mut().for_each(|s| s.beside_next = false);
    let boundary = common::boundary(&paired, &varied(8 * 3 * 32 * 32));
    let run = |plan: &Plan| {
        actc_runtime::threads::set_threads(2);
        let mut exec = Executor::new(plan.clone(), 4).unwrap();
        let losses: Vec<u32> = (0..4)
            .map(|_| {
                common::feed(&mut exec, &boundary, |i| (i % 10) as u32);
                exec.train_step().to_bits()
            })
            .collect();
        let weights: Vec<Vec<u32>> = exec
            .trainable()
            .map(|(_, _, w)| w.iter().map(|v| v.to_bits()).collect())
            .collect();
        (losses, format!("{:?}", exec.compression_stats()), weights)
    };
    assert!(run(&paired) == run(&apart));
}

/// A plan that pairs steps the runtime cannot run side by side is refused when loaded: a
/// pair that is not two compressions, or whose steps share a buffer one of them writes.
#[test]
fn a_pair_of_steps_that_could_clash_is_refused() {
    let paired = paired_plan();
    let first = paired.steps.iter().position(|s| s.beside_next).unwrap();
    let refused = |plan: Plan| match Executor::new(plan, 1) {
        Ok(_) => panic!("a clashing pair was accepted"),
        Err(e) => e.to_string(),
    };
    let mut not_compressions = paired.clone();
    let conv = (paired.steps.iter())
        .position(|s| s.name.ends_with("features.17/conv/conv.0/conv.0.0/Conv"))
        .unwrap();
    not_compressions.steps[conv].beside_next = true;
    assert!(refused(not_compressions).contains("only two compressions run side by side"));
    let mut shared = paired.clone();
    // The first compression needs the smaller scratch: it fits in the second one's.
    shared.steps[first].workspace = shared.steps[first + 1].workspace;
    let e = refused(shared);
    assert!(e.contains("which runs beside it"), "{e}");
    let mut chained = paired;
    chained.steps[first + 1].beside_next = true;
    assert!(refused(chained).contains("side by side"));
}
