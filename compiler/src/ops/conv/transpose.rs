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
