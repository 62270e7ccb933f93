//! `ConvTranspose` (a decoder's learned upsampling): the input gradient of a conv, so it
//! runs and differentiates on the conv's kernels with the roles exchanged. Its attributes are
//! those of that conv (kernel, strides, pads, dilations, group), whose input has the
//! transposed conv's output shape and whose output has its input shape; output padding
//! (rows and columns past the last window, which only the bias reaches) is in the output's
//! shape.

use super::super::room::{Lowered, OnnxNode, OnnxOut};
use crate::bail;
use crate::error::Result;
use crate::onnx::shape::u32s;
use crate::onnx::{attr_int, attr_ints};
use actc_runtime::ops::{self, Kind};
use actc_runtime::plan::DType;

/// ONNX ConvTranspose → its output shape and, for 2-D with output padding below the
/// stride, the runtime op. Pads come from `pads`, or from `output_shape` or `auto_pad` as
/// the operator defines them.
pub fn import(n: &OnnxNode) -> Result<Lowered> {
    let (x, w) = (n.arg(0)?, n.arg(1)?);
    let (label, a) = (&n.label, &n.attrs);
    if x.rank() < 3 || w.rank() != x.rank() {
        bail!(
            "node '{label}' (ConvTranspose): input rank {} and weight rank {} do not fit",
            x.rank(),
            w.rank()
        );
    }
    let nd = x.rank() - 2;
    let group = a.int("group", 1);
    let g = usize::try_from(group)
        .ok()
        .filter(|&g| g >= 1)
        .ok_or_else(|| {
            crate::err!("node '{label}' (ConvTranspose): group {group} is not a positive number")
        })?;
    if x.shape[1] != w.shape[0] {
        bail!(
            "node '{label}' (ConvTranspose): input has {} channels but the weight {:?} expects {}; check the input shape",
            x.shape[1],
            w.shape,
            w.shape[0]
        );
    }
    if w.shape[0] % g != 0 {
        bail!(
            "node '{label}' (ConvTranspose): group {g} does not divide the {} input channels",
            w.shape[0]
        );
    }
    let kernel = &w.shape[2..];
    if kernel.contains(&0) {
        bail!("node '{label}' (ConvTranspose): a kernel of {kernel:?} has an empty axis");
    }
    if let Some(k) = a.ints("kernel_shape")
        && k.iter().map(|&v| v as usize).ne(kernel.iter().copied())
    {
        bail!(
            "node '{label}' (ConvTranspose): kernel_shape {k:?} but the weight is {:?}",
            w.shape
        );
    }
    let ints = |name: &str, len: usize, default: i64, least: i64| -> Result<Vec<usize>> {
        let v = a.ints(name).unwrap_or_else(|| vec![default; len]);
        if v.len() != len {
            bail!("node '{label}' (ConvTranspose): {name} {v:?} does not fit {nd} spatial axes");
        }
        if let Some(bad) = v.iter().find(|&&x| x < least || x > 1 << 20) {
            bail!(
                "node '{label}' (ConvTranspose): {name} {v:?} holds {bad}; each must be at least {least}"
            );
        }
        Ok(v.iter().map(|&x| x as usize).collect())
    };
    let strides = ints("strides", nd, 1, 1)?;
    let dil = ints("dilations", nd, 1, 1)?;
    let out_pad = ints("output_padding", nd, 0, 0)?;
    let mut pads = ints("pads", 2 * nd, 0, 0)?;
    let auto = a.string("auto_pad", "NOTSET");
    // output_shape may also list N and C.
    let wanted = a
        .ints("output_shape")
        .map(|v| v[v.len().saturating_sub(nd)..].to_vec());
    if wanted.as_ref().is_some_and(|v| v.len() != nd) {
        bail!("node '{label}' (ConvTranspose): output_shape does not fit {nd} spatial axes");
    }
    if x.shape[2..].contains(&0) {
        bail!(
            "node '{label}' (ConvTranspose): its input {:?} is empty",
            x.shape
        );
    }
    let channels = w.shape[1].checked_mul(g).ok_or_else(|| {
        crate::err!("node '{label}' (ConvTranspose): group {g} is too large for its weight")
    })?;
    let mut y = vec![x.shape[0], channels];
    for i in 0..nd {
        // The output before padding is removed.
        let full = strides[i] * (x.shape[2 + i] - 1) + out_pad[i] + (kernel[i] - 1) * dil[i] + 1;
        let target = match (&wanted, auto.as_str()) {
            (Some(v), _) => Some(v[i]),
            (None, "SAME_UPPER" | "SAME_LOWER") => Some((x.shape[2 + i] * strides[i]) as i64),
            (None, "VALID") => {
                pads[i] = 0;
                pads[i + nd] = 0;
                None
            }
            (None, "NOTSET") => None,
            (None, other) => {
                bail!("node '{label}' (ConvTranspose): auto_pad '{other}' is not an ONNX mode")
            }
        };
        if let Some(t) = target {
            let total = full as i64 - t;
            if t < 1 || total < 0 {
                bail!(
                    "node '{label}' (ConvTranspose): output size {t} on axis {} is not between 1 and {full}, what the input gives",
                    i + 2
                );
            }
            let (small, big) = (total as usize / 2, total as usize - total as usize / 2);
            (pads[i], pads[i + nd]) = match auto.as_str() {
                "SAME_UPPER" => (small, big),
                _ => (big, small),
            };
        }
        match full.checked_sub(pads[i] + pads[i + nd]).filter(|&o| o > 0) {
            Some(o) => y.push(o),
            None => bail!(
                "node '{label}' (ConvTranspose): pads {pads:?} leave no output of the {full} the input gives on axis {}",
                i + 2
            ),
        }
    }
    let outputs = vec![(y, DType::F32)];
    // The kernels take the output padding in the output's shape, which the conv it is the
    // gradient of sees only while it stays below the stride.
    if nd != 2 || (0..nd).any(|i| out_pad[i] >= strides[i]) {
        return Ok(Lowered::onnx(outputs));
    }
    let conv = ops::Conv {
        kernel: u32s(kernel),
        strides: u32s(&strides),
        pads: u32s(&pads),
        dilations: u32s(&dil),
        group: g as u32,
    };
    let inputs = (0..n.args.len().min(3)).collect();
    Ok(Lowered::kernel(outputs, Kind::ConvTranspose(conv), inputs))
}

