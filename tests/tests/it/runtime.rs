//! The runtime executes compiled plans: the frozen prefix on tract, the suffix on actc's
//! kernels, and training lowers the loss.

use crate::common;

use actc::Layers;
use actc_runtime::exec::Executor;
use actc_runtime::prefix::Prefix;

/// A fixed pseudo-random batch (LCG), so the test needs no data files.
fn batch(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn overfit(name: &str, layers: Layers, steps: usize) -> (f32, f32) {
    // AdamW, so this also runs the optimizer-state path (the gradient test uses SGD).
    let adamw = actc::Optimizer::AdamW(actc_runtime::ops::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.01,
    });
    let opts = actc::CompileOptions {
        lr: 0.01,
        optimizer: adamw,
        ..common::options(layers, None)
    };
    let plan = actc::compile_file(&common::model(name), &opts)
        .unwrap()
        .plan;
    let src = plan.source.clone().unwrap();
    let shape: Vec<usize> = src.input_shape.iter().map(|&d| d as usize).collect();
    let input = batch(shape.iter().product(), 7);
    let prefix =
        (!plan.prefix_onnx.is_empty()).then(|| Prefix::new(&plan.prefix_onnx, &shape).unwrap());
    let mut exec = Executor::new(plan, steps as u64).unwrap();
    let mut boundary: Vec<Vec<f32>> = Vec::new();
    match &prefix {
        Some(p) => p.run(&input, |_, v| boundary.push(v.to_vec())).unwrap(),
        None => boundary.push(input),
    }
    let mut losses = Vec::new();
    for _ in 0..steps {
        // The planner reuses feed memory once a step is past its last use: feed every step.
        for (i, b) in boundary.iter().enumerate() {
            exec.boundary_mut(i).copy_from_slice(b);
        }
        for (i, l) in exec.labels_mut().unwrap().iter_mut().enumerate() {
            *l = (i % 10) as u32;
        }
        losses.push(exec.train_step());
    }
    (losses[0], *losses.last().unwrap())
}

#[test]
fn training_lowers_the_loss_on_a_fixed_batch() {
    for (name, layers) in [
        ("tiny_cnn", Layers::All),
        ("tiny_cnn", Layers::Last(2)),
        ("tiny_mlp", Layers::All),
        ("tiny_matmul", Layers::Last(2)),
        ("resnet18", Layers::Last(4)),
        ("mcunet", Layers::Last(4)),
        ("tiny_decoder", Layers::Last(4)),
    ] {
        let (first, last) = overfit(name, layers, 30);
        assert!(
            first.is_finite() && last.is_finite(),
            "{name}: {first} -> {last}"
        );
        println!("{name} --layers {layers}: loss {first} -> {last}");
        assert!(
            last < 0.9 * first,
            "{name} --layers {layers}: loss {first} -> {last}"
        );
    }
}

/// The loss of one forward pass with the weights as given (lr 0 makes the step's updates
/// no-ops), fed with `boundary` and labels `i % 10`.
fn loss_with(plan: &actc_runtime::plan::Plan, boundary: &[Vec<f32>]) -> f32 {
    let mut p = plan.clone();
    p.hyper.as_mut().unwrap().lr = 0.0;
    let mut exec = Executor::new(p, 1).unwrap();
    common::feed(&mut exec, boundary, |i| (i % 10) as u32);
    exec.train_step()
}

