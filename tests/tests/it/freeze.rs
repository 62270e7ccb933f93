//! Training the factors of decomposed layers. `compile --freeze-schedule`: the factors of
//! each decomposed layer train in turns, checked against the same plan without the schedule
//! (in a turn, the training factors and every layer that is not in factors take exactly the
//! unfrozen plan's update, the others keep their weights). `--factor-lr`: the factors'
//! updates at their own multiple of the plan's rate.

use crate::common;

use actc::{DecomposeOptions, FactorLr, InputShape, Layers, LowRankRequest, RankRule, Rotate};
use actc_runtime::exec::Executor;
use actc_runtime::plan::{BufferKind, Plan};
use std::collections::BTreeMap;

/// tiny_cnn with every layer it can in factors (two 1×1 convs, a 3×3 conv in three, the
/// classifier in two).
fn decomposed() -> actc::ModelProto {
    let opts = DecomposeOptions {
        layers: Layers::All,
        input: InputShape {
            shape: Some(vec![4, 3, 16, 16]),
            batch: None,
        },
        outputs: Vec::new(),
        request: LowRankRequest {
            rule: RankRule::Energy(0.95),
            even_if_larger: true,
            optimize: None,
            keep: None,
            on_data: None,
        },
        include_head: true,
        calibration: None,
        distill: false,
        distill_maps: Default::default(),
    };
    let path = common::model("tiny_cnn");
    let m = actc::load_onnx(&path).unwrap();
    actc::decompose_model(m, path.parent().unwrap(), "tiny_cnn", &opts)
        .unwrap()
        .model
}

fn compile(freeze: Option<Rotate>, clip: Option<f32>) -> Result<Plan, String> {
    compile_at(freeze, clip, FactorLr::Scale(1.0))
}

/// The turns change which factors train, not their rate: both plans train the factors at
/// the plan's rate here (`auto` would scale a factor training alone differently).
fn compile_at(
    freeze: Option<Rotate>,
    clip: Option<f32>,
    factor_lr: FactorLr,
) -> Result<Plan, String> {
    let opts = actc::CompileOptions {
        lr: 0.05,
        freeze,
        clip_grad_norm: clip,
        factor_lr,
        ..common::options(Layers::Last(2), Some(vec![4, 3, 16, 16]))
    };
    let dir = common::model("tiny_cnn");
    actc::compile_model(decomposed(), dir.parent().unwrap(), "dc.onnx", &opts)
        .map(|c| c.plan)
        .map_err(|e| e.0)
}

fn feed(exec: &mut Executor, step: usize) {
    for b in 0..exec.boundary_shapes().len() {
        for (i, v) in exec.boundary_mut(b).iter_mut().enumerate() {
            *v = ((i * 7919 + step * 131 + b * 17) % 2003) as f32 / 1001.5 - 1.0;
        }
    }
    for (i, l) in exec.labels_mut().unwrap().iter_mut().enumerate() {
        *l = ((i + step) % 10) as u32;
    }
}

fn weights(exec: &mut Executor) -> BTreeMap<String, Vec<u8>> {
    let plan = exec.snapshot().unwrap();
    plan.weights
        .into_iter()
        .map(|w| (w.source, w.data))
        .collect()
}

/// The weight names of the layers (nodes) in `nodes`.
fn weights_of(plan: &Plan, nodes: &[String]) -> Vec<String> {
    plan.layers
        .iter()
        .filter(|l| nodes.contains(&l.node))
        .flat_map(|l| &l.weights)
        .filter_map(|&b| plan.weights.iter().find(|w| w.buffer == b))
        .map(|w| w.source.clone())
        .collect()
}