/// The ONNX form: the conv's attributes, and the output padding the output's shape holds.
pub fn to_onnx(c: &ops::Conv, out: &mut OnnxOut) -> std::result::Result<(), String> {
    let (x, y) = (&out.ins[0].shape, &out.outs[0].shape);
    let at = |v: &[u32], i: usize, d: u32| v.get(i).copied().unwrap_or(d) as i64;
    let out_pad: Vec<i64> = (0..2)
        .map(|i| {
            let k = at(&c.kernel, i, 1);
            let unpadded =
                at(&c.strides, i, 1) * (x[2 + i] as i64 - 1) + (k - 1) * at(&c.dilations, i, 1) + 1
                    - at(&c.pads, i, 0)
                    - at(&c.pads, i + 2, 0);
            y[2 + i] as i64 - unpadded
        })
        .collect();
    let i64s = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    let mut attrs = vec![
        attr_ints("kernel_shape", &i64s(&c.kernel)),
        attr_ints("strides", &i64s(&c.strides)),
        attr_ints("pads", &i64s(&c.pads)),
        attr_ints("dilations", &i64s(&c.dilations)),
        attr_int("group", c.group as i64),
    ];
    if out_pad.iter().any(|&p| p != 0) {
        attrs.push(attr_ints("output_padding", &out_pad));
    }
    out.node("ConvTranspose", out.inputs(), attrs);
    Ok(())
}