/// Whole-plan gradient check: the gradient the plan's backward computes (read back from one
/// plain SGD step with lr 1: g = w − w′) against central differences of the loss, for a few
/// elements of every trainable weight.
fn check_plan_gradients(name: &str, layers: Layers) {
    let opts = actc::CompileOptions {
        lr: 1.0,
        ..common::options(layers, None)
    };
    let plan = actc::compile_file(&common::model(name), &opts)
        .unwrap()
        .plan;
    let shape = common::input_shape(&plan);
    let input = batch(shape.iter().product(), 11);
    let boundary = common::boundary(&plan, &input);
    let mut exec = Executor::new(plan.clone(), 1).unwrap();
    common::feed(&mut exec, &boundary, |i| (i % 10) as u32);
    exec.train_step();
    let after = exec.snapshot().unwrap();
    let f32s = |d: &[u8]| {
        d.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect::<Vec<_>>()
    };
    let trainable: Vec<usize> = (0..plan.weights.len())
        .filter(|&i| {
            plan.buffer(plan.weights[i].buffer).kind() == actc_runtime::plan::BufferKind::Trainable
        })
        .collect();
    assert!(!trainable.is_empty());
    let mut worst = 0.0f32;
    for &wi in &trainable {
        let w0 = f32s(&plan.weights[wi].data);
        let w1 = f32s(&after.weights[wi].data);
        let grad: Vec<f32> = w0.iter().zip(&w1).map(|(a, b)| a - b).collect();
        let scale = grad.iter().fold(0.0f32, |m, g| m.max(g.abs())).max(1e-3);
        // a few elements spread over the tensor, the largest-gradient one among them
        let mut picks: Vec<usize> = (0..4).map(|k| (k * 7919 + 13) % w0.len()).collect();
        picks.push(
            grad.iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .unwrap()
                .0,
        );
        for &e in &picks {
            // A kink (ReLU, LeakyReLU) within a step of a pre-activation the weight moves
            // makes that central difference wrong (a bias moves a whole feature column, so
            // it meets one more often): the smaller step then passes it by.
            let (err, fd) = [2e-3f32, 5e-4]
                .into_iter()
                .map(|eps| {
                    let mut plus = plan.clone();
                    let mut minus = plan.clone();
                    let set = |p: &mut actc_runtime::plan::Plan, v: f32| {
                        p.weights[wi].data[4 * e..4 * e + 4].copy_from_slice(&v.to_le_bytes());
                    };
                    set(&mut plus, w0[e] + eps);
                    set(&mut minus, w0[e] - eps);
                    let (lp, lm) = (loss_with(&plus, &boundary), loss_with(&minus, &boundary));
                    let fd = (lp - lm) / (2.0 * eps);
                    // What a central difference of an f32 loss can resolve: a few ulps of the
                    // loss over the step. Errors below that say nothing; above it, the
                    // backward is wrong.
                    let resolution = 8.0 * f32::EPSILON * lp.abs().max(lm.abs()) / (2.0 * eps);
                    (((fd - grad[e]).abs() - resolution).max(0.0) / scale, fd)
                })
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .expect("two steps");
            worst = worst.max(err);
            assert!(
                err < 2e-2,
                "{name} --layers {layers}: weight {} [{e}]: backward {} vs finite differences {fd} (scale {scale})",
                plan.weights[wi].source,
                grad[e]
            );
        }
    }
    println!("{name} --layers {layers}: worst relative gradient error {worst:.2e}");
}

#[test]
fn plan_gradients_match_finite_differences() {
    check_plan_gradients("tiny_cnn", Layers::All);
    check_plan_gradients("tiny_mlp", Layers::All);
    check_plan_gradients("tiny_matmul", Layers::All);
    check_plan_gradients("resnet18", Layers::Last(4));
    check_plan_gradients("mcunet", Layers::Last(3));
    check_plan_gradients("mobilenetv2_bn", Layers::Last(2));
    // ConvTranspose (output padding, grouped and dilated) and Resize (nearest, bilinear
    // half_pixel and align_corners) in the trained part
    check_plan_gradients("tiny_decoder", Layers::All);
}

