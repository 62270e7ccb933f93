//! How samples become model inputs: the flags `train`, `eval` and `compile --calibration`
//! share.

use actc::{Result, err};
use actc_runtime::data::{Dataset, Layout, Preprocess};

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
