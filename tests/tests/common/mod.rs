//! Shared by the integration tests: where the bundled models are, and compiling them.
#![allow(dead_code)] // each test binary uses a different part of this module

use actc::{CompileOptions, Compiled, InputShape, Layers, compile_file};
use std::path::{Path, PathBuf};

pub fn model(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(format!("{name}.onnx"))
}

pub fn options(layers: Layers, shape: Option<Vec<usize>>) -> CompileOptions {
    CompileOptions {
        layers,
        input: InputShape { shape, batch: None },
        ..CompileOptions::default()
    }
}

pub fn compile(name: &str, layers: Layers, shape: Option<Vec<usize>>) -> Result<Compiled, String> {
    compile_file(&model(name), &options(layers, shape)).map_err(|e| e.0)
}

/// Every bundled model, with the input shape its tests compile it at.
pub const MODELS: &[(&str, &[usize])] = &[
    ("mobilenetv2", &[8, 3, 224, 224]),
    ("mobilenetv2_bn", &[8, 3, 224, 224]),
    ("resnet18", &[4, 3, 32, 32]),
    ("mcunet", &[4, 3, 32, 32]),
    ("tiny_mlp", &[4, 64]),
    ("tiny_matmul", &[4, 64]),
    ("tiny_cnn", &[2, 3, 16, 16]),
    ("tiny_constants", &[2, 3, 16, 16]),
    ("tiny_multi_output", &[2, 3, 16, 16]),
    ("tiny_unsupported", &[2, 3, 8, 8]),
    ("tiny_layernorm", &[4, 8, 16]),
    ("tiny_layernorm_decomposed", &[4, 8, 16]),
    ("tiny_cnn_lowrank", &[2, 3, 16, 16]),
    ("tiny_mlp_lowrank", &[4, 64]),
    ("tiny_gelu", &[4, 8, 16]),
    ("tiny_gelu_erf", &[4, 8, 16]),
    ("tiny_vit", &[2, 3, 16, 16]),
    ("tiny_vit_decomposed", &[2, 3, 16, 16]),
    ("tiny_bert", &[2, 16]),
    ("tiny_bert_decomposed", &[2, 16]),
    ("tiny_decoder", &[2, 3, 16, 16]),
];

/// A fresh empty folder under the target directory for files a test writes.
pub fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// The plan's compiled input shape.
pub fn input_shape(plan: &actc_runtime::plan::Plan) -> Vec<usize> {
    plan.source
        .as_ref()
        .unwrap()
        .input_shape
        .iter()
        .map(|&d| d as usize)
        .collect()
}

/// The boundary tensors for one model input: the prefix run on tract, or the input itself.
pub fn boundary(plan: &actc_runtime::plan::Plan, input: &[f32]) -> Vec<Vec<f32>> {
    let mut out: Vec<Vec<f32>> = Vec::new();
    let inputs = &plan.source.as_ref().unwrap().inputs;
    if plan.prefix_onnx.is_empty() {
        out.push(input.to_vec());
    } else {
        let prefix = match inputs.is_empty() {
            true => actc_runtime::prefix::Prefix::new(&plan.prefix_onnx, &input_shape(plan)),
            false => actc_runtime::prefix::Prefix::packed(&plan.prefix_onnx, inputs),
        };
        prefix
            .unwrap()
            .run(input, |_, v| out.push(v.to_vec()))
            .unwrap();
    }
    out
}

/// Writes a batch into the executor (before every step: the planner reuses feed memory).
pub fn feed(
    exec: &mut actc_runtime::exec::Executor,
    boundary: &[Vec<f32>],
    labels: impl Fn(usize) -> u32,
) {
    for (i, b) in boundary.iter().enumerate() {
        exec.boundary_mut(i).copy_from_slice(b);
    }
    for (i, l) in exec.labels_mut().unwrap().iter_mut().enumerate() {
        *l = labels(i);
    }
}

/// Writes an `.npz` of float32 arrays, as `numpy.savez` does: `(name, shape, values)`.
pub fn write_npz(path: &Path, arrays: &[(&str, &[usize], &[f32])]) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, shape, values) in arrays {
        let dims: Vec<String> = shape.iter().map(|d| format!("{d},")).collect();
        let mut header = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}",
            dims.join(" ")
        );
        while (header.len() + 11) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        zip.start_file(format!("{name}.npy"), stored).unwrap();
        zip.write_all(b"\x93NUMPY\x01\x00").unwrap();
        zip.write_all(&(header.len() as u16).to_le_bytes()).unwrap();
        zip.write_all(header.as_bytes()).unwrap();
        for v in *values {
            zip.write_all(&v.to_le_bytes()).unwrap();
        }
    }
    zip.finish().unwrap();
}

/// [`feed`] for a `--loss mse` plan: `targets` (the batch's rows) in place of labels.
pub fn feed_targets(
    exec: &mut actc_runtime::exec::Executor,
    boundary: &[Vec<f32>],
    targets: &[f32],
) {
    for (i, b) in boundary.iter().enumerate() {
        exec.boundary_mut(i).copy_from_slice(b);
    }
    exec.targets_mut().unwrap().copy_from_slice(targets);
}

/// The first output of an ONNX model on `input` at `shape`, by tract (an implementation
/// actc did not write).
pub fn tract_output(bytes: &[u8], shape: &[usize], input: &[f32]) -> Vec<f32> {
    let mut out = Vec::new();
    actc_runtime::prefix::Prefix::new(bytes, shape)
        .unwrap()
        .run(input, |k, v| {
            if k == 0 {
                out = v.to_vec()
            }
        })
        .unwrap();
    out
}
