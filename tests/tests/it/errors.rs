//! Every way `actc compile` can be handed bad input gives exit code 2, one line naming the
//! problem, and no output file (not even a temporary one).

use crate::common::{model, scratch};
use std::path::Path;

/// Runs the CLI in-process; returns (exit code, stderr line) of a failure.
fn fails(args: &[&str]) -> (u8, String) {
    let mut argv = vec!["actc"];
    argv.extend_from_slice(args);
    match actc::driver::cli::run_from(argv) {
        Ok(()) => panic!("expected `actc {}` to fail", args.join(" ")),
        Err(e) => e,
    }
}

/// Runs the CLI in-process; it must succeed.
fn succeeds(args: &[&str]) {
    let mut argv = vec!["actc"];
    argv.extend_from_slice(args);
    if let Err((code, msg)) = actc::driver::cli::run_from(argv) {
        panic!("`actc {}` failed with {code}: {msg}", args.join(" "));
    }
}

fn compile_fails(dir: &Path, model: &Path, extra: &[&str]) -> String {
    let out = dir.join("out.actc");
    let mut args = vec![
        "compile",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, msg) = fails(&args);
    assert_eq!(code, 2, "exit code for {extra:?}: {msg}");
    assert_eq!(
        msg.trim_end().lines().count(),
        1,
        "one line expected, got: {msg}"
    );
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.iter()
            .all(|f| !f.to_string_lossy().contains("out.actc")),
        "output left behind: {left:?}"
    );
    msg
}

