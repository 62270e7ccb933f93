//! Convolutions: `Conv` (any group, stride, padding, dilation), its gradients for the
//! input, weight and bias, and the frozen prefix's fused forms (`ConvClip`, `ConvChain`);
//! `ConvTranspose` (see `transpose`), a layer like `Conv` for `--layers`.

mod fuse;
mod lowrank;
mod quantize;
mod transpose;

use super::room::{
    Backward, LayerClass, Lowered, OnnxNode, OnnxOut, Room, SavedInput, expect, shapes, window_out,
};
use crate::bail;
use crate::error::Result;
use crate::ir::{Graph, Node, Tensor};
use crate::lowrank::{AdapterForm, LayerReport, Request};
use crate::onnx::shape::{spatial_out, u32s, usizes};
use crate::onnx::{attr_int, attr_ints};
use actc_runtime::ops::Compressor;
use actc_runtime::ops::{self, Empty, Kind};
use actc_runtime::plan::DType;
use actc_runtime::planning::conv_geom;
use petgraph::stable_graph::NodeIndex;

pub struct Convs;

impl Room for Convs {
    fn onnx_ops(&self) -> &'static [&'static str] {
        &["Conv", "ConvTranspose"]
    }

    fn owns(&self, kind: &Kind) -> bool {
        matches!(
            kind,
            Kind::Conv(_)
                | Kind::ConvBackwardData(_)
                | Kind::ConvBackwardWeight(_)
                | Kind::BiasGrad(_)
                | Kind::ConvClip(_)
                | Kind::ConvChain(_)
                | Kind::ConvTranspose(_)
                | Kind::ConvTransposeBackwardData(_)
                | Kind::ConvTransposeBackwardWeight(_)
        )
    }

    fn import(&self, n: &OnnxNode) -> Result<Lowered> {
        if n.op() == "ConvTranspose" {
            return transpose::import(n);
        }
        let (x, w) = (n.arg(0)?, n.arg(1)?);
        let label = &n.label;
        if x.rank() < 3 || w.rank() != x.rank() {
            bail!(
                "node '{label}' (Conv): input rank {} and weight rank {} do not fit",
                x.rank(),
                w.rank()
            );
        }
        let group = n.attrs.int("group", 1).max(1) as usize;
        if x.shape[1] != w.shape[1] * group || w.shape[0] % group != 0 {
            bail!(
                "node '{label}' (Conv): input has {} channels but the weight {:?} with group {group} expects {}; check the input shape",
                x.shape[1],
                w.shape,
                w.shape[1] * group
            );
        }
        let (spatial, pads) = spatial_out(label, &n.attrs, &x.shape[2..], &w.shape[2..], false)?;
        let mut y = vec![x.shape[0], w.shape[0]];
        y.extend(spatial);
        let outputs = vec![(y, DType::F32)];
        if x.rank() != 4 {
            return Ok(Lowered::onnx(outputs));
        }
        let ints = |name: &str| usizes(&n.attrs.ints(name).unwrap_or_else(|| vec![1, 1]));
        let conv = ops::Conv {
            kernel: u32s(&w.shape[2..]),
            strides: u32s(&ints("strides")),
            pads: u32s(&pads),
            dilations: u32s(&ints("dilations")),
            group: group as u32,
        };
        let inputs = (0..n.args.len().min(3)).collect();
        Ok(Lowered::kernel(outputs, Kind::Conv(conv), inputs))
    }

    fn check(
        &self,
        kind: &Kind,
        ins: &[&Tensor],
        outs: &[&Tensor],
    ) -> std::result::Result<(), String> {
        match kind {
            Kind::Conv(c) => {
                let s = shapes(ins, 2)?;
                expect(outs, &[(forward(c, s[0], s[1])?, DType::F32)])
            }
            Kind::ConvClip(cc) => {
                let c = cc.conv.as_ref().ok_or("no conv attributes")?;
                let s = shapes(ins, 2)?;
                let y = forward(c, s[0], s[1])?;
                if cc.int8 {
                    int8_weight(ins, 1, y[1])?;
                }
                expect(outs, &[(y, DType::F32)])
            }
            // dy, w → dx: the conv of dx by w has dy's shape
            Kind::ConvBackwardData(c) => {
                let s = shapes(ins, 2)?;
                let dx = &outs.first().ok_or("no output")?.shape;
                same(&forward(c, dx, s[1])?, s[0], "dy")
            }
            // x, dy → dw
            Kind::ConvBackwardWeight(c) => {
                let s = shapes(ins, 2)?;
                let dw = &outs.first().ok_or("no output")?.shape;
                same(&forward(c, s[0], dw)?, s[1], "dy")
            }
            // x, w, [b] → y: the conv of y by w has x's shape
            Kind::ConvTranspose(c) => {
                let s = shapes(ins, 2)?;
                let y = &outs.first().ok_or("no output")?.shape;
                transpose::output_fits(c, s[0], s[1], y)?;
                expect(outs, &[(y.clone(), DType::F32)])
            }
            // dy, w → dx: the conv of dy by w
            Kind::ConvTransposeBackwardData(c) => {
                let s = shapes(ins, 2)?;
                let dx = &outs.first().ok_or("no output")?.shape;
                transpose::output_fits(c, dx, s[1], s[0])
            }
            // dy, x → dw
            Kind::ConvTransposeBackwardWeight(c) => {
                let s = shapes(ins, 2)?;
                let dw = &outs.first().ok_or("no output")?.shape;
                transpose::output_fits(c, s[1], dw, s[0])
            }
            Kind::BiasGrad(_) => {
                let dy = shapes(ins, 1)?[0];
                let c = *dy.get(1).ok_or("dy has no axis 1")?;
                expect(outs, &[(vec![c], DType::F32)])
            }
            Kind::ConvChain(chain) => {
                let mut x = shapes(ins, 1)?[0].to_vec();
                let mut at = 1;
                for stage in &chain.stages {
                    let c = stage
                        .conv
                        .as_ref()
                        .ok_or("a stage without conv attributes")?;
                    let w = ins.get(at).ok_or("a stage without its weight")?;
                    x = forward(c, &x, &w.shape)?;
                    if stage.int8 {
                        int8_weight(ins, at, x[1])?;
                    }
                    at += 1 + stage.int8 as usize + stage.bias as usize;
                }
                if at != ins.len() {
                    return Err(format!("{} inputs, the stages read {at}", ins.len()));
                }
                expect(outs, &[(x, DType::F32)])
            }
            _ => Err("not a conv op".into()),
        }
    }

    fn params(&self, kind: &Kind, _node: &Node, _graph: &Graph) -> &'static [usize] {
        match kind {
            Kind::Conv(_) | Kind::ConvTranspose(_) => &[1, 2],
            _ => &[],
        }
    }

    fn layer(&self, _node: &Node, _graph: &Graph) -> Option<LayerClass> {
        // A conv actc has no kernel for (not 2-D) counts too, so the count is the model's;
        // so does a ConvTranspose (a decoder's convs are layers like the encoder's).
        Some(LayerClass::Conv)
    }

    fn differentiable(&self, kind: &Kind, _node: &Node, _graph: &Graph) -> bool {
        matches!(kind, Kind::Conv(_) | Kind::ConvTranspose(_))
    }

    /// A transposed conv is the input gradient of a conv: that conv's forward gives its dx,
    /// and that conv's weight gradient (dy as the conv's input, x as its output gradient)
    /// its dw.
    fn backward(&self, kind: &Kind, ad: &mut Backward) {
        let (dy, x) = (ad.dy, ad.input(0));
        let (data, weight, weight_inputs) = match kind {
            Kind::Conv(c) => (
                Kind::ConvBackwardData(c.clone()),
                Kind::ConvBackwardWeight(c.clone()),
                vec![x, dy],
            ),
            Kind::ConvTranspose(c) => (
                Kind::ConvTransposeBackwardData(c.clone()),
                Kind::ConvTransposeBackwardWeight(c.clone()),
                vec![dy, x],
            ),
            _ => unreachable!("only Conv and ConvTranspose are differentiable"),
        };
        if ad.needs(0) {
            ad.grad(0, "grad_input", data, vec![dy, ad.input(1)]);
        }
        if ad.needs(1) {
            ad.grad(1, "grad_weight", weight, weight_inputs);
        }
        if ad.needs(2) {
            ad.grad(2, "grad_bias", Kind::BiasGrad(Empty {}), vec![dy]);
        }
    }

    fn to_onnx(&self, kind: &Kind, out: &mut OnnxOut) -> std::result::Result<(), String> {
        let c = match kind {
            Kind::Conv(c) => c,
            Kind::ConvTranspose(c) => return transpose::to_onnx(c, out),
            _ => return Err("only Conv and ConvTranspose have an ONNX form".into()),
        };
        let i64s = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
        let attrs = vec![
            attr_ints("kernel_shape", &i64s(&c.kernel)),
            attr_ints("strides", &i64s(&c.strides)),
            attr_ints("pads", &i64s(&c.pads)),
            attr_ints("dilations", &i64s(&c.dilations)),
            attr_int("group", c.group as i64),
        ];
        out.node("Conv", out.inputs(), attrs);
        Ok(())
    }

    fn fuse_inference(&self, graph: &mut Graph, lanes: usize) {
        fuse::fuse(graph, lanes);
    }

    fn quantize_inference(&self, graph: &mut Graph) {
        quantize::quantize(graph);
    }

    fn low_rank(
        &self,
        kind: &Kind,
        graph: &mut Graph,
        n: NodeIndex,
        req: &Request,
    ) -> Result<Option<LayerReport>> {
        match kind {
            Kind::Conv(c) => lowrank::low_rank(c, graph, n, req),
            _ => Ok(None),
        }
    }

    fn adapter(
        &self,
        kind: &Kind,
        graph: &Graph,
        n: NodeIndex,
        rank: usize,
    ) -> Option<AdapterForm> {
        match kind {
            Kind::Conv(c) => lowrank::adapter(c, graph, n, rank),
            _ => None,
        }
    }

    fn saved_input(&self, kind: &Kind, x: &[usize]) -> Option<SavedInput> {
        match kind {
            Kind::ConvBackwardWeight(c) => Some(SavedInput {
                dims: x.to_vec(),
                conv: Some(c.clone()),
            }),
            _ => None,
        }
    }

    fn on_compressed(&self, kind: &Kind, c: Compressor) -> Option<Kind> {
        match kind {
            Kind::ConvBackwardWeight(conv) => {
                Some(Kind::ConvBackwardWeightCompressed(ops::CompressedConv {
                    conv: Some(conv.clone()),
                    compressor: Some(c),
                }))
            }
            _ => None,
        }
    }

    /// A transposed conv's weight gradient reads the inputs of its conv's, in their order:
    /// fused, it is that conv's.
    fn with_sgd(&self, kind: &Kind, ins: &[&Tensor], dw: &Tensor, sgd: &ops::Sgd) -> Option<Kind> {
        let (Kind::ConvBackwardWeight(c) | Kind::ConvTransposeBackwardWeight(c)) = kind else {
            return None;
        };
        sgd_fusable(c, &ins.first()?.dims(), dw, sgd, None)
    }

    fn flops(&self, kind: &Kind, ins: &[&[u64]], outs: &[&[u64]]) -> u64 {
        let numel = |s: Option<&&[u64]>| s.map_or(0, |s| s.iter().product::<u64>());
        let per_tap = |w: Option<&&[u64]>| w.map_or(0, |w| w.iter().skip(1).product::<u64>());
        match kind {
            Kind::Conv(_) => 2 * numel(outs.first()) * per_tap(ins.get(1)),
            Kind::ConvBackwardData(_) => 2 * numel(ins.first()) * per_tap(ins.get(1)),
            Kind::ConvBackwardWeight(_) => 2 * numel(ins.get(1)) * per_tap(outs.first()),
            // the conv it is the gradient of, whose output is x and whose input is dy
            Kind::ConvTranspose(_) => 2 * numel(ins.first()) * per_tap(ins.get(1)),
            Kind::ConvTransposeBackwardData(_) => 2 * numel(outs.first()) * per_tap(ins.get(1)),
            Kind::ConvTransposeBackwardWeight(_) => 2 * numel(ins.get(1)) * per_tap(outs.first()),
            _ => numel(outs.first()).max(numel(ins.first())),
        }
    }
}

