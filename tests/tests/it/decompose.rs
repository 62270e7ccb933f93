//! `actc decompose`: low-rank factors of a model's layers, checked against tract running the
//! original and the rewritten ONNX, and trained afterwards.

use crate::common::{self, model, tract_output};
use actc::{
    DecomposeOptions, InputShape, Layers, LowRankRequest, RankOptimization, RankRule, SpeedGoal,
};
use prost::Message;

fn decompose(
    name: &str,
    shape: &[usize],
    rule: RankRule,
    even_if_larger: bool,
) -> actc::Decomposed {
    decompose_timed(name, shape, rule, even_if_larger, None)
}

fn decompose_timed(
    name: &str,
    shape: &[usize],
    rule: RankRule,
    even_if_larger: bool,
    optimize: Option<RankOptimization>,
) -> actc::Decomposed {
    decompose_file(&model(name), shape, rule, even_if_larger, optimize)
}

/// Every layer that can be, the head included (the tests pin the rewrite of each op).
fn options(
    shape: &[usize],
    rule: RankRule,
    even_if_larger: bool,
    optimize: Option<RankOptimization>,
) -> DecomposeOptions {
    DecomposeOptions {
        layers: Layers::All,
        input: InputShape {
            shape: Some(shape.to_vec()),
            batch: None,
        },
        outputs: Vec::new(),
        request: LowRankRequest {
            rule,
            even_if_larger,
            optimize,
            keep: None,
            on_data: None,
        },
        include_head: true,
        calibration: None,
        distill: false,
        distill_maps: Default::default(),
    }
}

fn decompose_file(
    path: &std::path::Path,
    shape: &[usize],
    rule: RankRule,
    even_if_larger: bool,
    optimize: Option<RankOptimization>,
) -> actc::Decomposed {
    let opts = options(shape, rule, even_if_larger, optimize);
    let m = actc::load_onnx(path).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    actc::decompose_model(m, path.parent().unwrap(), name, &opts).unwrap()
}

fn noise(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0)
        .collect()
}

/// A batch of `shape` in [-1, 1), a different one per seed.
fn seeded_batch(shape: &[usize], seed: usize) -> Vec<f32> {
    (0..shape.iter().product::<usize>())
        .map(|i| (((i + seed * 7919) * 2654435761) % 2003) as f32 / 1001.5 - 1.0)
        .collect()
}

/// ‖got − want‖ / ‖want‖.
fn relative(got: &[f32], want: &[f32]) -> f32 {
    let diff: f32 = got.iter().zip(want).map(|(a, b)| (a - b).powi(2)).sum();
    (diff / want.iter().map(|v| v * v).sum::<f32>()).sqrt()
}

#[test]
fn full_energy_reproduces_the_model() {
    for (name, shape) in [
        ("tiny_mlp", vec![4, 64]),
        ("tiny_matmul", vec![4, 64]),
        ("tiny_cnn", vec![2, 3, 16, 16]),
        ("mcunet", vec![2, 3, 32, 32]),
        // dynamo's export: value_info with a symbolic batch in every intermediate shape.
        ("resnet18", vec![2, 3, 32, 32]),
    ] {
        let d = decompose(name, &shape, RankRule::Energy(1.0), true);
        assert!(d.layers.iter().any(|l| l.decomposed), "{name}");
        let input = noise(shape.iter().product());
        let want = tract_output(&std::fs::read(model(name)).unwrap(), &shape, &input);
        let got = tract_output(&d.model.encode_to_vec(), &shape, &input);
        let diff: f32 = got.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum();
        let norm: f32 = want.iter().map(|b| b * b).sum();
        let relative = (diff / norm).sqrt();
        assert!(relative < 1e-4, "{name}: relative difference {relative}");
    }
}

#[test]
fn factors_are_kept_only_where_they_are_cheaper() {
    // At full rank every dense factor pair is larger than the layer: nothing is rewritten.
    let d = decompose("tiny_mlp", &[4, 64], RankRule::Energy(1.0), false);
    assert!(
        d.layers
            .iter()
            .all(|l| !l.decomposed && l.kept_because.contains("not be smaller"))
    );
    let d = decompose("tiny_cnn", &[2, 3, 16, 16], RankRule::Ratio(0.5), false);
    for l in &d.layers {
        if l.decomposed {
            assert!(l.params.1 < l.params.0 && l.flops.1 < l.flops.0, "{l:?}");
        }
    }
    let grouped: Vec<_> = d
        .layers
        .iter()
        .filter(|l| l.kept_because.contains("grouped"))
        .collect();
    assert_eq!(grouped.len(), 2, "tiny_cnn's depthwise and grouped convs");
}