/// `export` writes the trained weights back into the original graph: tract running the
/// exported model gives what the executor computes with the same weights.
fn check_export(name: &str, layers: Layers) {
    use actc_runtime::train::Session;
    let plan = compile(name, layers);
    let shape = common::input_shape(&plan);
    let input = batch(shape.iter().product(), 5);
    let boundary = common::boundary(&plan, &input);
    let mut session = Session::new(plan.clone(), 3).unwrap();
    let exec = session.executor();
    for _ in 0..3 {
        for (i, b) in boundary.iter().enumerate() {
            exec.boundary_mut(i).copy_from_slice(b);
        }
        for (i, l) in exec.labels_mut().unwrap().iter_mut().enumerate() {
            *l = (i % 10) as u32;
        }
        exec.train_step();
    }
    let trained = exec.snapshot().unwrap();
    for (i, b) in boundary.iter().enumerate() {
        exec.boundary_mut(i).copy_from_slice(b);
    }
    exec.forward();
    let mut ours = exec.output().to_vec();
    let model = actc::export(&plan, &trained).unwrap();
    let bytes = prost::Message::encode_to_vec(&model);
    let runner = Prefix::new(&bytes, &shape).unwrap();
    let mut theirs = Vec::new();
    runner
        .run(&input, |k, v| {
            if k == 0 {
                theirs = v.to_vec()
            }
        })
        .unwrap();
    // A model ending in Softmax trains on its logits; compare probabilities then.
    if theirs.iter().all(|&v| (0.0..=1.0).contains(&v))
        && ours.iter().any(|&v| !(0.0..=1.0).contains(&v))
    {
        let classes = *exec.output_shape().last().unwrap();
        for row in ours.chunks_mut(classes) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
            row.iter_mut().for_each(|v| *v = (*v - max).exp() / sum);
        }
    }
    let diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert_eq!(ours.len(), theirs.len());
    assert!(
        diff <= 1e-5,
        "{name} --layers {layers}: exported model differs by {diff}"
    );
    // The export keeps the model's shape computations, so it takes any batch: one sample
    // gives the first row.
    let one: Vec<usize> = [&[1][..], &shape[1..]].concat();
    let mut first = Vec::new();
    Prefix::new(&bytes, &one)
        .unwrap()
        .run(&input[..input.len() / shape[0]], |k, v| {
            if k == 0 {
                first = v.to_vec()
            }
        })
        .unwrap();
    let row = theirs.len() / shape[0];
    assert_eq!(first.len(), row, "{name}: the export at batch 1");
    let diff = first
        .iter()
        .zip(&theirs[..row])
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 1e-5,
        "{name}: the export at batch 1 differs by {diff}"
    );
    // and the weights did change
    assert_ne!(plan.weights, trained.weights);
}

fn compile(name: &str, layers: Layers) -> actc_runtime::plan::Plan {
    let opts = actc::CompileOptions {
        lr: 0.05,
        ..common::options(layers, None)
    };
    actc::compile_file(&common::model(name), &opts)
        .unwrap()
        .plan
}

#[test]
fn exported_models_compute_what_the_executor_computes() {
    check_export("tiny_cnn", Layers::Last(2));
    check_export("tiny_constants", Layers::All);
    check_export("tiny_matmul", Layers::Last(2));
    check_export("resnet18", Layers::Last(4));
    check_export("tiny_layernorm", Layers::Last(2));
    // Rewritten into LayerNormalization, written back as the pattern (opset 13 has no op).
    check_export("tiny_layernorm_decomposed", Layers::All);
    // Trained ConvTranspose weights, Resize nodes written as they were (sizes from a
    // shape computation, so any batch)
    check_export("tiny_decoder", Layers::All);
}

