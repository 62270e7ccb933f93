//! Normalizations: `BatchNormalization` with running statistics (eval mode, as fine-tuning
//! in the reference keeps it); its parameters stay frozen.

use super::room::{Backward, Lowered, OnnxNode, Room, expect, shapes};
use crate::bail;
use crate::error::Result;
use crate::ir::{Graph, Node, Tensor};
use actc_runtime::ops::{self, Kind};
use actc_runtime::plan::DType;

pub struct Norms;

impl Room for Norms {
    fn onnx_ops(&self) -> &'static [&'static str] {
        &["BatchNormalization"]
    }

    fn owns(&self, kind: &Kind) -> bool {
        matches!(kind, Kind::BatchNorm(_) | Kind::BatchNormBackward(_))
    }

    fn import(&self, n: &OnnxNode) -> Result<Lowered> {
        if n.proto.output.len() > 1 && n.attrs.int("training_mode", 0) != 0 {
            bail!(
                "node '{}' (BatchNormalization) is in training mode; export the model in eval mode",
                n.label
            );
        }
        let x = n.arg(0)?;
        let outputs = vec![(x.shape.clone(), x.dtype)];
        let frozen = (1..5).all(|i| n.args.get(i).is_some_and(|a| a.is_const()));
        if x.rank() != 4 || !frozen {
            return Ok(Lowered::onnx(outputs));
        }
        let kind = Kind::BatchNorm(ops::Epsilon {
            epsilon: n.attrs.float("epsilon", 1e-5),
        });
        Ok(Lowered::kernel(outputs, kind, vec![0, 1, 2, 3, 4]))
    }

    fn check(
        &self,
        kind: &Kind,
        ins: &[&Tensor],
        outs: &[&Tensor],
    ) -> std::result::Result<(), String> {
        // x (or dy), scale, bias, mean, var → y (or dx)
        let s = shapes(ins, 5)?;
        let c = *s[0].get(1).ok_or("no channel axis")?;
        if s[1..5].iter().any(|p| *p != [c]) {
            return Err(format!(
                "parameters {:?} do not have {c} channels",
                &s[1..5]
            ));
        }
        match kind {
            Kind::BatchNorm(_) | Kind::BatchNormBackward(_) => {
                expect(outs, &[(s[0].to_vec(), DType::F32)])
            }
            _ => Err("not a norm op".into()),
        }
    }

    fn differentiable(&self, kind: &Kind, _node: &Node, _graph: &Graph) -> bool {
        matches!(kind, Kind::BatchNorm(_))
    }

    fn backward(&self, kind: &Kind, ad: &mut Backward) {
        let Kind::BatchNorm(e) = kind else {
            unreachable!("only BatchNorm is differentiable")
        };
        if ad.needs(0) {
            let mut inputs = vec![ad.dy];
            inputs.extend(&ad.inputs()[1..5]);
            ad.grad(0, "grad_input", Kind::BatchNormBackward(e.clone()), inputs);
        }
    }
}
