//! The frozen prefix run by tract.

use crate::exec::ExecError;
use tract_onnx::prelude::*;

pub struct Prefix {
    model: std::sync::Arc<TypedRunnableModel>,
    feeds: Vec<Feed>,
}

/// One input of the prefix sub-model, as it is cut out of a batch of packed rows.
struct Feed {
    shape: Vec<usize>,
    /// Where its values start in a sample's row, and how many it has.
    offset: usize,
    len: usize,
    int: bool,
}

/// Lets tract's matrix products use `n` threads (process-wide; a pool made once).
pub fn set_threads(n: usize) {
    use tract_linalg::multithread::{Executor, set_default_executor};
    set_default_executor(if n > 1 {
        Executor::multithread(n)
    } else {
        Executor::SingleThread
    });
}

impl Prefix {
    /// Optimizes the sub-model once for the plan's fixed input shape.
    pub fn new(onnx: &[u8], input_shape: &[usize]) -> Result<Prefix, ExecError> {
        let row = input_shape[1..].iter().product();
        let feed = Feed {
            shape: input_shape.to_vec(),
            offset: 0,
            len: row,
            int: false,
        };
        let mut feed = Some(feed);
        Prefix::with_feeds(onnx, |_| feed.take())
    }

    /// [`Prefix::new`] for a plan whose samples pack several inputs into one row
    /// (`Source::inputs`, in row order); the sub-model reads some of them, by name.
    pub fn packed(onnx: &[u8], inputs: &[crate::plan::ModelInput]) -> Result<Prefix, ExecError> {
        let mut offset = 0;
        let mut feeds: Vec<(String, Feed)> = Vec::new();
        for i in inputs {
            let shape: Vec<usize> = i.shape.iter().map(|&d| d as usize).collect();
            let len = shape[1..].iter().product();
            let int = i.dtype() != crate::plan::DType::F32;
            feeds.push((
                i.name.clone(),
                Feed {
                    shape,
                    offset,
                    len,
                    int,
                },
            ));
            offset += len;
        }
        Prefix::with_feeds(onnx, |name| {
            let k = feeds.iter().position(|(n, _)| n == name)?;
            Some(feeds.remove(k).1)
        })
    }

    /// The sub-model with the feed `feed` names for each of its inputs.
    fn with_feeds(
        onnx: &[u8],
        mut feed: impl FnMut(&str) -> Option<Feed>,
    ) -> Result<Prefix, ExecError> {
        let fail = |e: TractError| ExecError(format!("frozen prefix: tract cannot run it: {e:#}"));
        let onnx_reader = tract_onnx::onnx();
        let mut proto = onnx_reader
            .proto_model_for_read(&mut std::io::Cursor::new(onnx))
            .map_err(fail)?;
        // Shapes are inferred from the input's: an exporter's value_info (dynamo names a
        // symbolic batch in every intermediate shape) would contradict the fixed batch.
        if let Some(g) = proto.graph.as_mut() {
            g.value_info.clear();
        }
        let names: Vec<String> = proto
            .graph
            .as_ref()
            .map(|g| g.input.iter().map(|i| i.name.clone()).collect())
            .unwrap_or_default();
        let mut model = onnx_reader.model_for_proto_model(&proto).map_err(fail)?;
        let mut feeds = Vec::with_capacity(names.len());
        for (k, name) in names.iter().enumerate() {
            let f = feed(name).ok_or_else(|| {
                ExecError(format!(
                    "frozen prefix: it reads '{name}', which is not a model input of the plan"
                ))
            })?;
            let fact = match f.int {
                true => i64::fact(&f.shape),
                false => f32::fact(&f.shape),
            };
            model = model.with_input_fact(k, fact.into()).map_err(fail)?;
            feeds.push(f);
        }
        let model = model
            .into_optimized()
            .map_err(fail)?
            .into_runnable()
            .map_err(fail)?;
        Ok(Prefix { model, feeds })
    }

    /// Runs one batch; `write(i, values)` receives boundary tensor i.
    pub fn run(
        &self,
        input: &[f32],
        mut write: impl FnMut(usize, &[f32]),
    ) -> Result<(), ExecError> {
        let fail = |e: TractError| ExecError(format!("frozen prefix: {e:#}"));
        let mut values = TVec::with_capacity(self.feeds.len());
        let rows = self.feeds.first().map_or(1, |f| f.shape[0]).max(1);
        let row = input.len() / rows;
        for f in &self.feeds {
            if f.len == row && !f.int {
                values.push(
                    Tensor::from_shape(&f.shape, input)
                        .map_err(fail)?
                        .into_tvalue(),
                );
                continue;
            }
            let part = (0..rows).flat_map(|r| input[r * row + f.offset..][..f.len].iter().copied());
            let tensor = match f.int {
                // Token ids and masks travel as floats, exact below 2^24.
                true => {
                    let v: Vec<i64> = part.map(|x| x as i64).collect();
                    Tensor::from_shape(&f.shape, &v)
                }
                false => {
                    let v: Vec<f32> = part.collect();
                    Tensor::from_shape(&f.shape, &v)
                }
            };
            values.push(tensor.map_err(fail)?.into_tvalue());
        }
        let outputs = self.model.run(values).map_err(fail)?;
        for (i, out) in outputs.iter().enumerate() {
            let view = out.to_plain_array_view::<f32>().map_err(fail)?;
            match view.as_slice() {
                Some(s) => write(i, s),
                None => write(i, &view.iter().copied().collect::<Vec<_>>()),
            }
        }
        Ok(())
    }
}