/// With the prefix cache, epochs after the first read the boundary tensors instead of
/// computing them, from memory or from its spill file, and every number comes out the same as
/// without it.
#[test]
fn the_prefix_cache_changes_the_time_only() {
    use actc_runtime::cache::PrefixCache;
    use actc_runtime::data::{Dataset, Preprocess};
    use actc_runtime::plan::Progress;
    use actc_runtime::train::{Metrics, Rows, Session, TrainRun};
    let opts = actc::CompileOptions {
        input: actc::InputShape {
            shape: Some(vec![16, 3, 32, 32]),
            batch: None,
        },
        ..common::options(Layers::Last(2), None)
    };
    let plan = actc::compile_file(&common::model("resnet18"), &opts)
        .unwrap()
        .plan;
    let data = Dataset::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/data/fashion-mnist"),
        None,
    )
    .unwrap();
    let prep = Preprocess::for_input(&[3, 32, 32], &data).unwrap();
    let (train, val): (Vec<usize>, Vec<usize>) = ((0..48).collect(), (48..72).collect());
    let run = |cache: PrefixCache| {
        let mut session = Session::new(plan.clone(), 9).unwrap();
        session.set_cache(cache);
        let mut epochs: Vec<(Metrics, Metrics, usize, usize, usize, usize)> = Vec::new();
        session
            .train(
                &TrainRun {
                    train: Rows {
                        data: &data,
                        rows: &train,
                    },
                    val: Rows {
                        data: &data,
                        rows: &val,
                    },
                    prep: &prep,
                    epochs: 3,
                    seed: 7,
                    checkpoint_every: 0,
                },
                Progress::default(),
                |event| {
                    if let actc_runtime::train::Event::Epoch {
                        train,
                        val,
                        session,
                        ..
                    } = event
                    {
                        let c = session.cache();
                        epochs.push((train, val, c.hits, c.misses, c.bytes(), c.disk_bytes()));
                        (c.hits, c.misses) = (0, 0);
                    }
                    Ok(())
                },
            )
            .unwrap();
        epochs
    };
    let plain = run(PrefixCache::new(0));
    let cached = run(PrefixCache::new(64 << 20));
    // 3 training batches and 2 validation batches (the last one padded) of 16: 72 samples.
    let sample = cached[1].4 / 72;
    assert!(sample > 0 && cached[1].4 == 72 * sample);
    let dir = std::env::temp_dir();
    let spilled = run(PrefixCache::new(10 * sample).spill_to(&dir, 1 << 20));
    let partly = run(PrefixCache::new(10 * sample).spill_to(&dir, 20 * sample));
    for run in [&cached, &spilled, &partly] {
        for (e, (p, c)) in plain.iter().zip(run).enumerate() {
            assert_eq!((&p.0, &p.1), (&c.0, &c.1), "epoch {}", e + 1);
        }
    }
    assert_eq!((cached[0].2, cached[0].3), (0, 80));
    assert_eq!((cached[1].2, cached[1].3), (80, 0));
    assert_eq!((plain[1].2, plain[1].3), (0, 80));
    assert_eq!(cached[1].5, 0);
    assert_eq!((spilled[1].2, spilled[1].3), (80, 0));
    assert_eq!((spilled[1].4, spilled[1].5), (10 * sample, 62 * sample));
    // 30 of the 72 samples kept: batches with any other sample go through the prefix.
    assert_eq!((partly[1].4, partly[1].5), (10 * sample, 20 * sample));
    assert_eq!(partly[1].2 + partly[1].3, 80);
    assert!(partly[1].3 > 0);
}

/// The frozen prefix on actc's kernels computes the boundary tensors tract computes from the
/// same ONNX nodes, for every bundled model with a conv prefix (BN unfolded, residual adds,
/// max pooling, depthwise convs at several plane sizes).
#[test]
fn the_own_prefix_computes_what_tract_computes() {
    use actc::PrefixRunner;
    for (name, layers, shape) in [
        ("tiny_cnn", 1, vec![2, 3, 16, 16]),
        ("resnet18", 4, vec![2, 3, 32, 32]),
        ("mcunet", 4, vec![2, 3, 48, 48]),
        ("mobilenetv2", 4, vec![2, 3, 64, 64]),
        ("mobilenetv2_bn", 2, vec![1, 3, 96, 96]),
        // ConvTranspose (output padding, grouped and dilated) and nearest Resize
        ("tiny_decoder", 1, vec![2, 3, 24, 20]),
    ] {
        let whole = shape[0];
        // The whole batch in one run of the prefix, whatever the arena (the chains fused
        // depend on the micro-batch's maps); then half of it in each of two lanes at once.
        for m in [whole, whole / 2].into_iter().filter(|&m| m > 0) {
            let lanes = whole / m;
            let opts = actc::CompileOptions {
                prefix: PrefixRunner::Actc,
                prefix_batch: Some(m),
                threads: 2,
                ..common::options(Layers::Last(layers), Some(shape.clone()))
            };
            let plan = actc::compile_file(&common::model(name), &opts)
                .unwrap()
                .plan;
            assert!(plan.prefix_steps > 0, "{name}");
            assert_eq!(plan.prefix_lanes.len() + 1, lanes, "{name}");
            if lanes == 1 {
                check_fusions(name, &plan);
            }
            let input = batch(shape.iter().product(), 3);
            let want = common::boundary(&plan, &input);
            let mut exec = Executor::new(plan, 1).unwrap();
            exec.run_prefix(&input, None);
            for (k, want) in want.iter().enumerate() {
                let got = exec.boundary(k);
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
                let worst = got
                    .iter()
                    .zip(want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    worst <= 1e-4 * scale,
                    "{name} in {lanes} lanes: boundary {k} differs from tract's by {worst} (scale {scale})"
                );
            }
        }
    }
}

