//! `compile --freeze-schedule`: the factors of each decomposed layer train in turns. Checked
//! against the same plan without the schedule: in a turn, the training factors (and every
//! layer that is not in factors) take exactly the unfrozen plan's update, the others keep
//! their weights.

use crate::common;

use actc::{DecomposeOptions, InputShape, Layers, LowRankRequest, RankRule, Rotate};
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
        },
    };
    let path = common::model("tiny_cnn");
    let m = actc::load_onnx(&path).unwrap();
    actc::decompose_model(m, path.parent().unwrap(), "tiny_cnn", &opts)
        .unwrap()
        .model
}

fn compile(freeze: Option<Rotate>, clip: Option<f32>) -> Result<Plan, String> {
    let opts = actc::CompileOptions {
        lr: 0.05,
        freeze,
        clip_grad_norm: clip,
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
