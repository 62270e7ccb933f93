//! Optimizer steps: SGD (momentum, dampening, Nesterov, weight decay) and AdamW updates in
//! place, the global gradient norm for clipping, and a conv's weight gradient stored by its
//! product straight into its SGD update.

use super::room::{Room, shapes};
use crate::ir::Tensor;
use actc_runtime::ops::Kind;

pub struct Optimizers;

impl Room for Optimizers {
    fn owns(&self, kind: &Kind) -> bool {
        matches!(
            kind,
            Kind::SgdUpdate(_)
                | Kind::AdamWUpdate(_)
                | Kind::GradNorm(_)
                | Kind::ConvBackwardWeightSgd(_)
        )
    }

    fn check(
        &self,
        kind: &Kind,
        ins: &[&Tensor],
        outs: &[&Tensor],
    ) -> std::result::Result<(), String> {
        match kind {
            Kind::GradNorm(_) => match outs {
                [t] if t.shape == [1] => Ok(()),
                _ => Err("the norm's scale is one value".into()),
            },
            // w, g, [state], [clip scale] → (in place)
            Kind::SgdUpdate(_) | Kind::AdamWUpdate(_) => {
                let s = shapes(ins, 2)?;
                if s[0] != s[1] || !outs.is_empty() {
                    return Err(format!("weight {:?} and gradient {:?}", s[0], s[1]));
                }
                Ok(())
            }
            // x (or its compressed form), dy, w, [momentum] → (in place)
            Kind::ConvBackwardWeightSgd(_) => {
                let s = shapes(ins, 3)?;
                if s.get(3).is_some_and(|m| *m != s[2]) || !outs.is_empty() {
                    return Err(format!("weight {:?} and momentum {:?}", s[2], s.get(3)));
                }
                Ok(())
            }
            _ => Err("not an optimizer op".into()),
        }
    }

    fn flops(&self, kind: &Kind, ins: &[&[u64]], outs: &[&[u64]]) -> u64 {
        let numel = |s: Option<&&[u64]>| s.map_or(0, |s| s.iter().product::<u64>());
        match kind {
            Kind::SgdUpdate(_) | Kind::AdamWUpdate(_) => 4 * numel(ins.first()),
            // the weight gradient's product, then the update (from a compressed input,
            // counted as the other compressed gradients are)
            Kind::ConvBackwardWeightSgd(cs) if cs.compressor.is_none() => {
                let per_tap = ins.get(2).map_or(0, |w| w.iter().skip(1).product::<u64>());
                (2 * numel(ins.get(1)) + 4) * per_tap
            }
            _ => numel(outs.first()).max(numel(ins.first())),
        }
    }
}