#[test]
fn unsupported_op_in_the_suffix_names_node_op_and_a_working_layers_value() {
    let dir = scratch("unsupported");
    let msg = compile_fails(&dir, &model("tiny_unsupported"), &["--layers", "2"]);
    assert!(
        msg.contains("op Sin") && msg.contains("--layers 1 works"),
        "{msg}"
    );
    // and the value it suggests does work
    let out = dir.join("ok.actc");
    succeeds(&[
        "compile",
        model("tiny_unsupported").to_str().unwrap(),
        "--layers",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(out.exists());
}

#[test]
fn prefix_op_without_an_actc_kernel_names_it_and_the_way_out() {
    let dir = scratch("prefix_actc");
    let msg = compile_fails(
        &dir,
        &model("tiny_unsupported"),
        &["--layers", "1", "--prefix", "actc"],
    );
    assert!(
        msg.contains("op Sin") && msg.contains("--prefix tract"),
        "{msg}"
    );
}

/// `--prefix-precision int8` needs a frozen prefix that actc's kernels run.
#[test]
fn int8_prefix_without_an_own_prefix_names_the_reason_and_the_way_out() {
    let dir = scratch("prefix_int8");
    for (model_name, extra, reason) in [
        ("tiny_cnn", &["--layers", "all"][..], "no frozen prefix"),
        (
            "tiny_cnn",
            &["--layers", "1", "--prefix", "tract"][..],
            "leave --prefix tract out",
        ),
        ("tiny_unsupported", &["--layers", "1"][..], "op Sin"),
        (
            "tiny_bert",
            &["--layers", "1", "--input-shape", "4x12"][..],
            "packed",
        ),
    ] {
        let mut args = extra.to_vec();
        args.extend(["--prefix-precision", "int8"]);
        let msg = compile_fails(&dir, &model(model_name), &args);
        assert!(
            msg.contains("--prefix-precision int8") && msg.contains(reason),
            "{model_name} {extra:?}: {msg}"
        );
    }
}

#[test]
fn prefix_actc_on_packed_inputs_names_the_reason_and_the_way_out() {
    let dir = scratch("prefix_actc_packed");
    let msg = compile_fails(
        &dir,
        &model("tiny_bert"),
        &["--layers", "1", "--input-shape", "4x12", "--prefix", "actc"],
    );
    assert!(
        msg.contains("--prefix actc")
            && msg.contains("packed")
            && msg.contains("leave --prefix out"),
        "{msg}"
    );
}

#[test]
fn truncated_onnx_file() {
    let dir = scratch("truncated");
    let bytes = std::fs::read(model("tiny_cnn")).unwrap();
    let cut = dir.join("cut.onnx");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let msg = compile_fails(&dir, &cut, &["--layers", "1"]);
    assert!(msg.contains("cut.onnx") && msg.contains("ONNX"), "{msg}");
}

#[test]
fn non_onnx_file() {
    let dir = scratch("not_onnx");
    let text = dir.join("notes.onnx");
    std::fs::write(&text, "these are not the weights you are looking for\n").unwrap();
    let msg = compile_fails(&dir, &text, &["--layers", "1"]);
    assert!(msg.contains("notes.onnx") && msg.contains("not"), "{msg}");
    let msg = compile_fails(&dir, &dir.join("missing.onnx"), &["--layers", "1"]);
    assert!(
        msg.contains("missing.onnx") && msg.contains("cannot read"),
        "{msg}"
    );
}

#[test]
fn layers_zero_and_too_many() {
    let dir = scratch("layers");
    let msg = compile_fails(&dir, &model("tiny_cnn"), &["--layers", "0"]);
    assert!(msg.contains("--layers"), "{msg}");
    let msg = compile_fails(&dir, &model("tiny_cnn"), &["--layers", "7"]);
    assert!(
        msg.contains("only 6 layers") && msg.contains("--layers 1 to 6"),
        "{msg}"
    );
    let msg = compile_fails(&dir, &model("tiny_cnn"), &["--layers", "three"]);
    assert!(msg.contains("three"), "{msg}");
}

#[test]
fn wrong_input_shape() {
    let dir = scratch("shape");
    let m = model("tiny_cnn");
    for (shape, expect) in [
        ("2x3x16", "rank"),
        ("2x1x16x16", "channels"),
        ("2x3x2x2", "too small"),
        ("2x3xfoox16", "not a shape"),
        ("0x3x16x16", "0"),
    ] {
        let msg = compile_fails(&dir, &m, &["--layers", "1", "--input-shape", shape]);
        assert!(msg.contains(expect), "--input-shape {shape}: {msg}");
    }
}

#[test]
fn unknown_output_and_bad_hyper_parameters() {
    let dir = scratch("flags");
    let m = model("tiny_multi_output");
    let msg = compile_fails(&dir, &m, &["--layers", "1", "--train-output", "nope"]);
    assert!(msg.contains("logits, embedding"), "{msg}");
    let both = ["--layers", "1", "--train-output", "logits,embedding"];
    let msg = compile_fails(&dir, &m, &both);
    assert!(
        msg.contains("--train-output") && msg.contains("--loss mse"),
        "{msg}"
    );
    let twice = ["--train-output", "logits", "--train-output", "logits"];
    let msg = compile_fails(
        &dir,
        &m,
        &[&["--layers", "1", "--loss", "mse"], &twice[..]].concat(),
    );
    assert!(msg.contains("twice"), "{msg}");
    let weights = [&both[..], &["--loss", "mse", "--loss-weights", "1"]].concat();
    let msg = compile_fails(&dir, &m, &weights);
    assert!(
        msg.contains("--loss-weights") && msg.contains("2 trained outputs"),
        "{msg}"
    );
    let weights = [&both[..], &["--loss", "mse", "--loss-weights", "1,-1"]].concat();
    let msg = compile_fails(&dir, &m, &weights);
    assert!(msg.contains("--loss-weights -1"), "{msg}");
    let msg = compile_fails(&dir, &m, &["--layers", "1", "--nesterov"]);
    assert!(msg.contains("--momentum"), "{msg}");
    let msg = compile_fails(&dir, &m, &["--layers", "1", "--lr=-1"]);
    assert!(msg.contains("--lr"), "{msg}");
}

#[test]
fn damaged_plan_is_refused_by_inspect() {
    let dir = scratch("damaged");
    let out = dir.join("p.actc");
    succeeds(&[
        "compile",
        model("tiny_mlp").to_str().unwrap(),
        "--layers",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    let mut bytes = std::fs::read(&out).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&out, &bytes).unwrap();
    let (code, msg) = fails(&["inspect", out.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(msg.contains("damaged"), "{msg}");
}

#[test]
fn bad_compression_flags() {
    let dir = scratch("compress_flags");
    let m = model("tiny_cnn");
    let msg = compile_fails(
        &dir,
        &m,
        &["--layers", "1", "--compress", "hosvd", "--eps", "0"],
    );
    assert!(msg.contains("--eps"), "{msg}");
    let msg = compile_fails(
        &dir,
        &m,
        &["--layers", "1", "--compress", "hosvd", "--max-rank", "0"],
    );
    assert!(msg.contains("--max-rank"), "{msg}");
    let msg = compile_fails(
        &dir,
        &m,
        &["--layers", "1", "--compress", "gradfilter", "--patch", "3"],
    );
    assert!(
        msg.contains("--patch") && msg.contains("2, 4 or 7"),
        "{msg}"
    );
    let msg = compile_fails(&dir, &m, &["--layers", "1", "--compress", "tucker"]);
    assert!(msg.contains("tucker"), "{msg}");
    let svd = [
        "--layers",
        "1",
        "--compress",
        "svd",
        "--rank-rule",
        "centered",
    ];
    let msg = compile_fails(&dir, &m, &svd);
    assert!(
        msg.contains("--rank-rule applies to --compress hosvd"),
        "{msg}"
    );
    let msg = compile_fails(
        &dir,
        &m,
        &[
            "--layers",
            "1",
            "--compress",
            "hosvd",
            "--rank-rule",
            "mean",
        ],
    );
    assert!(msg.contains("mean") && msg.contains("--rank-rule"), "{msg}");
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/data/fashion-mnist");
    let hosvd = ["--layers", "1", "--compress", "hosvd"];
    let msg = compile_fails(&dir, &m, &[&hosvd[..], &["--budget", "10K"]].concat());
    assert!(msg.contains("--calibration"), "{msg}");
    let msg = compile_fails(&dir, &m, &[&hosvd[..], &["--calibration", data]].concat());
    assert!(msg.contains("--budget"), "{msg}");
    let budget = ["--budget", "10K", "--calibration", data];
    let msg = compile_fails(&dir, &m, &[&["--layers", "1"][..], &budget].concat());
    assert!(msg.contains("--compress hosvd"), "{msg}");
    let tiny = ["--budget", "8", "--calibration", data];
    let msg = compile_fails(&dir, &m, &[&hosvd[..], &tiny].concat());
    assert!(
        msg.contains("--budget 8") && msg.contains("at least"),
        "{msg}"
    );
}

/// Models crafted as a hostile or careless exporter would make them (issue 18): each is
/// refused with exit 2 and one line, before anything large is allocated or read.
#[test]
fn hostile_models_are_refused_in_one_line() {
    let dir = scratch("hostile");
    let original = actc::load_onnx(&model("tiny_cnn")).unwrap();
    let check = |name: &str, edit: &dyn Fn(&mut actc::ModelProto), expect: &str| {
        let mut m = original.clone();
        edit(&mut m);
        let path = dir.join(format!("{name}.onnx"));
        std::fs::write(&path, prost::Message::encode_to_vec(&m)).unwrap();
        let msg = compile_fails(&dir, &path, &["--layers", "all"]);
        assert!(msg.contains(expect), "{name}: {msg}");
        msg
    };
    let strides = |m: &mut actc::ModelProto, v: Vec<i64>| {
        let g = m.graph.as_mut().unwrap();
        let conv = g.node.iter_mut().find(|n| n.op_type() == "Conv").unwrap();
        let a = conv
            .attribute
            .iter_mut()
            .find(|a| a.name() == "strides")
            .unwrap();
        a.ints = v;
    };
    check(
        "negative_strides",
        &|m| strides(m, vec![-1, -1]),
        "each must be at least 1",
    );
    check(
        "zero_strides",
        &|m| strides(m, vec![0, 1]),
        "each must be at least 1",
    );
    check(
        "attribute_of_another_type",
        &|m| {
            let g = m.graph.as_mut().unwrap();
            let gemm = g.node.iter_mut().find(|n| n.op_type() == "Gemm").unwrap();
            let mut beta = gemm.attribute[0].clone();
            beta.name = Some("beta".into());
            beta.r#type = Some(7); // INTS
            (beta.f, beta.i, beta.ints) = (None, None, vec![1]);
            gemm.attribute.retain(|a| a.name() != "beta");
            gemm.attribute.push(beta);
        },
        "attribute beta is INTS; ONNX defines it as FLOAT",
    );
    check(
        "duplicate_initializer",
        &|m| {
            let g = m.graph.as_mut().unwrap();
            let first = g.initializer[0].clone();
            g.initializer.push(first);
        },
        "defined twice",
    );
    // A shape computation whose result would not fit in memory, or whose size overflows.
    for (name, dims) in [
        ("huge", vec![65536i64, 65536, 16]),
        ("wrapping", vec![1 << 62, 4]),
    ] {
        check(
            name,
            &|m| {
                let g = m.graph.as_mut().unwrap();
                let mut shape = g.initializer[0].clone();
                shape.name = Some("huge_shape".into());
                shape.dims = vec![dims.len() as i64];
                shape.data_type = Some(7); // INT64
                shape.float_data.clear();
                shape.raw_data = Some(dims.iter().flat_map(|d| d.to_le_bytes()).collect());
                g.initializer.push(shape);
                let mut node = g.node[0].clone();
                node.name = Some("fill".into());
                node.op_type = Some("ConstantOfShape".into());
                node.input = vec!["huge_shape".into()];
                node.output = vec!["filled".into()];
                node.attribute.clear();
                g.node.push(node);
            },
            "more elements than actc handles",
        );
    }
    // External data must stay inside the model's folder and be a regular file.
    for location in ["../../../../etc/passwd", "/proc/self/environ", "."] {
        let msg = check(
            "external",
            &|m| {
                let g = m.graph.as_mut().unwrap();
                let t = g
                    .initializer
                    .iter_mut()
                    .find(|t| t.data_type() == 1)
                    .unwrap();
                t.raw_data = None;
                t.float_data.clear();
                t.data_location = Some(1); // EXTERNAL
                t.external_data.push(Default::default());
                t.external_data[0].key = Some("location".into());
                t.external_data[0].value = Some(location.into());
            },
            "model's folder",
        );
        assert!(!msg.contains("root:"), "{msg}");
    }
    // A node name cannot forge a second line or reach the terminal as an escape.
    let msg = check(
        "forged_name",
        &|m| {
            strides(m, vec![-1, -1]);
            let g = m.graph.as_mut().unwrap();
            let conv = g.node.iter_mut().find(|n| n.op_type() == "Conv").unwrap();
            conv.name = Some("conv\nerror: all is well\u{1b}[31m".into());
        },
        "conv\\nerror: all is well\\u{1b}[31m",
    );
    assert!(!msg.contains('\u{1b}'));
}

/// Bad attributes and inputs of the decoder ops (ConvTranspose, Resize) are refused with
/// one line naming the node, never a panic.
#[test]
fn bad_decoder_attributes_are_refused_in_one_line() {
    use actc::ModelProto;
    let dir = scratch("decoder");
    let original = actc::load_onnx(&model("tiny_decoder")).unwrap();
    let check = |name: &str, edit: &dyn Fn(&mut ModelProto), expect: &str| {
        let mut m = original.clone();
        edit(&mut m);
        let path = dir.join(format!("{name}.onnx"));
        std::fs::write(&path, prost::Message::encode_to_vec(&m)).unwrap();
        let msg = compile_fails(&dir, &path, &["--layers", "all"]);
        assert!(msg.contains(expect), "{name}: {msg}");
    };
    // Sets ints attribute `name` of the first `op` node to `v` (made from its `pads` when
    // missing).
    let ints = |m: &mut ModelProto, op: &str, name: &str, v: Vec<i64>| {
        let g = m.graph.as_mut().unwrap();
        let node = g.node.iter_mut().find(|n| n.op_type() == op).unwrap();
        let mut a = node
            .attribute
            .iter()
            .find(|a| a.name() == "pads")
            .unwrap()
            .clone();
        a.name = Some(name.into());
        a.ints = v;
        node.attribute.retain(|a| a.name() != name);
        node.attribute.push(a);
    };
    let group = |m: &mut ModelProto, v: i64| {
        let g = m.graph.as_mut().unwrap();
        let node = g.node.iter_mut().find(|n| n.op_type() == "ConvTranspose");
        let a = node
            .unwrap()
            .attribute
            .iter_mut()
            .find(|a| a.name() == "group");
        a.unwrap().i = Some(v);
    };
    let up1 = "node '/up1/ConvTranspose' (ConvTranspose)";
    type Edit<'a> = &'a dyn Fn(&mut ModelProto);
    let cases: [(&str, Edit, String); 7] = [
        (
            "group_0",
            &|m| group(m, 0),
            format!("{up1}: group 0 is not a positive number"),
        ),
        (
            "group_3",
            &|m| group(m, 3),
            format!("{up1}: group 3 does not divide the 16 input channels"),
        ),
        (
            "strides",
            &|m| ints(m, "ConvTranspose", "strides", vec![0, 2]),
            format!("{up1}: strides [0, 2] holds 0; each must be at least 1"),
        ),
        (
            "pads",
            &|m| ints(m, "ConvTranspose", "pads", vec![1, 1, 9, 1]),
            format!("{up1}: pads [1, 1, 9, 1] leave no output"),
        ),
        (
            "output_shape",
            &|m| ints(m, "ConvTranspose", "output_shape", vec![99, 8]),
            format!("{up1}: output size 99 on axis 2 is not between 1 and"),
        ),
        (
            "output_padding",
            &|m| ints(m, "ConvTranspose", "output_padding", vec![1]),
            format!("{up1}: output_padding [1] does not fit 2 spatial axes"),
        ),
        (
            "resize_scales",
            &|m| {
                let g = m.graph.as_mut().unwrap();
                let mut scales = g.initializer[0].clone();
                scales.name = Some("bad_scales".into());
                scales.dims = vec![4];
                scales.float_data.clear();
                let v = [1.0f32, 1.0, -2.0, 2.0];
                scales.raw_data = Some(v.iter().flat_map(|x| x.to_le_bytes()).collect());
                g.initializer.push(scales);
                let resize = g.node.iter_mut().find(|n| n.op_type() == "Resize").unwrap();
                resize.input[2] = "bad_scales".into();
            },
            "node '/Resize' (Resize): scale -2 is not a positive number".into(),
        ),
    ];
    for (name, edit, expect) in cases {
        check(name, edit, &expect);
    }
}

/// An output path never replaces one of the command's inputs, nor a device (issue 18).
#[test]
fn outputs_never_replace_inputs() {
    let dir = scratch("clobber");
    let m = dir.join("m.onnx");
    std::fs::copy(model("tiny_cnn"), &m).unwrap();
    let before = std::fs::read(&m).unwrap();
    let m_s = m.to_str().unwrap();
    let (code, msg) = fails(&["compile", m_s, "--layers", "1", "-o", m_s]);
    assert_eq!(code, 2);
    assert!(msg.contains("is the input"), "{msg}");
    let (_, msg) = fails(&["compile", m_s, "--layers", "1", "-o", "/dev/null"]);
    assert!(msg.contains("not a regular file"), "{msg}");
    assert_eq!(std::fs::read(&m).unwrap(), before);

    let plan = dir.join("m.actc");
    let p = plan.to_str().unwrap();
    succeeds(&["compile", m_s, "--layers", "1", "-o", p]);
    let (_, msg) = fails(&["export", p, "-o", p]);
    assert!(msg.contains("is the input"), "{msg}");
    let other = dir.join(".").join("m.actc");
    let (_, msg) = fails(&["export", p, "-o", other.to_str().unwrap()]);
    assert!(msg.contains("is the input"), "{msg}");
}

/// Absurd sizes are refused at once, naming what would work (issue 18).
#[test]
fn absurd_sizes_are_refused() {
    let dir = scratch("absurd");
    let m = model("tiny_cnn");
    let msg = compile_fails(&dir, &m, &["--layers", "1", "--batch", "4294967296"]);
    assert!(msg.contains("more elements than actc handles"), "{msg}");
    let msg = compile_fails(&dir, &m, &["--layers", "1", "--max-memory", "4K"]);
    assert!(
        msg.contains("more than the limit of 4096") && msg.contains("largest buffers"),
        "{msg}"
    );
    let msg = compile_fails(&dir, &m, &["--layers", "1", "--threads", "100000"]);
    assert!(msg.contains("--threads 100000"), "{msg}");
    // A batch with a large prime factor: the micro-batch search does not walk every number.
    let out = dir.join("ok.actc");
    succeeds(&[
        "compile",
        m.to_str().unwrap(),
        "--layers",
        "1",
        "--batch",
        "65537",
        "--max-memory",
        "64G",
        "-o",
        out.to_str().unwrap(),
    ]);
}

/// `eval` refuses labels the model has no class for, as `train` does (issue 18).
#[test]
fn eval_refuses_labels_past_the_classes() {
    let dir = scratch("eval_labels");
    let plan = dir.join("eight.actc");
    let m = model("tiny_multi_output");
    succeeds(&[
        "compile",
        m.to_str().unwrap(),
        "--layers",
        "1",
        "--train-output",
        "embedding",
        "-o",
        plan.to_str().unwrap(),
    ]);
    let data = model("x").parent().unwrap().join("data/fashion-mnist");
    let (code, msg) = fails(&[
        "eval",
        plan.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        msg.contains("labels go up to 9 but the model output has 8 classes"),
        "{msg}"
    );
}

/// A diverging run and a log that cannot be written stop training at once, with exit 2
/// and one line (issue 18: `--lr 1e6` finished with exit 0, `--log /dev/full` too).
#[test]
fn training_stops_on_divergence_and_on_write_errors() {
    let dir = scratch("train_stops");
    let plan = dir.join("mlp.actc");
    let p = plan.to_str().unwrap();
    let digits = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/data/digits.npz");
    let m = model("tiny_mlp");
    let compile = |lr: &str| {
        succeeds(&[
            "compile",
            m.to_str().unwrap(),
            "--layers",
            "all",
            "--batch",
            "32",
            "--lr",
            lr,
            "-o",
            p,
        ])
    };
    let train = |extra: &[&str]| {
        let mut args = vec!["train", p, "--data", digits, "--epochs", "3", "--quiet"];
        args.extend_from_slice(extra);
        let (code, msg) = fails(&args);
        assert_eq!(code, 2, "{msg}");
        assert_eq!(msg.trim_end().lines().count(), 1, "{msg}");
        msg
    };
    compile("1e6");
    let msg = train(&["--scale", "1"]);
    assert!(msg.contains("training diverges; lower --lr"), "{msg}");
    compile("0.01");
    let msg = train(&["--scale", "0.0625", "--log", "/dev/full"]);
    assert!(msg.contains("/dev/full: cannot write"), "{msg}");
    let msg = train(&["--max-loss", "0"]);
    assert!(
        msg.contains("--max-loss must be a positive number"),
        "{msg}"
    );
}

/// A temporary file a killed save left behind is removed by the next write of the same
/// target; one of a live process is kept (issue 18).
#[test]
fn stale_temporary_files_are_removed() {
    let dir = scratch("stale_tmp");
    let plan = dir.join("m.actc");
    // No process has pid 4000000000 (above Linux's pid_max).
    let stale = dir.join(".m.actc.tmp4000000000");
    let live = dir.join(".m.actc.tmp1");
    std::fs::write(&stale, b"half a plan").unwrap();
    std::fs::write(&live, b"pid 1 is alive").unwrap();
    succeeds(&[
        "compile",
        model("tiny_cnn").to_str().unwrap(),
        "--layers",
        "1",
        "-o",
        plan.to_str().unwrap(),
    ]);
    assert!(plan.exists() && !stale.exists() && live.exists());
}

/// `actc decompose` refuses ranks it cannot keep and rules outside their range, naming the
/// flag (and the layer), and writes nothing (issue 17).
#[test]
fn decompose_refuses_bad_ranks() {
    let dir = scratch("decompose_flags");
    let out = dir.join("out.onnx");
    let (m, o) = (model("tiny_cnn"), out.to_str().unwrap().to_string());
    for (flags, wanted) in [
        (vec!["--energy", "0"], "--energy must be in (0, 1]"),
        (vec!["--energy", "1.5"], "--energy must be in (0, 1]"),
        (vec!["--ratio", "0"], "--ratio must be in (0, 1]"),
        (vec!["--ranks", "0"], "a rank of at least 1"),
        (
            vec!["--ranks", "9"],
            "layer '/conv1/Conv': --ranks 9 is above the full rank 8",
        ),
        (
            vec!["--optimize-ranks", "--rank-window", "1"],
            "--rank-window must be in [0, 1)",
        ),
        (
            vec!["--distill", "2"],
            "--distill trains on --calibration's inputs",
        ),
        (
            vec![
                "--distill",
                "0",
                "--calibration",
                "models/data/fashion-mnist",
            ],
            "--distill takes at least 1 epoch",
        ),
        (
            vec!["--distill-maps", "/conv1/Conv_output_0"],
            "give --distill EPOCHS too",
        ),
    ] {
        let mut args = vec!["decompose", m.to_str().unwrap(), "-o", &o];
        args.extend(&flags);
        let (code, msg) = fails(&args);
        assert_eq!(code, 2, "{flags:?}: {msg}");
        assert!(msg.contains(wanted), "{flags:?}: {msg}");
        assert_eq!(msg.trim_end().lines().count(), 1, "{flags:?}: {msg}");
        assert!(!out.exists());
    }
}
