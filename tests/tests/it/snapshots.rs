//! The training graph of every bundled model at `--layers 1, 2, 4, all`, and compressed with
//! each method at `--layers 4`, pinned as text. A change to any pass shows up here as a
//! reviewed diff (`cargo insta review`).

use crate::common;

use crate::common::MODELS;
use actc::{CompileOptions, Compression, HosvdRanks, Layers, compile_file};

fn snapshot_of(name: &str, shape: &[usize], layers: Layers, compression: Compression) -> String {
    let opts = CompileOptions {
        compression,
        ..common::options(layers, Some(shape.to_vec()))
    };
    snapshot_with(name, shape, &opts, &flags(compression))
}

fn snapshot_with(name: &str, shape: &[usize], opts: &CompileOptions, flags: &str) -> String {
    let layers = match opts.layers {
        Layers::Blocks(n) => format!("--blocks {n}"),
        l => format!("--layers {l}"),
    };
    let text = match compile_file(&common::model(name), opts) {
        Ok(c) => {
            let m = c.plan.memory.clone().unwrap_or_default();
            format!(
                "# {name} {layers}{flags} --input-shape {}\n# arena {} B (training {} B{}), naive {} B, persistent {} B, saved {} B\n{}",
                shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("x"),
                m.arena,
                m.training_arena,
                match c.prefix_batch {
                    Some(_) => format!(", prefix {} B: {}", m.prefix_arena, c.plan.prefix_runs()),
                    None => String::new(),
                },
                m.naive,
                m.persistent,
                m.saved,
                c.ir
            )
        }
        Err(e) => format!("# {name} {layers}\nerror: {}\n", e.0),
    };
    // Paths in error messages depend on the checkout; keep the file name only.
    text.replace(
        &format!("{}/", common::model("x").parent().unwrap().display()),
        "models/",
    )
}

fn flags(c: Compression) -> String {
    match c {
        Compression::None => String::new(),
        Compression::Hosvd {
            eps,
            max_rank,
            ranks,
        } => {
            let rule = match ranks {
                HosvdRanks::Auto => "auto",
                HosvdRanks::Eps => "eps",
                HosvdRanks::Centered => "centered",
            };
            format!(" --compress hosvd --rank-rule {rule} --eps {eps} --max-rank {max_rank}")
        }
        Compression::Svd { eps, max_rank } => {
            format!(" --compress svd --eps {eps} --max-rank {max_rank}")
        }
        Compression::GradFilter { patch } => format!(" --compress gradfilter --patch {patch}"),
    }
}

#[test]
fn training_graphs() {
    for &(name, shape) in MODELS {
        for layers in [
            Layers::Last(1),
            Layers::Last(2),
            Layers::Last(4),
            Layers::All,
        ] {
            let text = snapshot_of(name, shape, layers, Compression::None);
            insta::assert_snapshot!(format!("{name}__layers_{layers}"), text);
        }
    }
}

#[test]
fn compressed_training_graphs() {
    for &(name, shape) in MODELS {
        for (method, compression) in [
            (
                "hosvd",
                Compression::Hosvd {
                    eps: 0.8,
                    max_rank: 32,
                    ranks: HosvdRanks::Eps,
                },
            ),
            (
                "svd",
                Compression::Svd {
                    eps: 0.8,
                    max_rank: 32,
                },
            ),
            ("gradfilter", Compression::GradFilter { patch: 2 }),
        ] {
            let text = snapshot_of(name, shape, Layers::Last(4), compression);
            insta::assert_snapshot!(format!("{name}__layers_4__{method}"), text);
        }
    }
}

/// The centered rule: each compressed buffer starts with its input's per-channel mean
/// (tiny_cnn's grouped, depthwise and dilated convs; tiny_mlp's dense layers). The default,
/// `auto`: tiny_cnn's convs over 4×4 and 2×2 maps keep fixed ranks (and their factors
/// from step to step), tiny_mlp's dense layers the centered rule.
#[test]
fn centered_and_auto_hosvd_training_graphs() {
    for (rule, ranks) in [
        ("centered", HosvdRanks::Centered),
        ("auto", HosvdRanks::Auto),
    ] {
        let hosvd = Compression::Hosvd {
            eps: 0.9,
            max_rank: 32,
            ranks,
        };
        for &(name, shape) in MODELS
            .iter()
            .filter(|(n, _)| matches!(*n, "tiny_cnn" | "tiny_mlp"))
        {
            let text = snapshot_of(name, shape, Layers::All, hosvd);
            insta::assert_snapshot!(format!("{name}__layers_all__hosvd_{rule}"), text);
        }
    }
}