#[test]
fn factors_train_in_turns() {
    let free = compile(None, None).unwrap();
    let plan = compile(Some(Rotate::Steps(1)), None).unwrap();
    let freeze = plan.freeze.clone().expect("a freeze schedule");
    assert_eq!(freeze.turns.len(), 3, "the 3×3 conv's three factors");
    let factors: Vec<String> = plan
        .layers
        .iter()
        .filter(|l| l.node.contains("/lowrank"))
        .map(|l| l.node.clone())
        .collect();
    assert!(factors.len() >= 7, "{factors:?}");
    let factor_weights = weights_of(&plan, &factors);
    let trainable: Vec<&str> = plan
        .weights
        .iter()
        .filter(|w| plan.buffer(w.buffer).kind() == BufferKind::Trainable)
        .map(|w| w.source.as_str())
        .collect();

    let mut a = Executor::new(free.clone(), 3).unwrap();
    let mut b = Executor::new(plan.clone(), 3).unwrap();
    let start = weights(&mut b);
    assert_eq!(weights(&mut a), start);
    for (t, turn) in freeze.turns.iter().enumerate() {
        assert!(!turn.skip.is_empty(), "turn {t} skips nothing");
        assert_eq!(b.turn(), Some(t));
        let before = weights(&mut b);
        // The unfrozen plan from the same weights: what a training factor must become.
        let mut unfrozen = free.clone();
        for w in &mut unfrozen.weights {
            w.data = before[&w.source].clone();
        }
        let mut reference = Executor::new(unfrozen, 3).unwrap();
        feed(&mut reference, t);
        feed(&mut b, t);
        let lr = reference.train_step();
        let lb = b.train_step();
        assert_eq!(
            lr.to_bits(),
            lb.to_bits(),
            "turn {t}: the forward pass is the same"
        );
        let (want, got) = (weights(&mut reference), weights(&mut b));
        let training = weights_of(&plan, &turn.trains);
        for (name, w) in &got {
            if factor_weights.contains(name) && !training.contains(name) {
                assert_eq!(w, &before[name], "turn {t}: frozen {name} changed");
            } else {
                assert_eq!(
                    w, &want[name],
                    "turn {t}: {name} differs from the unfrozen update"
                );
                let trains = trainable.contains(&name.as_str());
                assert_eq!(w != &before[name], trains, "turn {t}: {name}");
            }
        }
        feed(&mut a, t);
        a.train_step();
    }
    assert_eq!(b.turn(), Some(0), "the turns come round again");
    assert_ne!(weights(&mut a), weights(&mut b));
}

