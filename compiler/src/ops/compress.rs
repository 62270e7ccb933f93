//! Activation compression (DESIGN §4): a saved activation's compressed form, the tensor
//! rebuilt from it, and weight gradients computed from the compressed form directly.

use super::room::{Room, expect, shapes};
use crate::ir::Tensor;
use actc_runtime::ops::{self as rt, Kind};
use actc_runtime::plan::DType;

pub struct Compression;

impl Room for Compression {
    fn owns(&self, kind: &Kind) -> bool {
        matches!(
            kind,
            Kind::Compress(_)
                | Kind::Decompress(_)
                | Kind::ConvBackwardWeightCompressed(_)
                | Kind::LinearGradWCompressed(_)
        )
    }

    fn check(
        &self,
        kind: &Kind,
        ins: &[&Tensor],
        outs: &[&Tensor],
    ) -> std::result::Result<(), String> {
        let s = shapes(ins, 1)?;
        match kind {
            // x, [state] → packed
            Kind::Compress(c) => {
                let x: Vec<usize> = c.shape.iter().map(|&d| d as usize).collect();
                if x.iter().product::<usize>() != s[0].iter().product::<usize>() {
                    return Err(format!("compresses {x:?} but reads {:?}", s[0]));
                }
                expect(outs, &[(vec![c.packed_len()], DType::F32)])
            }
            Kind::Decompress(c) => {
                if s[0] != [c.packed_len()] {
                    return Err(format!(
                        "packed form {:?}, expected {}",
                        s[0],
                        c.packed_len()
                    ));
                }
                let n: usize = c.shape.iter().map(|&d| d as usize).product();
                let got = outs.first().ok_or("no output")?;
                if got.numel() != n {
                    return Err(format!("rebuilds {:?} into {:?}", c.shape, got.shape));
                }
                Ok(())
            }
            // packed, dy → dw
            Kind::ConvBackwardWeightCompressed(_) | Kind::LinearGradWCompressed(_) => {
                shapes(ins, 2).map(|_| ())
            }
            _ => Err("not a compression op".into()),
        }
    }

    fn with_sgd(&self, kind: &Kind, _ins: &[&Tensor], dw: &Tensor, sgd: &rt::Sgd) -> Option<Kind> {
        let Kind::ConvBackwardWeightCompressed(rt::CompressedConv {
            conv: Some(c),
            compressor: Some(compressor),
        }) = kind
        else {
            return None;
        };
        super::conv::sgd_fusable(c, &compressor.shape, dw, sgd, Some(compressor.clone()))
    }

    fn urgent(&self, kind: &Kind) -> bool {
        matches!(kind, Kind::Compress(_))
    }
}