/// A transformer's last block whole, and with attention's probabilities computed again in
/// backward (the recomputed chain: q·kᵀ to softmax, read by the softmax's and P·V's
/// gradients).
#[test]
fn transformer_block_training_graphs() {
    let shape = [2, 3, 16, 16];
    for (recompute, flags, snap) in [
        (false, "", "tiny_vit__blocks_1"),
        (
            true,
            " --recompute attention",
            "tiny_vit__blocks_1__recompute",
        ),
    ] {
        let opts = CompileOptions {
            recompute_attention: recompute,
            ..common::options(Layers::Blocks(1), Some(shape.to_vec()))
        };
        insta::assert_snapshot!(snap, snapshot_with("tiny_vit", &shape, &opts, flags));
    }
}

/// `--budget`'s rewrite, with ranks given (calibration is tested in compress.rs): each
/// Compress reads and writes its persistent factors, and the buffers are sized at the ranks.
#[test]
fn fixed_rank_training_graph() {
    use actc::FixedRanks;
    let shape = [2, 3, 16, 16];
    let fixed_ranks = [
        ("/conv1/Conv", [2, 1, 1, 2]),
        ("/dw/Conv", [2, 2, 1, 1]),
        ("/gconv/Conv", [1, 2, 2, 1]),
        ("/dil/Conv", [1, 1, 1, 1]),
        ("/branch/Conv", [2, 3, 2, 2]),
        ("/conv_out/Conv", [1, 4, 2, 1]),
    ]
    .into_iter()
    .map(|(layer, ranks)| {
        let f = FixedRanks {
            eps: 0.8,
            ranks: ranks.to_vec(),
        };
        (layer.to_string(), f)
    })
    .collect();
    let opts = CompileOptions {
        compression: Compression::Hosvd {
            eps: 0.8,
            max_rank: 32,
            ranks: HosvdRanks::Eps,
        },
        fixed_ranks,
        ..common::options(Layers::All, Some(shape.to_vec()))
    };
    let text = snapshot_with(
        "tiny_cnn",
        &shape,
        &opts,
        " --compress hosvd --rank-rule eps (fixed ranks)",
    );
    insta::assert_snapshot!("tiny_cnn__layers_all__hosvd_fixed", text);
}

/// Two outputs trained at once (`--train-output landmarks,presence --loss mse
/// --loss-weights 1,2`): the (batch, 5, 2) landmarks reshaped to rows, both concatenated,
/// one MSE over the row in segments.
#[test]
fn multi_output_training_graph() {
    let shape = [2, 3, 16, 16];
    let opts = CompileOptions {
        outputs: vec!["landmarks".into(), "presence".into()],
        loss: actc_runtime::plan::LossKind::Mse,
        loss_weights: vec![1.0, 2.0],
        ..common::options(Layers::Last(1), Some(shape.to_vec()))
    };
    let flags = " --train-output landmarks,presence --loss mse --loss-weights 1,2";
    let text = snapshot_with("tiny_landmarks", &shape, &opts, flags);
    insta::assert_snapshot!("tiny_landmarks__layers_1__two_outputs", text);
}

/// The frozen prefix with int8 weights (`--prefix-precision int8`): MobileNetV2's chains
/// with int8 1×1 stages and its unfused 1×1 convs as int8 `ConvClip`s, each weight followed
/// by its steps and sums, its 3×3 stem over RGB and its depthwise convs left in floats;
/// ResNet-18's convs (its 7×7 stem too) as int8 `ConvClip`s; the ViT's MatMuls with
/// constant weights as `MatMulInt8`s reading the weight transposed.
#[test]
fn int8_prefix_training_graphs() {
    for (name, layers, shape, tag) in [
        (
            "mobilenetv2",
            Layers::Last(4),
            vec![8, 3, 224, 224],
            "layers_4",
        ),
        ("resnet18", Layers::Last(4), vec![8, 3, 64, 64], "layers_4"),
        (
            "tiny_vit",
            Layers::Blocks(1),
            vec![2, 3, 16, 16],
            "blocks_1",
        ),
    ] {
        let opts = CompileOptions {
            prefix_int8: true,
            ..common::options(layers, Some(shape.clone()))
        };
        let text = snapshot_with(name, &shape, &opts, " --prefix-precision int8");
        insta::assert_snapshot!(format!("{name}__{tag}__int8_prefix"), text);
    }
}
