//! The commands end to end, as a user runs them: compile, train, eval, export.

mod common;

use common::{model, scratch};

fn run(args: &[&str]) {
    let mut argv = vec!["actc"];
    argv.extend_from_slice(args);
    if let Err((code, msg)) = actc_driver::cli::run_from(argv) {
        panic!("`actc {}` failed ({code}): {msg}", args.join(" "));
    }
}

#[test]
fn compile_train_eval_export_on_bundled_digits() {
    let dir = scratch("cli_digits");
    let plan = dir.join("mlp.actc");
    let (p, d) = (plan.to_str().unwrap(), dir.join("digits.npz"));
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../models/data/digits.npz"),
        &d,
    )
    .unwrap();
    run(&[
        "compile",
        model("tiny_mlp").to_str().unwrap(),
        "--layers",
        "all",
        "--batch",
        "32",
        "--optimizer",
        "adamw",
        "--lr",
        "0.01",
        "-o",
        p,
    ]);
    let log = dir.join("log.jsonl");
    // --save into a folder that does not exist yet: train makes it.
    let runs = dir.join("runs");
    run(&[
        "train",
        p,
        "--data",
        d.to_str().unwrap(),
        "--epochs",
        "3",
        "--scale",
        "0.0625",
        "--quiet",
        "--log",
        log.to_str().unwrap(),
        "--save",
        runs.join("mlp").to_str().unwrap(),
    ]);
    // A spill folder that does not exist is refused before training, naming the flag.
    let missing = dir.join("missing");
    let (code, msg) = actc_driver::cli::run_from([
        "actc",
        "train",
        p,
        "--data",
        d.to_str().unwrap(),
        "--quiet",
        "--cache-dir",
        missing.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(code == 2 && msg.contains("--cache-dir"), "{code}: {msg}");
    let best = runs.join("mlp.best.actc");
    assert!(best.exists() && runs.join("mlp.last.actc").exists());
    let lines = std::fs::read_to_string(&log).unwrap();
    let epochs: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "epoch")
        .collect();
    assert_eq!(epochs.len(), 3);
    let acc = epochs.last().unwrap()["val"]["accuracy"].as_f64().unwrap();
    assert!(
        acc > 0.7,
        "validation accuracy after 3 epochs of digits: {acc}"
    );
    run(&[
        "eval",
        best.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--scale",
        "0.0625",
    ]);
    let onnx = dir.join("mlp.onnx");
    run(&[
        "export",
        p,
        "--weights",
        best.to_str().unwrap(),
        "-o",
        onnx.to_str().unwrap(),
    ]);
    let model = actc::load_onnx(&onnx).unwrap();
    assert_eq!(model.graph.unwrap().output[0].name(), "logits");
}

#[test]
fn compressed_training_reports_ranks_and_bench_profiles() {
    let dir = scratch("cli_compressed");
    let plan = dir.join("mlp.actc");
    let p = plan.to_str().unwrap();
    let digits = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/data/digits.npz");
    run(&[
        "compile",
        model("tiny_mlp").to_str().unwrap(),
        "--layers",
        "all",
        "--batch",
        "32",
        "--compress",
        "hosvd",
        "--eps",
        "0.9",
        "--max-rank",
        "8",
        "-o",
        p,
    ]);
    let log = dir.join("log.jsonl");
    run(&[
        "train",
        p,
        "--data",
        digits,
        "--epochs",
        "2",
        "--scale",
        "0.0625",
        "--quiet",
        "--log",
        log.to_str().unwrap(),
    ]);
    let epochs: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "epoch")
        .collect();
    let c = &epochs[1]["compression"];
    let layers = c["layers"].as_array().unwrap();
    assert_eq!(
        layers.len(),
        3,
        "the inputs of tiny_mlp's 3 dense layers: {c}"
    );
    for l in layers {
        for m in 0..2 {
            let r = l["rank_max"][m].as_u64().unwrap();
            assert!((1..=8).contains(&r), "{l}");
        }
    }
    let peak = c["paper_bytes_peak"].as_f64().unwrap();
    assert!(
        peak > 0.0 && peak < c["vanilla_bytes"].as_f64().unwrap(),
        "{c}"
    );
    // The second epoch's batches all come from the prefix cache.
    assert_eq!(epochs[1]["prefix"]["computed_samples"], 0);
    run(&["bench", p, "--steps", "2", "--warmup", "1", "--profile"]);
}