/// The runtime op of a transposed conv `c` whose weight has shape `w` maps `x` to this
/// shape: the conv's input has it when the conv's output is `x`. (`super::forward` is that
/// conv's shape rule.)
pub fn output_fits(
    c: &ops::Conv,
    x: &[usize],
    w: &[usize],
    y: &[usize],
) -> std::result::Result<(), String> {
    let got = super::forward(c, y, w)?;
    if got != x {
        return Err(format!(
            "the transposed conv of {x:?} by {w:?} does not give {y:?} (its conv takes {y:?} to {got:?})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Data;
    use crate::onnx::attr_string;
    use crate::onnx::proto::{AttributeProto, NodeProto};
    use crate::ops::Arg;
    use actc_runtime::kernels::conv;
    use actc_runtime::planning::conv_geom;

    /// x = −8, −7, …, 9 as (1, 2, 3, 3) through one ConvTranspose whose weight is
    /// (k mod 5) − 2 for k = 0, 1, … (2, 2, 3, 3), or its first output channel per input
    /// channel when grouped: actc's import (pads from `auto_pad`, `output_shape`) and kernel
    /// against onnxruntime 1.32's output (integers, so exactly).
    #[test]
    fn import_and_kernel_give_onnxruntimes_values() {
        let x: Vec<f32> = (0..18).map(|v| v as f32 - 8.0).collect();
        let full: Vec<f32> = (0..36).map(|k| (k % 5) as f32 - 2.0).collect();
        let cases: [(Vec<AttributeProto>, [usize; 2], &[f32]); 5] = [
            (
                vec![
                    attr_ints("strides", &[2, 2]),
                    attr_string("auto_pad", "SAME_UPPER"),
                ],
                [6, 6],
                &[
                    17., 10., 14., 11., 11., 12., -9., -16., 8., -14., 7., -12., 24., 11., 7., 10.,
                    5., 9., -9., -10., 5., -8., 4., -6., 24., 8., 1., 7., -1., 6., -9., -4., 2.,
                    -2., 1., 0., -16., 17., -4., 16., -1., 15., -2., -9., -20., -9., -20., -9., 7.,
                    24., 19., 24., 19., 24., -8., -9., -20., -9., -20., -9., 10., 24., 19., 24.,
                    19., 24., -14., -9., -20., -9., -20., -9.,
                ],
            ),
            (
                vec![
                    attr_ints("strides", &[2, 2]),
                    attr_string("auto_pad", "SAME_LOWER"),
                ],
                [6, 6],
                &[
                    -16., 8., -14., 7., -12., 15., 11., 7., 10., 5., 9., -21., -10., 5., -8., 4.,
                    -6., 12., 8., 1., 7., -1., 6., -27., -4., 2., -2., 1., 0., 9., -14., 8., -16.,
                    9., -18., -9., -9., -20., -9., -20., -9., -12., 24., 19., 24., 19., 24., 9.,
                    -9., -20., -9., -20., -9., -6., 24., 19., 24., 19., 24., 6., -9., -20., -9.,
                    -20., -9., 0., 16., -4., 17., -7., 18., -18.,
                ],
            ),
            (
                vec![
                    attr_ints("strides", &[2, 2]),
                    attr_ints("output_shape", &[6, 5]),
                ],
                [6, 5],
                &[
                    -16., 8., -14., 7., -12., 11., 7., 10., 5., 9., -10., 5., -8., 4., -6., 8., 1.,
                    7., -1., 6., -4., 2., -2., 1., 0., -14., 8., -16., 9., -18., -9., -20., -9.,
                    -20., -9., 24., 19., 24., 19., 24., -9., -20., -9., -20., -9., 24., 19., 24.,
                    19., 24., -9., -20., -9., -20., -9., 16., -4., 17., -7., 18.,
                ],
            ),
            (
                vec![
                    attr_ints("strides", &[2, 1]),
                    attr_ints("pads", &[0, 1, 2, 0]),
                    attr_ints("output_padding", &[1, 0]),
                    attr_ints("dilations", &[1, 2]),
                ],
                [6, 6],
                &[
                    16., 25., 11., 10., -4., -6., -9., -25., -14., 5., 16., 15., 24., 35., 10.,
                    -8., -19., -21., -9., -19., -8., 8., 13., 12., 24., 32., 7., -17., -25., -27.,
                    -9., -13., -2., 11., 10., 9., -14., 5., 16., 25., 11., 12., -4., -15., -9.,
                    -25., -14., -12., 8., 33., 24., 35., 10., 9., -10., -21., -9., -19., -8., -6.,
                    11., 36., 24., 32., 7., 6., -16., -27., -9., -13., -2., 0.,
                ],
            ),
            (
                vec![
                    attr_ints("strides", &[2, 2]),
                    attr_ints("pads", &[1, 1, 1, 1]),
                    attr_ints("output_padding", &[1, 1]),
                    attr_int("group", 2),
                ],
                [6, 6],
                &[
                    -16., 9., -14., 8., -12., 12., 5., 7., 4., 5., 3., -6., -10., 6., -8., 5., -6.,
                    6., 2., 1., 1., -1., 0., -3., -4., 3., -2., 2., 0., 0., 0., -1., 0., -1., 0.,
                    0., 0., -1., 0., -1., 0., 3., 6., 0., 6., 0., 6., -15., 0., -1., 0., -1., 0.,
                    6., 6., 0., 6., 0., 6., -24., 0., -1., 0., -1., 0., 9., -14., 9., -16., 10.,
                    -18., -9.,
                ],
            ),
        ];
        for (attribute, hw, want) in cases {
            let grouped = attribute.iter().any(|a| a.name() == "group");
            let (w, w_shape) = if grouped {
                let w: Vec<f32> = (0..2).flat_map(|c| full[c * 18..][..9].to_vec()).collect();
                (w, vec![2, 1, 3, 3])
            } else {
                (full.clone(), vec![2, 2, 3, 3])
            };
            let label = format!("{attribute:?}");
            let node = NodeProto {
                op_type: Some("ConvTranspose".into()),
                attribute,
                ..Default::default()
            };
            let args = [
                Arg {
                    shape: vec![1, 2, 3, 3],
                    dtype: DType::F32,
                    data: None,
                },
                Arg {
                    shape: w_shape.clone(),
                    dtype: DType::F32,
                    data: Some(Data::F32(w.clone().into())),
                },
            ];
            let lowered = import(&OnnxNode::new(&node, &args, 13)).unwrap();
            let y = &lowered.outputs[0].0;
            assert_eq!(y[2..], hw, "{label}");
            let Some((Kind::ConvTranspose(c), _)) = lowered.kernel else {
                panic!("{label}: no kernel");
            };
            let u64s = |s: &[usize]| s.iter().map(|&d| d as u64).collect::<Vec<_>>();
            let g = conv_geom(&c, &u64s(y), &u64s(&w_shape));
            let mut ws = vec![0.0; conv::workspace_len(&g)];
            let mut out = vec![f32::NAN; g.input_len()];
            conv::transpose_forward(&g, &x, &w, None, &mut out, &mut ws);
            assert_eq!(out, want, "{label}");
        }
    }
}
