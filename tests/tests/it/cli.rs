//! The commands end to end, as a user runs them: compile, train, eval, export.

use crate::common::{self, model, scratch};

/// The epoch records of a `train --log` file.
fn epoch_records(log: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "epoch")
        .collect()
}

fn run(args: &[&str]) {
    let mut argv = vec!["actc"];
    argv.extend_from_slice(args);
    if let Err((code, msg)) = actc::driver::cli::run_from(argv) {
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
    let (code, msg) = actc::driver::cli::run_from([
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
    let epochs = epoch_records(&log);
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
    let epochs = epoch_records(&log);
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

/// A model whose weights lie in an external file compiles, and its export holds every
/// weight itself: it loads with the original folder gone (issue 18: the export kept the
/// original relative reference, so it loaded nowhere else).
#[test]
fn export_of_a_model_with_external_data_stands_alone() {
    let dir = scratch("cli_external");
    let source = dir.join("source");
    std::fs::create_dir_all(&source).unwrap();
    let mut m = actc::load_onnx(&model("tiny_cnn")).unwrap();
    let mut blob = Vec::new();
    for t in &mut m.graph.as_mut().unwrap().initializer {
        if t.data_type() != 1 {
            continue;
        }
        let bytes = match t.raw_data.take() {
            Some(b) => b,
            None => t.float_data.drain(..).flat_map(f32::to_le_bytes).collect(),
        };
        t.data_location = Some(1); // EXTERNAL
        let entries = [
            ("location", "weights.bin".to_string()),
            ("offset", blob.len().to_string()),
            ("length", bytes.len().to_string()),
        ];
        t.external_data = entries
            .into_iter()
            .map(|(k, v)| {
                let mut e = t.external_data.first().cloned().unwrap_or_default();
                (e.key, e.value) = (Some(k.into()), Some(v));
                e
            })
            .collect();
        blob.extend_from_slice(&bytes);
    }
    std::fs::write(source.join("weights.bin"), &blob).unwrap();
    let onnx = source.join("m.onnx");
    std::fs::write(&onnx, prost::Message::encode_to_vec(&m)).unwrap();
    let plan = dir.join("m.actc");
    let compile = |onnx: &std::path::Path, plan: &std::path::Path| {
        run(&[
            "compile",
            onnx.to_str().unwrap(),
            "--layers",
            "2",
            "--input-shape",
            "2x3x16x16",
            "-o",
            plan.to_str().unwrap(),
        ])
    };
    compile(&onnx, &plan);
    let exported = dir.join("exported.onnx");
    run(&[
        "export",
        plan.to_str().unwrap(),
        "-o",
        exported.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(&source).unwrap();

    let back = actc::load_onnx(&exported).unwrap();
    let g = back.graph.unwrap();
    assert!(
        g.initializer
            .iter()
            .all(|t| t.data_location.unwrap_or(0) == 0 && t.external_data.is_empty())
    );
    let again = dir.join("again.actc");
    compile(&exported, &again);
    let weights = |p: &std::path::Path| actc_runtime::plan::Plan::load(p).unwrap().weights;
    let options = common::options(actc::Layers::Last(2), Some(vec![2, 3, 16, 16]));
    let original = actc::compile_file(&model("tiny_cnn"), &options)
        .unwrap()
        .plan
        .weights;
    assert!(
        weights(&again) == original,
        "the export's weights are the model's"
    );

    // Asked for, the weights go beside the model, which loads from wherever the two go.
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let split = out.join("split.onnx");
    run(&[
        "export",
        plan.to_str().unwrap(),
        "-o",
        split.to_str().unwrap(),
        "--external-data",
    ]);
    let moved = dir.join("moved");
    std::fs::rename(&out, &moved).unwrap();
    let back = actc::load_onnx(&moved.join("split.onnx")).unwrap();
    let external = back
        .graph
        .unwrap()
        .initializer
        .iter()
        .filter(|t| t.data_location.unwrap_or(0) == 1)
        .count();
    assert!(external > 0);
    compile(&moved.join("split.onnx"), &again);
    assert!(
        weights(&again) == original,
        "the split export's weights are the model's"
    );
}

/// `actc plrd`: the original and three lower sizes, each fine-tuned and exported; the sizes
/// shrink and every export runs in tract.
#[test]
fn plrd_writes_one_model_per_size() {
    let dir = scratch("cli_plrd");
    let digits = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/data/digits.npz");
    let out = dir.join("sizes");
    let args = |energies: &'static str| {
        vec![
            "actc".to_string(),
            "plrd".into(),
            model("tiny_mlp").to_str().unwrap().into(),
            "--data".into(),
            digits.into(),
            "--scale".into(),
            "0.0625".into(),
            "--energies".into(),
            energies.into(),
            "--layers".into(),
            "all".into(),
            "--batch".into(),
            "32".into(),
            "--lr".into(),
            "0.1".into(),
            "-q".into(),
            "-o".into(),
            out.to_str().unwrap().into(),
        ]
    };
    let (code, msg) = actc::driver::cli::run_from(args("0.9,0.95")).unwrap_err();
    assert!(
        code == 2 && msg.contains("--energies must fall"),
        "{code}: {msg}"
    );
    actc::driver::cli::run_from(args("0.8,0.6,0.4")).unwrap();
    let mut params = Vec::new();
    for name in ["original", "energy_0.8", "energy_0.6", "energy_0.4"] {
        let path = out.join(format!("{name}.onnx"));
        let bytes = std::fs::read(&path).unwrap();
        let m = actc::decode_onnx(&bytes).unwrap();
        let g = m.graph.as_ref().unwrap();
        params.push(
            g.initializer
                .iter()
                .map(|t| t.dims.iter().product::<i64>())
                .sum::<i64>(),
        );
        assert!(out.join(format!("{name}.best.actc")).exists(), "{name}");
        let input = vec![0.5; 32 * 64];
        assert_eq!(common::tract_output(&bytes, &[32, 64], &input).len(), 320);
    }
    // A step keeps a layer whose factors at its energy would not be smaller.
    assert!(
        params.windows(2).all(|w| w[1] <= w[0]) && params[3] < params[0],
        "{params:?}"
    );
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left.len(),
        8,
        "only the models and their trained plans: {left:?}"
    );
}

/// A text encoder (three int64 inputs) trains and evaluates on a CSV through a BERT
/// vocab.txt, and exports.
#[test]
fn text_from_a_csv_through_the_model_tokenizer() {
    let dir = scratch("cli_text");
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    // tiny_bert's 100 token ids: the specials, then words.
    let words = [
        "good", "bad", "film", "plot", "fun", "dull", "great", "awful",
    ];
    let mut vocab = vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    vocab.extend(words);
    std::fs::write(path("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    let mut csv = String::from("label,text\n");
    for i in 0..48 {
        let (a, b) = (words[i % 8], words[(i / 8) % 8]);
        csv += &format!("{},\"A {a} film, {b} plot!\"\n", i % 2);
    }
    std::fs::write(path("train.csv"), &csv).unwrap();
    let plan = path("bert.actc");
    run(&[
        "compile",
        model("tiny_bert").to_str().unwrap(),
        "--layers",
        "4",
        "--input-shape",
        "8x12",
        "-o",
        &plan,
    ]);
    let (vocab, data) = (path("vocab.txt"), path("train.csv"));
    let tokenizer = ["--tokenizer", vocab.as_str()];
    run(&[
        &["train", &plan, "--data", &data, "--epochs", "1"][..],
        &tokenizer,
    ]
    .concat());
    run(&[&["eval", &plan, "--data", &data][..], &tokenizer].concat());
    // What the tokenizer made of row 0, "A good film, good plot!": [CLS] [UNK] good film
    // [UNK] good plot [UNK] [SEP], padded to 12; the mask over those 9; token types 0.
    let opts = actc::driver::text::TextOptions {
        tokenizer: dir.join("vocab.txt"),
        text_column: "text".into(),
        label_column: "label".into(),
    };
    let inputs: Vec<(String, Vec<usize>)> = ["input_ids", "attention_mask", "token_type_ids"]
        .iter()
        .map(|n| (n.to_string(), vec![12]))
        .collect();
    let ds = actc::driver::text::load(&dir.join("train.csv"), &opts, &inputs).unwrap();
    assert_eq!((ds.len(), ds.labels()[..3].to_vec()), (48, vec![0, 1, 0]));
    let prep = actc_runtime::data::Preprocess::for_input(&[36], &ds).unwrap();
    let mut row = vec![0.0; 36];
    ds.write_sample(0, &prep, &mut row);
    let ids = [2., 1., 5., 7., 1., 5., 8., 1., 3., 0., 0., 0.];
    let mask = [1., 1., 1., 1., 1., 1., 1., 1., 1., 0., 0., 0.];
    assert_eq!(row, [&ids[..], &mask, &[0.0; 12]].concat());
    run(&["export", &plan, "-o", &path("bert.onnx")]);
    assert!(dir.join("bert.onnx").exists());
}

/// `--loss mse` on two outputs at once: one `.npz` array per output, the loss their summed
/// (here weighted) MSEs, each output's MSE in the log, and the export keeps every output.
#[test]
fn mse_on_two_outputs_reads_an_array_per_output() {
    let dir = scratch("cli_two_outputs");
    let plan = dir.join("two.actc");
    let p = plan.to_str().unwrap();
    run(&[
        "compile",
        model("tiny_multi_output").to_str().unwrap(),
        "--layers",
        "1",
        "--batch",
        "8",
        "--train-output",
        "logits,embedding",
        "--loss",
        "mse",
        "--loss-weights",
        "1,0.5",
        "--lr",
        "0.05",
        "-o",
        p,
    ]);
    // Seeded samples; targets a constant per output value, which the heads' biases learn.
    let n = 64;
    let mut seed = 7u32;
    let x: Vec<f32> = (0..n * 3 * 16 * 16)
        .map(|_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        })
        .collect();
    let logits: Vec<f32> = (0..n * 10).map(|i| (i % 10) as f32 * 0.2 - 1.0).collect();
    let embedding: Vec<f32> = (0..n * 8).map(|i| 0.5 - (i % 8) as f32 * 0.1).collect();
    let x_arr = ("x", &[n, 3, 16, 16][..], &x[..]);
    let data = dir.join("two.npz");
    common::write_npz(
        &data,
        &[
            x_arr,
            ("logits", &[n, 10], &logits),
            ("embedding", &[n, 8], &embedding),
        ],
    );
    let log = dir.join("log.jsonl");
    let d = data.to_str().unwrap();
    let save = dir.join("run");
    run(&[
        "train",
        p,
        "--data",
        d,
        "--epochs",
        "2",
        "--quiet",
        "--log",
        log.to_str().unwrap(),
        "--save",
        save.to_str().unwrap(),
    ]);
    let epochs = epoch_records(&log);
    let mse = |e: usize, set: &str, key: &str| match key {
        "" => epochs[e][set]["mse"].as_f64().unwrap(),
        out => epochs[e][set]["outputs"][out]["mse"].as_f64().unwrap(),
    };
    assert_eq!(epochs.len(), 2);
    assert!(
        mse(1, "train", "") < mse(0, "train", ""),
        "the loss did not decrease: {epochs:?}"
    );
    for e in 0..2 {
        for set in ["train", "val"] {
            let sum = mse(e, set, "logits") + 0.5 * mse(e, set, "embedding");
            let loss = mse(e, set, "");
            assert!((sum - loss).abs() <= 1e-4 * loss, "{set} {e}: {epochs:?}");
        }
    }

    // A missing array and a mis-shaped one are named, with the file.
    let (missing, wrong) = (dir.join("missing.npz"), dir.join("wrong.npz"));
    common::write_npz(&missing, &[x_arr, ("logits", &[n, 10], &logits)]);
    common::write_npz(
        &wrong,
        &[
            x_arr,
            ("logits", &[n, 10], &logits),
            ("embedding", &[n / 8, 64], &embedding),
        ],
    );
    for (file, want) in [
        (&missing, "no array named embedding"),
        (&wrong, "array embedding has shape [8, 64], not [64, 8]"),
    ] {
        for cmd in ["train", "eval"] {
            let (code, msg) =
                actc::driver::cli::run_from(["actc", cmd, p, "--data", file.to_str().unwrap()])
                    .unwrap_err();
            assert!(
                code == 2 && msg.contains(file.to_str().unwrap()) && msg.contains(want),
                "{cmd}: {msg}"
            );
        }
    }

    // Training on two outputs still exports the whole model, both heads.
    let onnx = dir.join("two.onnx");
    let best = save.with_extension("best.actc");
    run(&[
        "export",
        p,
        "--weights",
        best.to_str().unwrap(),
        "-o",
        onnx.to_str().unwrap(),
    ]);
    let graph = actc::load_onnx(&onnx).unwrap().graph.unwrap();
    let names: Vec<&str> = graph.output.iter().map(|o| o.name()).collect();
    assert_eq!(names, ["logits", "embedding"]);

    // One trained output still reads `y`.
    let one = dir.join("one.actc");
    run(&[
        "compile",
        model("tiny_multi_output").to_str().unwrap(),
        "--layers",
        "1",
        "--batch",
        "8",
        "--train-output",
        "embedding",
        "--loss",
        "mse",
        "-o",
        one.to_str().unwrap(),
    ]);
    let y = dir.join("y.npz");
    common::write_npz(&y, &[x_arr, ("y", &[n, 8], &embedding)]);
    run(&[
        "train",
        one.to_str().unwrap(),
        "--data",
        y.to_str().unwrap(),
        "--epochs",
        "1",
        "--quiet",
    ]);
}

/// `TrainOptions::keep_best` (what `decompose --distill` trains with): the trainer ends
/// holding the best epoch's weights, not the last epoch's, without a file. A large learning
/// rate makes the validation accuracy swing from epoch to epoch, so the last epoch is not the
/// best (checked, or the test could not tell), and the weights left score what the best did.
#[test]
fn fit_keeps_the_best_epochs_weights_in_memory() {
    let dir = scratch("keep_best");
    let d = dir.join("digits.npz");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../models/data/digits.npz"),
        &d,
    )
    .unwrap();
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mlp = model("tiny_mlp");
    let plan = actc::driver::cli::compile_in_process(&args(&[
        "actc",
        "compile",
        mlp.to_str().unwrap(),
        "--layers",
        "all",
        "--batch",
        "32",
        "--lr",
        "2",
    ]))
    .unwrap();
    let mut trainer = actc::driver::trainer::Trainer::new(&plan, "keep_best").unwrap();
    let (data, log) = (d.to_str().unwrap(), dir.join("log.jsonl"));
    let mut opts = actc::driver::cli::train_options_in_process(&args(&[
        "actc",
        "train",
        "plan",
        "--data",
        data,
        "--val",
        data,
        "--epochs",
        "8",
        "--scale",
        "0.0625",
        "--quiet",
        "--log",
        log.to_str().unwrap(),
    ]))
    .unwrap();
    opts.keep_best = true;
    let best = trainer.fit(&opts, None).unwrap().unwrap();
    let scores: Vec<f64> = epoch_records(&log)
        .iter()
        .map(|e| e["val"]["accuracy"].as_f64().unwrap())
        .collect();
    // The log rounds the scores: the last must lose by more than that (0.9750 against 0.9766).
    assert!(
        scores.last().unwrap() + 1e-6 < best,
        "the last epoch is the best: {scores:?}"
    );
    let (path, prep) = actc::driver::cli::eval_options_in_process(&args(&[
        "actc", "eval", "plan", "--data", data, "--scale", "0.0625",
    ]))
    .unwrap();
    let left = trainer.evaluate(None, &path, &prep).unwrap();
    assert_eq!(left.accuracy, best, "epochs {scores:?}");
}