/// The output shape of conv `c` over input `x` with weight `w`.
fn forward(c: &ops::Conv, x: &[usize], w: &[usize]) -> std::result::Result<Vec<usize>, String> {
    let ([n, ci, h, wd], [m, cig, kh, kw]) = (four(x)?, four(w)?);
    if c.group == 0 || ci != cig * c.group as usize || m % c.group as usize != 0 {
        return Err(format!(
            "input {x:?} and weight {w:?} do not fit group {}",
            c.group
        ));
    }
    if c.kernel[..] != [kh as u32, kw as u32] {
        return Err(format!("kernel {:?} but weight {w:?}", c.kernel));
    }
    let [oh, ow] = window_out([h, wd], [kh, kw], &c.strides, &c.dilations, &c.pads)?;
    Ok(vec![n, m, oh, ow])
}

/// An int8 weight at input `at`, its quantization (2, `c_out`) after it.
fn int8_weight(ins: &[&Tensor], at: usize, c_out: usize) -> std::result::Result<(), String> {
    let fits = ins[at].dtype == DType::I8
        && ins
            .get(at + 1)
            .is_some_and(|q| q.dtype == DType::F32 && q.shape == [2, c_out]);
    fits.then_some(())
        .ok_or_else(|| "an int8 weight without its (2, c_out) quantization after it".into())
}

fn four(s: &[usize]) -> std::result::Result<[usize; 4], String> {
    s.try_into().map_err(|_| format!("{s:?} is not 4-D"))
}

fn same(got: &[usize], want: &[usize], what: &str) -> std::result::Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{what} is {want:?}, the conv's geometry gives {got:?}"
        ))
    }
}

/// A conv weight gradient fused into its SGD update (`optim::Sgd::step_fused`), from the
/// input (`x`: its shape) or its compressed form: not depthwise, a 4-D weight, no Nesterov.
pub(super) fn sgd_fusable(
    c: &ops::Conv,
    x: &[u64],
    dw: &Tensor,
    sgd: &ops::Sgd,
    compressor: Option<Compressor>,
) -> Option<Kind> {
    let w = dw.dims();
    let fits = !sgd.nesterov && w.len() == 4 && !conv_geom(c, x, &w).is_depthwise();
    fits.then(|| {
        Kind::ConvBackwardWeightSgd(ops::ConvSgd {
            conv: Some(c.clone()),
            sgd: Some(sgd.clone()),
            compressor,
        })
    })
}