#[test]
fn a_decomposed_model_compiles_trains_and_exports() {
    let shape = [4, 3, 16, 16];
    let d = decompose("tiny_cnn", &shape, RankRule::Ratio(0.5), false);
    let opts = common::options(Layers::Last(2), Some(shape.to_vec()));
    let c = actc::compile_model(d.model.clone(), ".".as_ref(), "tiny_cnn_lr.onnx", &opts).unwrap();
    assert!(
        c.selection
            .trained
            .iter()
            .any(|l| l.node.contains("/lowrank"))
    );
    let plan = c.plan;
    let mut session = actc_runtime::train::Session::new(plan.clone(), 3).unwrap();
    let input = noise(shape.iter().product());
    let per = input.len() / shape[0];
    let mut losses = Vec::new();
    for _ in 0..3 {
        session
            .feed(
                &|r, dst: &mut [f32]| dst.copy_from_slice(&input[r * per..][..per]),
                |r| r as u32 % 10,
                None,
            )
            .unwrap();
        losses.push(session.executor().train_step());
    }
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(
        losses[2] < losses[0],
        "training lowers the loss: {losses:?}"
    );
    let trained = session.executor().snapshot().unwrap();
    let exported = actc::export(&plan, &trained).unwrap();
    assert_eq!(
        tract_output(&exported.encode_to_vec(), &shape, &input).len(),
        4 * 10
    );
}

/// The rewrite of every tiny model at a fixed rank and at a parameter ratio, as IR text
/// (the factors' names, kernels, shapes): a change to any of them shows here.
#[test]
fn rewrites_are_pinned() {
    for (name, shape) in [
        ("tiny_cnn", vec![2, 3, 16, 16]),
        ("tiny_mlp", vec![4, 64]),
        ("tiny_matmul", vec![4, 64]),
    ] {
        for (tag, rule) in [
            ("rank_2", RankRule::Fixed(2)),
            ("ratio_0.5", RankRule::Ratio(0.5)),
        ] {
            let d = decompose(name, &shape, rule, false);
            let report: Vec<String> = d
                .layers
                .iter()
                .map(|l| {
                    format!(
                        "{} {} {:?}/{:?} params {}→{} flops {}→{} {}",
                        l.node,
                        l.form,
                        l.ranks,
                        l.full_ranks,
                        l.params.0,
                        l.params.1,
                        l.flops.0,
                        l.flops.1,
                        l.kept_because
                    )
                })
                .collect();
            let text = format!("{}\n\n{}", report.join("\n"), d.ir);
            insta::assert_snapshot!(format!("{name}__{tag}"), text);
        }
    }
}

/// `--layers N` means the same layers before and after decomposing: a layer's factors count
/// as the one layer they came from, and all of them train.
#[test]
fn layers_count_the_same_after_decomposing() {
    let shape = vec![2, 3, 16, 16];
    let d = decompose("tiny_cnn", &shape, RankRule::Fixed(2), false);
    let stem = |node: &str| node.split("/lowrank").next().unwrap().to_string();
    for n in 1..=6 {
        let opts = common::options(Layers::Last(n), Some(shape.clone()));
        let before = actc::compile_file(&model("tiny_cnn"), &opts)
            .unwrap()
            .selection;
        let after = actc::compile_model(d.model.clone(), ".".as_ref(), "lr.onnx", &opts)
            .unwrap()
            .selection;
        assert_eq!(before.total_layers, after.total_layers);
        let names = |s: &actc::Selection| {
            let mut v: Vec<(String, usize)> = s
                .trained
                .iter()
                .map(|l| (stem(&l.node), l.from_output))
                .collect();
            v.dedup();
            v
        };
        assert_eq!(names(&before), names(&after), "--layers {n}");
    }
}