#[test]
fn turns_of_an_epoch_follow_the_epoch_length() {
    let plan = compile(Some(Rotate::Epoch), None).unwrap();
    assert_eq!(plan.freeze.as_ref().unwrap().every, 0);
    let mut exec = Executor::new(plan, 12).unwrap();
    exec.set_epoch_steps(4);
    let mut seen = Vec::new();
    for step in 0..12 {
        seen.push(exec.turn().unwrap());
        feed(&mut exec, step);
        exec.train_step();
    }
    assert_eq!(seen, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
}

#[test]
fn freezing_needs_factors_and_no_global_clipping() {
    let e = compile(Some(Rotate::Steps(2)), Some(1.0)).unwrap_err();
    assert!(e.contains("--clip-grad-norm"), "{e}");
    let opts = actc::CompileOptions {
        freeze: Some(Rotate::Epoch),
        ..common::options(Layers::Last(2), Some(vec![4, 3, 16, 16]))
    };
    let e = actc::compile_file(&common::model("tiny_cnn"), &opts)
        .err()
        .unwrap()
        .0;
    assert!(
        e.contains("none of the trained layers is in factors"),
        "{e}"
    );
    for bad in ["sequential:0", "sequential:x", "rotating", "sequential:"] {
        let e = bad.parse::<Rotate>().unwrap_err();
        assert!(e.contains("sequential:K"), "{bad}: {e}");
    }
    assert_eq!("sequential:3".parse(), Ok(Rotate::Steps(3)));
    assert_eq!("sequential".parse(), Ok(Rotate::Epoch));
}

/// Each weight before and after one step from the same weights and batch.
fn step(plan: Plan) -> BTreeMap<String, (Vec<f32>, Vec<f32>)> {
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let mut exec = Executor::new(plan, 1).unwrap();
    let before = weights(&mut exec);
    feed(&mut exec, 0);
    exec.train_step();
    weights(&mut exec)
        .into_iter()
        .map(|(name, after)| {
            let pair = (floats(&before[&name]), floats(&after));
            (name, pair)
        })
        .collect()
}

/// `--factor-lr`: a number scales the factors' updates and no other weight's; `auto` scales
/// each layer's factors by 1 / Σᵢ Πⱼ≠ᵢ (‖Fⱼ‖² / its smaller side), the pull of the other
/// factors on the layer, at most 1.
#[test]
fn factors_train_at_their_own_rate() {
    let plan = |lr| compile_at(None, None, lr).unwrap();
    let same = plan(FactorLr::Scale(1.0));
    let factors: Vec<String> = same
        .layers
        .iter()
        .filter(|l| l.node.contains("/lowrank"))
        .map(|l| l.node.clone())
        .collect();
    let factor_weights: Vec<String> = weights_of(&same, &factors)
        .into_iter()
        .filter(|w| w.contains(".lowrank"))
        .collect();
    assert!(factor_weights.len() >= 7, "{factor_weights:?}");
    let one = step(same.clone());
    // `got` took `scale` times the update that took `want`'s weights from `w`: to the
    // rounding of the weights, as each update rounds to them.
    let close = |(w, got): &(Vec<f32>, Vec<f32>), want: &[f32], scale: f32, name: &str| {
        assert!(w.iter().zip(want).any(|(w, v)| w != v), "{name} trains");
        for ((w, g), v) in w.iter().zip(got).zip(want) {
            let (step, full) = (g - w, v - w);
            let ulp = 4.0 * f32::EPSILON * w.abs().max(v.abs());
            assert!(
                (step - scale * full).abs() <= ulp + 1e-6 * full.abs(),
                "{name}: a step of {step} against {scale} × {full}"
            );
        }
    };
    let half = step(plan(FactorLr::Scale(0.5)));
    for (name, got) in &half {
        match factor_weights.contains(name) {
            true => close(got, &one[name].1, 0.5, name),
            false => assert_eq!(got, &one[name], "{name} is no factor"),
        }
    }

    // The pull of each factor: its weight's squared norm over its matrix's smaller side.
    let power = |name: &str| -> (String, f64) {
        let w = same.weights.iter().find(|w| w.source == name).unwrap();
        let shape = &same.buffer(w.buffer).shape;
        let rows = shape[0] as usize;
        let cols: usize = shape[1..].iter().map(|&d| d as usize).product();
        let square: f64 = w
            .data
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())).powi(2))
            .sum();
        let layer = name.rsplit_once(".lowrank").unwrap().0.to_string();
        (layer, square / rows.min(cols) as f64)
    };
    let mut layers: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for name in &factor_weights {
        let (layer, p) = power(name);
        layers.entry(layer).or_default().push(p);
    }
    let auto = step(plan(FactorLr::Auto));
    let mut cooled = 0;
    for name in &factor_weights {
        let powers = &layers[&power(name).0];
        let product = |skip: usize| -> f64 {
            let others = powers.iter().enumerate().filter(|&(j, _)| j != skip);
            others.map(|(_, p)| p).product()
        };
        let pull: f64 = (0..powers.len()).map(product).sum();
        let scale = (1.0 / pull).min(1.0) as f32;
        cooled += usize::from(scale < 1.0);
        close(&auto[name], &one[name].1, scale, name);
    }
    assert!(cooled > 0, "some factor of tiny_cnn is cooled");
    for (name, got) in &auto {
        if !factor_weights.contains(name) {
            assert_eq!(got, &one[name], "{name} is no factor");
        }
    }
}