/// `--prefix-precision int8`: the boundary tensors stay within a few percent of what tract
/// computes in floats (relative to their size; measured 2.0–2.4 % on these random inputs
/// through the deep conv prefixes, 0.06 % through MCUNet's, 0.5 % through the ViT's), the same whether the batch runs whole or in
/// micro-batches on two lanes (each pixel's inputs are quantized on their own), and the
/// training part trains on them.
#[test]
fn the_int8_prefix_stays_close_to_the_float_one() {
    use actc::PrefixRunner;
    // (model, layers, input, tolerance, whether the prefix runs on half the batch too)
    for (name, layers, shape, tolerance, halves) in [
        ("resnet18", Layers::Last(2), vec![4, 3, 32, 32], 0.03, true),
        ("mcunet", Layers::Last(2), vec![2, 3, 48, 48], 0.01, true),
        (
            "mobilenetv2",
            Layers::Last(2),
            vec![2, 3, 64, 64],
            0.03,
            true,
        ),
        (
            "mobilenetv2_bn",
            Layers::Last(2),
            vec![2, 3, 96, 96],
            0.03,
            true,
        ),
        // MatMuls (int8 as (Wᵀ·Xᵀ)ᵀ, per token); its prefix runs on the whole batch.
        (
            "tiny_vit",
            Layers::Blocks(1),
            vec![2, 3, 16, 16],
            0.03,
            false,
        ),
    ] {
        let whole = shape[0];
        let mut runs = Vec::new();
        for m in [whole, whole / 2].into_iter().take(1 + usize::from(halves)) {
            let opts = actc::CompileOptions {
                prefix: PrefixRunner::Actc,
                prefix_batch: Some(m),
                prefix_int8: true,
                threads: 2,
                ..common::options(layers, Some(shape.clone()))
            };
            let plan = actc::compile_file(&common::model(name), &opts)
                .unwrap()
                .plan;
            assert!(plan.has_int8(), "{name}");
            let input = batch(shape.iter().product(), 5);
            let want = common::boundary(&plan, &input);
            let mut exec = Executor::new(plan, 2).unwrap();
            exec.run_prefix(&input, None);
            let got: Vec<Vec<f32>> = (0..want.len()).map(|k| exec.boundary(k).to_vec()).collect();
            for (k, (got, want)) in got.iter().zip(&want).enumerate() {
                let err = got
                    .iter()
                    .zip(want)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f32>()
                    .sqrt();
                let size = want.iter().map(|v| v * v).sum::<f32>().sqrt();
                assert!(
                    err <= tolerance * size,
                    "{name}, micro-batch {m}: boundary {k} is {:.4} of its size off tract's",
                    err / size
                );
            }
            for _ in 0..2 {
                exec.run_prefix(&input, None);
                exec.labels_mut().unwrap().fill(1);
                let loss = exec.train_step();
                assert!(loss.is_finite(), "{name}: loss {loss}");
            }
            runs.push(got);
        }
        assert!(
            runs.windows(2).all(|r| r[0] == r[1]),
            "{name}: micro-batches changed the int8 prefix's output"
        );
    }
}

/// The fusions a whole-batch prefix of `name` must have.
fn check_fusions(name: &str, plan: &actc_runtime::plan::Plan) {
    // Every conv of these prefixes that feeds a Relu/Clip alone has it fused.
    let fused = plan.steps[..plan.prefix_steps as usize]
        .iter()
        .filter(|s| matches!(s.kind(), Some(actc_runtime::ops::Kind::ConvClip(_))))
        .count();
    assert!(
        fused > 0,
        "{name}: no conv in the prefix took its activation"
    );
    // The MobileNets' wide blocks run as fused chains (expand, depthwise, project, the
    // residual add): band by band, checked here against tract as well.
    let chains: Vec<bool> = plan.steps[..plan.prefix_steps as usize]
        .iter()
        .filter_map(|s| match s.kind() {
            Some(actc_runtime::ops::Kind::ConvChain(c)) => Some(c.residual),
            _ => None,
        })
        .collect();
    assert_eq!(
        !chains.is_empty(),
        name.starts_with("mobilenetv2"),
        "{name}"
    );
    assert_eq!(
        chains.contains(&true),
        name.starts_with("mobilenetv2"),
        "{name}"
    );
}