/// `--optimize-ranks`: every candidate is timed, the pick is the fastest within the window
/// below the estimate (never slower than the estimate, as measured in the same run), and the
/// layer stays as it is only when that measured fastest.
#[test]
fn ranks_are_chosen_by_measured_speed() {
    let shape = [2, 3, 16, 16];
    let rule = RankRule::Ratio(0.5);
    let estimate = decompose("tiny_cnn", &shape, rule, false);
    for goal in [SpeedGoal::Train, SpeedGoal::Infer] {
        let opt = RankOptimization {
            goal,
            window: 0.25,
            rounds: 3,
        };
        let d = decompose_timed("tiny_cnn", &shape, rule, false, Some(opt));
        let mut timed = 0;
        for (l, e) in d.layers.iter().zip(&estimate.layers) {
            assert_eq!(l.node, e.node);
            if l.timings.is_empty() {
                assert!(
                    !e.decomposed,
                    "{}: a decomposed layer was not timed",
                    l.node
                );
                continue;
            }
            timed += 1;
            let chosen: Vec<_> = l.timings.iter().filter(|t| t.chosen).collect();
            assert_eq!(chosen.len(), 1, "{}", l.node);
            let at_estimate = l.timings.iter().find(|t| t.ranks == e.ranks).unwrap();
            assert!(
                chosen[0].ms <= at_estimate.ms,
                "{}: {:?}",
                l.node,
                l.timings
            );
            for t in &l.timings[1..] {
                for (&r, &est) in t.ranks.iter().zip(&e.ranks) {
                    assert!(r as f64 >= est as f64 * 0.75, "{}: {:?}", l.node, t.ranks);
                }
            }
            let as_is = &l.timings[0];
            assert!(as_is.ranks.is_empty());
            if l.decomposed {
                assert_eq!(chosen[0].ranks, l.ranks, "{}", l.node);
                assert!(as_is.ms > chosen[0].ms, "{}: {:?}", l.node, l.timings);
            } else {
                assert!(as_is.chosen && l.kept_because.contains("measured faster"));
            }
        }
        assert!(timed >= 2, "{timed} layers timed");
        let input = noise(shape.iter().product());
        let out = tract_output(&d.model.encode_to_vec(), &shape, &input);
        assert_eq!(out.len(), 2 * 10);
    }
}

/// Decomposing a decomposed model lowers its ranks: each layer's factors are multiplied
/// back into one weight and factored afresh (no factors of factors). At full energy the
/// second decomposition computes what the first did.
#[test]
fn decomposing_again_lowers_the_ranks() {
    for (name, shape) in [
        ("tiny_cnn", vec![2, 3, 16, 16]),
        ("tiny_mlp", vec![4, 64]),
        ("tiny_matmul", vec![4, 64]),
    ] {
        let first = decompose(name, &shape, RankRule::Ratio(0.5), true);
        let dir = common::scratch(&format!("decompose_again_{name}"));
        let path = dir.join(format!("{name}.onnx"));
        std::fs::write(&path, first.model.encode_to_vec()).unwrap();
        let again = |rule| decompose_file(&path, &shape, rule, true, None);
        let same = again(RankRule::Energy(1.0));
        assert!(
            !same.ir.contains("lowrank0/lowrank"),
            "{name}: factors of factors"
        );
        let input = noise(shape.iter().product());
        let want = tract_output(&first.model.encode_to_vec(), &shape, &input);
        let got = tract_output(&same.model.encode_to_vec(), &shape, &input);
        let diff: f32 = got.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum();
        let norm: f32 = want.iter().map(|b| b * b).sum();
        assert!(
            (diff / norm).sqrt() < 1e-4,
            "{name}: {}",
            (diff / norm).sqrt()
        );
        // The written models hold the factors the reports describe.
        let weights = |d: &actc::Decomposed| -> i64 {
            let g = d.model.graph.as_ref().unwrap();
            let model: i64 = g
                .initializer
                .iter()
                .map(|t| t.dims.iter().product::<i64>())
                .sum();
            let layers: usize = d.layers.iter().map(|l| l.params.1).sum();
            model - layers as i64
        };
        assert_eq!(weights(&same), weights(&first), "{name}");
        let lower = again(RankRule::Ratio(0.25));
        assert_eq!(weights(&lower), weights(&first), "{name}");
        assert!(
            lower.layers.iter().map(|l| l.params.1).sum::<usize>()
                < first.layers.iter().map(|l| l.params.1).sum::<usize>(),
            "{name}: the second decomposition is smaller"
        );
        for (a, b) in first.layers.iter().zip(&lower.layers) {
            assert_eq!(a.node, b.node, "{name}");
            if a.decomposed && b.decomposed {
                assert_eq!(a.full_ranks, b.full_ranks, "{name}: {}", a.node);
                assert!(
                    b.ranks.iter().zip(&a.ranks).all(|(b, a)| b <= a),
                    "{name}: {} {:?} → {:?}",
                    a.node,
                    a.ranks,
                    b.ranks
                );
            }
        }
    }
}

