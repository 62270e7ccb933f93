//! The frozen prefix: the plan's ONNX sub-model, run by tract (inference only). Its outputs
//! are the boundary tensors the trainable suffix starts from.

use crate::exec::ExecError;
use tract_onnx::prelude::*;

pub struct Prefix {
    model: std::sync::Arc<TypedRunnableModel>,
    input_shape: Vec<usize>,
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
        let model = onnx_reader
            .model_for_proto_model(&proto)
            .map_err(fail)?
            .with_input_fact(0, f32::fact(input_shape).into())
            .map_err(fail)?
            .into_optimized()
            .map_err(fail)?
            .into_runnable()
            .map_err(fail)?;
        Ok(Prefix {
            model,
            input_shape: input_shape.to_vec(),
        })
    }

    /// Runs one batch; `write(i, values)` receives boundary tensor i.
    pub fn run(
        &self,
        input: &[f32],
        mut write: impl FnMut(usize, &[f32]),
    ) -> Result<(), ExecError> {
        let fail = |e: TractError| ExecError(format!("frozen prefix: {e:#}"));
        let tensor = Tensor::from_shape(&self.input_shape, input).map_err(fail)?;
        let outputs = self.model.run(tvec!(tensor.into_tvalue())).map_err(fail)?;
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