/// `--recompute attention` changes the memory only: the backward's copy of each attention's
/// probabilities is computed by the same kernels from the same tensors, so a step gives the
/// same loss and weights bit for bit, while the probabilities are no longer saved.
#[test]
fn recomputed_attention_trains_identically_on_less_memory() {
    let step = |recompute: bool| {
        let opts = actc::CompileOptions {
            lr: 0.05,
            recompute_attention: recompute,
            ..common::options(Layers::Blocks(2), None)
        };
        let plan = actc::compile_file(&common::model("tiny_vit"), &opts)
            .unwrap()
            .plan;
        let saved = plan.memory.as_ref().unwrap().saved;
        let shape = common::input_shape(&plan);
        let boundary = common::boundary(&plan, &batch(shape.iter().product(), 11));
        let mut exec = Executor::new(plan, 2).unwrap();
        let mut losses = Vec::new();
        for _ in 0..2 {
            common::feed(&mut exec, &boundary, |i| (i % 10) as u32);
            losses.push(exec.train_step());
        }
        let weights: Vec<(String, Vec<u8>)> = (exec.snapshot().unwrap().weights)
            .into_iter()
            .map(|w| (w.source, w.data))
            .collect();
        (losses, weights, saved)
    };
    let (kept, recomputed) = (step(false), step(true));
    assert_eq!(kept.0, recomputed.0);
    assert!(kept.1 == recomputed.1, "the trained weights differ");
    // Two blocks, each 8 × 2 heads × 17² probabilities.
    assert_eq!(kept.2 - recomputed.2, 2 * 8 * 2 * 17 * 17 * 4);
}

/// An output at weight w goes through what an MSE over several outputs builds (the
/// (batch, 5, 2) landmarks reshaped to rows, then concatenated): the plain MSE's step, its
/// loss and its weights' changes scaled by w.
#[test]
fn a_weighted_mse_scales_the_plain_ones_loss_and_update() {
    let step = |weights: Vec<f32>| {
        let opts = actc::CompileOptions {
            loss: actc_runtime::plan::LossKind::Mse,
            outputs: vec!["landmarks".into()],
            loss_weights: weights,
            lr: 1.0,
            ..common::options(Layers::Last(1), None)
        };
        let plan = actc::compile_file(&common::model("tiny_landmarks"), &opts)
            .unwrap()
            .plan;
        let input = batch(common::input_shape(&plan).iter().product(), 3);
        let boundary = common::boundary(&plan, &input);
        let mut exec = Executor::new(plan.clone(), 1).unwrap();
        let n = exec.targets_mut().unwrap().len();
        common::feed_targets(&mut exec, &boundary, &batch(n, 4));
        let loss = exec.train_step();
        let after = exec.snapshot().unwrap();
        let moved: Vec<f32> = plan
            .weights
            .iter()
            .zip(&after.weights)
            .flat_map(|(w0, w1)| {
                let f = |d: &[u8], i: usize| {
                    f32::from_le_bytes(d[4 * i..4 * i + 4].try_into().unwrap())
                };
                (0..w0.data.len() / 4).map(move |i| f(&w0.data, i) - f(&w1.data, i))
            })
            .collect();
        (loss, moved)
    };
    let (plain, plain_moved) = step(Vec::new());
    let (weighted, weighted_moved) = step(vec![2.5]);
    assert!(
        (weighted - 2.5 * plain).abs() <= 1e-5 * weighted,
        "{weighted} vs 2.5 × {plain}"
    );
    let scale = plain_moved.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    for (p, w) in plain_moved.iter().zip(&weighted_moved) {
        assert!(
            (w - 2.5 * p).abs() <= 1e-4 * 2.5 * scale,
            "{w} vs 2.5 × {p}"
        );
    }
}