/// A decomposed MobileNetV2's frozen prefix runs each block as one fused chain that takes
/// both factors of its 1×1 convs (so it still ends on the block's narrow map and keeps the
/// residual add), and gives the boundary tract gives on the decomposed model.
#[test]
fn decomposed_blocks_fuse_into_whole_chains() {
    let shape = [2, 3, 96, 96];
    let d = decompose("mobilenetv2", &shape, RankRule::Ratio(0.5), false);
    let opts = actc::CompileOptions {
        prefix: actc::PrefixRunner::Actc,
        prefix_batch: Some(2),
        threads: 2,
        ..common::options(Layers::Last(1), Some(shape.to_vec()))
    };
    let plan = actc::compile_model(d.model, ".".as_ref(), "mobilenetv2_lr.onnx", &opts)
        .unwrap()
        .plan;
    let chains: Vec<(usize, bool)> = plan.steps[..plan.prefix_steps as usize]
        .iter()
        .filter_map(|s| match s.kind() {
            Some(actc_runtime::ops::Kind::ConvChain(c)) => Some((c.stages.len(), c.residual)),
            _ => None,
        })
        .collect();
    assert!(
        chains.contains(&(5, true)),
        "an expand pair, the depthwise, a project pair and the residual add: {chains:?}"
    );
    let input = noise(shape.iter().product());
    let want = common::boundary(&plan, &input);
    let mut exec = actc_runtime::exec::Executor::new(plan, 2).unwrap();
    exec.run_prefix(&input, None);
    let got = exec.boundary(0);
    let scale = want[0].iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(&want[0])
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-4 * scale, "{worst} off tract's (scale {scale})");
}

/// The model's head (the layer nearest the output) stays whole unless asked: tiny_cnn's
/// classifier is kept, saying why, while its convs are factored.
#[test]
fn the_head_stays_whole_unless_asked() {
    let path = model("tiny_cnn");
    for include_head in [false, true] {
        let opts = DecomposeOptions {
            include_head,
            ..options(&[2, 3, 16, 16], RankRule::Ratio(0.5), false, None)
        };
        let m = actc::load_onnx(&path).unwrap();
        let d = actc::decompose_model(m, path.parent().unwrap(), "tiny_cnn", &opts).unwrap();
        let head = d.layers.iter().find(|l| l.op == "Gemm").unwrap();
        assert_eq!(head.decomposed, include_head, "{head:?}");
        assert_eq!(
            head.kept_because.contains("--include-head"),
            !include_head,
            "{head:?}"
        );
        assert!(d.layers.iter().any(|l| l.op == "Conv" && l.decomposed));
    }
}

/// With calibration data, 1×1 convs and Gemms are factored to keep their outputs on it: at
/// the same ranks, MobileNetV2's last layers give outputs much closer to the original's on
/// inputs the calibration did not see than the factors of the weights alone.
#[test]
fn factors_on_data_keep_the_output() {
    let shape = [2, 3, 64, 64];
    let batch = move |seed: usize| seeded_batch(&shape, seed);
    let path = model("mobilenetv2");
    let decomposed = |on_data: bool| {
        let calibration = on_data.then(|| {
            actc::CalibrationData(std::sync::Arc::new(move |s: &[usize]| {
                assert_eq!(s, shape);
                Ok((1..=8).map(batch).collect())
            }))
        });
        let opts = DecomposeOptions {
            layers: Layers::Last(4),
            calibration,
            ..options(&shape, RankRule::Ratio(0.5), false, None)
        };
        let m = actc::load_onnx(&path).unwrap();
        actc::decompose_model(m, path.parent().unwrap(), "mobilenetv2", &opts).unwrap()
    };
    let (weights, data) = (decomposed(false), decomposed(true));
    let ranks = |d: &actc::Decomposed| -> Vec<Vec<usize>> {
        d.layers.iter().map(|l| l.ranks.clone()).collect()
    };
    assert_eq!(ranks(&weights), ranks(&data), "the same ranks");
    let unseen = batch(0);
    let want = tract_output(&std::fs::read(&path).unwrap(), &shape, &unseen);
    let off = |d: &actc::Decomposed| {
        relative(
            &tract_output(&d.model.encode_to_vec(), &shape, &unseen),
            &want,
        )
    };
    let (plain, on_data) = (off(&weights), off(&data));
    assert!(
        on_data < 0.5 * plain,
        "output off by {on_data} with calibration, {plain} without"
    );
}

