//! How samples become model inputs: the flags `train`, `eval` and `compile --calibration`
//! share.

use actc::{Result, bail, err};
use actc_runtime::data::{Dataset, Layout, Preprocess};
use actc_runtime::plan::Plan;
use std::path::Path;

/// The classes a plan's output scores.
pub fn classes(plan: &Plan) -> usize {
    plan.buffer(plan.output).shape.last().copied().unwrap_or(0) as usize
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
