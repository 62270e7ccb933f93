//! How samples become model inputs: the flags `train`, `eval` and `compile --calibration`
//! share.

use crate::{Result, bail, err};
use actc_runtime::data::{Dataset, Layout, Preprocess, TargetArray};
use actc_runtime::plan::{DType, Plan};
use std::path::Path;

/// `n` values uniform in [-1, 1) from a fixed seed: the synthetic input of `bench` and of
/// `decompose` without `--calibration`, the same on every run.
pub fn seeded_noise(n: usize) -> Vec<f32> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The classes a plan's output scores.
pub fn classes(plan: &Plan) -> usize {
    plan.buffer(plan.output).shape.last().copied().unwrap_or(0) as usize
}

/// What a plan's data sets hold beyond the samples: regression targets or class labels, and
/// one array per model input when the plan packs several.
#[derive(Clone, Debug, Default)]
pub struct Reads {
    /// For a plan trained on regression targets (`--loss mse`), the `.npz` arrays its
    /// targets are read from: one per trained output, by the output's name (with one
    /// output, else `y`); `None` for class labels.
    pub targets: Option<Vec<TargetArray>>,
    /// Each model input's name and per-sample shape, when the plan packs several inputs
    /// (or an integer one); empty for one float input.
    pub inputs: Vec<(String, Vec<usize>)>,
}

pub fn reads(plan: &Plan) -> Reads {
    let label = plan.feeds.last().map(|&f| plan.buffer(f));
    let source = plan.source.clone().unwrap_or_default();
    let targets =
        label
            .filter(|l| l.dtype() == DType::F32)
            .map(|l| match source.outputs.as_slice() {
                [_, _, ..] => source
                    .outputs
                    .iter()
                    .map(|o| TargetArray {
                        names: vec![o.name.clone()],
                        shape: o.shape.iter().skip(1).map(|&d| d as usize).collect(),
                    })
                    .collect(),
                _ => vec![TargetArray {
                    names: [source.output_name.as_str(), "y", "Y", "targets"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                    shape: l.shape.iter().skip(1).map(|&d| d as usize).collect(),
                }],
            });
    let inputs = source
        .inputs
        .iter()
        .map(|i| {
            (
                i.name.clone(),
                i.shape[1..].iter().map(|&d| d as usize).collect(),
            )
        })
        .collect();
    Reads { targets, inputs }
}

/// Reads a data set as `reads` says, its samples as `prep` says (a CSV of text through the
/// tokenizer it names).
pub fn load_data(path: &Path, prep: &DataOptions, reads: &Reads) -> Result<Dataset> {
    let layout = prep.layout;
    let csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    match (&prep.text, csv) {
        (Some(text), true) if !reads.inputs.is_empty() && reads.targets.is_none() => {
            return super::text::load(path, text, &reads.inputs);
        }
        (Some(_), true) => bail!(
            "{}: text trains a model with token inputs (input_ids, …) on class labels; this plan takes {}",
            path.display(),
            if reads.targets.is_some() {
                "regression targets"
            } else {
                "one float input"
            }
        ),
        (None, true) => bail!(
            "{}: a CSV of text needs the model's tokenizer: --tokenizer tokenizer.json (or vocab.txt), with --text-column and --label-column",
            path.display()
        ),
        (Some(_), false) => bail!(
            "{}: --tokenizer reads a CSV of text (--data train.csv); this is not a .csv",
            path.display()
        ),
        (None, false) => {}
    }
    if !reads.inputs.is_empty() {
        if reads.targets.is_some() {
            bail!(
                "{}: regression targets for a model with several inputs are not read yet; train it on class labels",
                path.display()
            );
        }
        let inputs: Vec<(&str, &[usize])> = reads
            .inputs
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_slice()))
            .collect();
        return Dataset::load_packed(path, &inputs).map_err(|e| err!("{e}"));
    }
    match &reads.targets {
        Some(targets) => Dataset::load_regression(path, layout, targets),
        None => Dataset::load(path, layout),
    }
    .map_err(|e| err!("{e}"))
}

/// Refuses labels the model's `classes` outputs have no class for (`what`: how the data
/// was named).
pub fn check_labels(classes: usize, data: &Dataset, what: &str, path: &Path) -> Result<()> {
    if data.classes() > classes {
        bail!(
            "{what}{}: labels go up to {} but the model output has {classes} classes",
            path.display(),
            data.classes() - 1
        );
    }
    Ok(())
}

/// How samples become model inputs (flags shared by train and eval).
#[derive(Clone, Debug, Default)]
pub struct DataOptions {
    pub layout: Option<Layout>,
    pub scale: Option<f32>,
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    /// Text in a CSV, and the tokenizer that turns it into the model's token inputs.
    pub text: Option<super::text::TextOptions>,
}

impl DataOptions {
    pub(crate) fn preprocess(&self, sample_shape: &[usize], data: &Dataset) -> Result<Preprocess> {
        let mut p = Preprocess::for_input(sample_shape, data).map_err(|e| err!("{e}"))?;
        if let Some(s) = self.scale {
            p.scale = Some(s);
        }
        if let Some(m) = &self.mean {
            p.mean = m.clone();
        }
        if let Some(s) = &self.std {
            p.std = s.clone();
        }
        data.check(&p).map_err(|e| err!("{e}"))?;
        Ok(p)
    }
}

/// The flags as given (what a resumed run compares), e.g. `--scale 0.0625 --mean 0.5`.
impl std::fmt::Display for DataOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[f32]| v.iter().map(f32::to_string).collect::<Vec<_>>().join(",");
        let flags = [
            self.layout.map(|l| format!("--layout {l}")),
            self.scale.map(|s| format!("--scale {s}")),
            self.mean.as_deref().map(|m| format!("--mean {}", list(m))),
            self.std.as_deref().map(|s| format!("--std {}", list(s))),
            self.text.as_ref().map(|t| {
                format!(
                    "--tokenizer {} --text-column {} --label-column {}",
                    t.tokenizer.display(),
                    t.text_column,
                    t.label_column
                )
            }),
        ];
        let given: Vec<String> = flags.into_iter().flatten().collect();
        f.write_str(&given.join(" "))
    }
}