/// `--distill` trains every layer of a model decomposed whole towards the original's last
/// feature map and a map named by `--distill-maps` on the calibration inputs: the held-out
/// error falls, and so does the difference of the written model's outputs from the
/// original's on inputs it never saw.
#[test]
fn distilling_brings_the_features_back() {
    let shape = [8, 3, 32, 32];
    let batch = move |seed: usize| seeded_batch(&shape, seed);
    let path = model("mobilenetv2");
    let opts = DecomposeOptions {
        calibration: Some(actc::CalibrationData(std::sync::Arc::new(
            move |_: &[usize]| Ok((1..=12).map(batch).collect()),
        ))),
        distill: true,
        distill_maps: actc::DistillMaps::Named(vec!["/features/features.13/Add_output_0".into()]),
        include_head: false,
        ..options(&shape, RankRule::Ratio(0.5), false, None)
    };
    let m = actc::load_onnx(&path).unwrap();
    let mut d = actc::decompose_model(m, path.parent().unwrap(), "mobilenetv2", &opts).unwrap();
    let teacher = d.teacher.as_ref().expect("asked for");
    let teacher_maps = teacher.outputs.clone();
    assert_eq!(
        teacher.outputs,
        [
            "/features/features.13/Add_output_0",
            "/features/features.18/features.18.2/Clip_output_0"
        ]
    );
    assert_eq!(teacher.sizes, [96 * 2 * 2, 1280]);
    let undistilled = d.model.encode_to_vec();
    let o = actc::driver::distill::Distill {
        epochs: 4,
        lr: 0.0003,
        quiet: true,
    };
    let t = actc::driver::distill::distill(&mut d, &o, path.parent().unwrap()).unwrap();
    assert_eq!((t.samples, t.held_out), (96, 19));
    assert_eq!(t.maps, teacher_maps);
    assert!(t.after < 0.7 * t.before, "{} → {}", t.before, t.after);
    let outputs: Vec<_> = d.model.graph.as_ref().unwrap().output.iter().collect();
    assert_eq!(outputs.len(), 1, "the features' output is taken off again");
    let unseen = batch(0);
    let want = tract_output(&std::fs::read(&path).unwrap(), &shape, &unseen);
    let off = |bytes: &[u8]| relative(&tract_output(bytes, &shape, &unseen), &want);
    let (before, after) = (off(&undistilled), off(&d.model.encode_to_vec()));
    assert!(after < 0.8 * before, "output off by {before} → {after}");
}

/// Without `--distill-maps`, `--distill` matches each resolution's last narrowest map (the
/// stage outputs) where a factored layer computes into it, then the last feature map.
#[test]
fn distill_maps_default_to_the_stage_outputs() {
    let teacher = |name: &str, side: usize, layers: Layers| {
        let shape = [8, 3, side, side];
        let opts = DecomposeOptions {
            layers,
            calibration: Some(actc::CalibrationData(std::sync::Arc::new(
                move |_: &[usize]| Ok(vec![seeded_batch(&shape, 1)]),
            ))),
            distill: true,
            include_head: false,
            ..options(&shape, RankRule::Ratio(0.5), false, None)
        };
        let path = model(name);
        let m = actc::load_onnx(&path).unwrap();
        let d = actc::decompose_model(m, path.parent().unwrap(), name, &opts).unwrap();
        d.teacher.expect("asked for").outputs
    };
    let last = "/features/features.18/features.18.2/Clip_output_0";
    // At 32², 16² 8² 4² 2² 1²: the 1² maps have nothing to match beyond the last one.
    assert_eq!(
        teacher("mobilenetv2", 32, Layers::All),
        [
            "/features/features.1/conv/conv.1/Conv_output_0",
            "/features/features.3/Add_output_0",
            "/features/features.6/Add_output_0",
            "/features/features.10/Add_output_0",
            last
        ]
    );
    // Blocks 7–18 factored: the maps before block 7 are the original's.
    assert_eq!(
        teacher("mobilenetv2", 32, Layers::Last(34)),
        ["/features/features.10/Add_output_0", last]
    );
    // ResNet-18 at 64²: the stem's and each stage's last block output; at 2² not the final
    // block's Add, which only the last ReLU separates from the last map.
    assert_eq!(
        teacher("resnet18", 64, Layers::All),
        ["relu", "relu_4", "relu_8", "relu_12", "relu_14", "relu_16"]
    );
}
