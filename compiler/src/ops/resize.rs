//! Resizing: ONNX `Resize` (opset 10 and 11+) and `Upsample` (opsets 7–9) over the two
//! spatial axes of an NCHW tensor, nearest or (bi)linear, with its backward (the adjoint:
//! each dy entry added back to the inputs it was interpolated from, with the same weights).
//!
//! actc runs what PyTorch's `F.interpolate` exports (nearest: asymmetric and floor; bilinear:
//! half_pixel, pytorch_half_pixel or align_corners) and the other coordinate transforms and
//! nearest modes of the two modes, once the scales or sizes are constant. Anything else — cubic, tf_crop_and_resize
//! and half_pixel_symmetric, antialiased downsampling, a kept aspect ratio, a resized batch
//! or channel axis, other ranks, Upsample or Resize-10 downsampling — stays an ONNX node,
//! which runs in the frozen prefix (tract) and cannot train through.

use super::room::{Backward, Lowered, OnnxNode, OnnxOut, Room, expect, f32_like, shapes};
use crate::bail;
use crate::error::Result;
use crate::ir::{Data, Graph, Node, Tensor};
use crate::onnx::{attr_string, shape::norm_axis};
use actc_runtime::ops::{self as rt, Kind, NearestMode, ResizeCoordinates, ResizeMode};
use actc_runtime::plan::DType;

pub struct Resizes;

impl Room for Resizes {
    fn onnx_ops(&self) -> &'static [&'static str] {
        &["Resize", "Upsample"]
    }

    fn owns(&self, kind: &Kind) -> bool {
        matches!(kind, Kind::Resize(_) | Kind::ResizeBackward(_))
    }

    fn import(&self, n: &OnnxNode) -> Result<Lowered> {
        let x = n.arg(0)?;
        let target = target(n)?;
        let outputs = vec![(target.shape.clone(), x.dtype)];
        Ok(match kernel_attrs(n, &target) {
            Some(r) => Lowered::kernel(outputs, Kind::Resize(r), vec![0]),
            None => Lowered::onnx(outputs),
        })
    }

    fn check(
        &self,
        kind: &Kind,
        ins: &[&Tensor],
        outs: &[&Tensor],
    ) -> std::result::Result<(), String> {
        let x = shapes(ins, 1)?[0];
        match kind {
            Kind::Resize(r) => {
                let y = &outs.first().ok_or("no output")?.shape;
                fits(r, x, y)?;
                expect(outs, &[f32_like(y)])
            }
            // dy → dx
            Kind::ResizeBackward(r) => {
                let dx = &outs.first().ok_or("no output")?.shape;
                fits(r, dx, x)?;
                expect(outs, &[f32_like(dx)])
            }
            _ => Err("not a resize".into()),
        }
    }

    fn differentiable(&self, kind: &Kind, _node: &Node, _graph: &Graph) -> bool {
        matches!(kind, Kind::Resize(_))
    }

    fn backward(&self, kind: &Kind, ad: &mut Backward) {
        let Kind::Resize(r) = kind else {
            unreachable!("differentiable admits the forward resize only")
        };
        if ad.needs(0) {
            let k = Kind::ResizeBackward(r.clone());
            ad.grad(0, "grad_input", k, vec![ad.dy]);
        }
    }

    /// Per output (dy) element: one copy (nearest), or four multiply-adds (linear).
    fn flops(&self, kind: &Kind, ins: &[&[u64]], outs: &[&[u64]]) -> u64 {
        let numel = |s: Option<&&[u64]>| s.map_or(0, |s| s.iter().product::<u64>());
        let (r, n) = match kind {
            Kind::Resize(r) => (r, numel(outs.first())),
            Kind::ResizeBackward(r) => (r, numel(ins.first())),
            _ => return 0,
        };
        match r.mode() {
            ResizeMode::Nearest => n,
            ResizeMode::Linear => 8 * n,
        }
    }

    /// Opset 11 and later: scales when they give the output's size, else sizes (whose
    /// ratios are the scales the node was imported with).
    fn to_onnx(&self, kind: &Kind, out: &mut OnnxOut) -> std::result::Result<(), String> {
        let Kind::Resize(r) = kind else {
            return Err("only Resize has an ONNX form".into());
        };
        if out.opset < 11 {
            return Err(format!(
                "Resize needs opset 11, the model is at {}",
                out.opset
            ));
        }
        let (x, y) = (out.ins[0].shape.clone(), out.outs[0].shape.clone());
        let scales = [1.0, 1.0, r.scales[0], r.scales[1]];
        let by_scales = (0..4).all(|i| (x[i] as f32 * scales[i]).floor() as usize == y[i]);
        let roi = out.constant("roi", &[0], Data::F32(Vec::new().into()));
        let mut inputs = vec![out.inputs()[0].clone(), roi];
        if by_scales {
            inputs.push(out.constant("scales", &[4], Data::F32(scales.to_vec().into())));
        } else {
            let sizes: Vec<i64> = y.iter().map(|&d| d as i64).collect();
            inputs.push(String::new());
            inputs.push(out.constant("sizes", &[4], Data::I64(sizes.into())));
        }
        let attrs = vec![
            attr_string("mode", mode_name(r.mode())),
            attr_string(
                "coordinate_transformation_mode",
                coordinates_name(r.coordinates()),
            ),
            attr_string("nearest_mode", nearest_name(r.nearest())),
        ];
        out.node("Resize", inputs, attrs);
        Ok(())
    }
}

/// What the node resizes to: the output shape, and per axis the scale its coordinate
/// transform divides by (the given scale, or output / input when sizes are given).
struct Target {
    shape: Vec<usize>,
    scales: Vec<f32>,
    /// The aspect-ratio policy changed the sizes (opset 18's `keep_aspect_ratio_policy`).
    kept_aspect: bool,
}

/// The node's output shape and scales, from constant scales or sizes; an error naming the
/// node when they are not constant or do not fit the input.
fn target(n: &OnnxNode) -> Result<Target> {
    let (x, label, op) = (n.arg(0)?, &n.label, n.op());
    let rank = x.rank();
    // Where the scales and sizes are: Upsample-7 and -9, Resize-10 and Resize-11+.
    let (scales, sizes) = match (op, n.opset) {
        ("Upsample", ..=8) => {
            let scales = n.proto.attribute.iter().find(|a| a.name() == "scales");
            (scales.map(|a| a.floats.clone()), None)
        }
        ("Upsample", _) | ("Resize", ..=10) => (const_floats(n, 1)?, None),
        _ => (const_floats(n, 2)?, const_sizes(n, 3)?),
    };
    let axes = match n.attrs.ints("axes") {
        Some(axes) if n.opset >= 18 => axes
            .iter()
            .map(|&a| norm_axis(label, a, rank))
            .collect::<Result<Vec<_>>>()?,
        _ => (0..rank).collect(),
    };
    let per_axis = |len: usize, what: &str| {
        if len != axes.len() {
            bail!(
                "node '{label}' ({op}): {len} {what} for {} axes of a rank-{rank} input",
                axes.len()
            );
        }
        Ok(())
    };
    let mut shape = x.shape.clone();
    let mut factors = vec![1.0f32; rank];
    let mut kept_aspect = false;
    match (sizes, scales) {
        (Some(sizes), _) => {
            per_axis(sizes.len(), "sizes")?;
            if let Some(&bad) = sizes.iter().find(|&&s| s <= 0) {
                bail!("node '{label}' ({op}): size {bad} is not positive");
            }
            let policy = n.attrs.string("keep_aspect_ratio_policy", "stretch");
            let ratio = |i: usize| sizes[i] as f32 / x.shape[axes[i]].max(1) as f32;
            let common = match policy.as_str() {
                _ if n.opset < 18 => None,
                "stretch" => None,
                "not_larger" => Some((0..axes.len()).map(ratio).fold(f32::INFINITY, f32::min)),
                "not_smaller" => Some((0..axes.len()).map(ratio).fold(0.0, f32::max)),
                other => bail!(
                    "node '{label}' ({op}): keep_aspect_ratio_policy '{other}' is not an ONNX policy"
                ),
            };
            for (i, &a) in axes.iter().enumerate() {
                let (len, r) = (x.shape[a], ratio(i));
                match common {
                    // round half up, as the operator defines it
                    Some(c) => shape[a] = (c * len as f32 + 0.5).floor() as usize,
                    None => shape[a] = sizes[i] as usize,
                }
                factors[a] = common.unwrap_or(r);
            }
            kept_aspect = common.is_some();
        }
        (None, Some(scales)) => {
            per_axis(scales.len(), "scales")?;
            for (i, &a) in axes.iter().enumerate() {
                let s = scales[i];
                if !(s.is_finite() && s > 0.0) {
                    bail!("node '{label}' ({op}): scale {s} is not a positive number");
                }
                factors[a] = s;
                shape[a] = (x.shape[a] as f32 * s).floor() as usize;
            }
        }
        (None, None) => bail!(
            "node '{label}' ({op}): needs its scales or sizes constant once the input shape is fixed"
        ),
    }
    if shape.contains(&0) {
        bail!(
            "node '{label}' ({op}): output shape {shape:?} is empty for input shape {:?}; the input shape is too small for this model",
            x.shape
        );
    }
    Ok(Target {
        shape,
        scales: factors,
        kept_aspect,
    })
}

/// Input `i` as floats: `None` when absent or empty, an error when computed.
fn const_floats(n: &OnnxNode, i: usize) -> Result<Option<Vec<f32>>> {
    match n.args.get(i) {
        None => Ok(None),
        Some(a) => match &a.data {
            Some(d) if d.is_empty() => Ok(None),
            Some(d) => Ok(Some(d.as_f32())),
            None => bail!(
                "node '{}' ({}): its scales must be constant once the input shape is fixed, and are not",
                n.label,
                n.op()
            ),
        },
    }
}

fn const_sizes(n: &OnnxNode, i: usize) -> Result<Option<Vec<i64>>> {
    match n.args.get(i) {
        None => Ok(None),
        Some(a) => match a.ints() {
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => Ok(Some(v)),
            None => bail!(
                "node '{}' ({}): its sizes must be constant once the input shape is fixed, and are not",
                n.label,
                n.op()
            ),
        },
    }
}

/// The runtime op for the node, when actc's kernel computes what the node does.
fn kernel_attrs(n: &OnnxNode, t: &Target) -> Option<rt::Resize> {
    let x = n.args.first()?;
    let a = &n.attrs;
    let spatial_only = x.rank() == 4
        && x.dtype == DType::F32
        && t.shape[..2] == x.shape[..2]
        && t.scales[..2] == [1.0, 1.0]
        && !t.kept_aspect;
    let mode = match a.string("mode", "nearest").as_str() {
        "nearest" => ResizeMode::Nearest,
        "linear" | "bilinear" => ResizeMode::Linear,
        _ => return None,
    };
    let downsamples = t.scales.iter().any(|&s| s < 1.0);
    let (coordinates, nearest) = if n.op() == "Upsample" || n.opset < 11 {
        // Before opset 11: x = i / scale, nearest rounding down when upsampling (ONNX
        // Runtime rounds up when downsampling: not taken).
        if downsamples {
            return None;
        }
        (ResizeCoordinates::Asymmetric, NearestMode::Floor)
    } else {
        let coordinates = match a
            .string("coordinate_transformation_mode", "half_pixel")
            .as_str()
        {
            "half_pixel" => ResizeCoordinates::HalfPixel,
            "pytorch_half_pixel" => ResizeCoordinates::PytorchHalfPixel,
            "align_corners" => ResizeCoordinates::AlignCorners,
            "asymmetric" => ResizeCoordinates::Asymmetric,
            "tf_half_pixel_for_nn" => ResizeCoordinates::TfHalfPixelForNn,
            _ => return None,
        };
        let nearest = match a.string("nearest_mode", "round_prefer_floor").as_str() {
            "round_prefer_floor" => NearestMode::RoundPreferFloor,
            "round_prefer_ceil" => NearestMode::RoundPreferCeil,
            "floor" => NearestMode::Floor,
            "ceil" => NearestMode::Ceil,
            _ => return None,
        };
        // Antialiasing changes linear (and cubic) downsampling only.
        let antialias = n.opset >= 18 && a.int("antialias", 0) != 0;
        if antialias && downsamples && mode == ResizeMode::Linear {
            return None;
        }
        (coordinates, nearest)
    };
    spatial_only.then(|| rt::Resize {
        mode: mode as i32,
        coordinates: coordinates as i32,
        nearest: nearest as i32,
        scales: t.scales[2..].to_vec(),
    })
}

/// `check` helper: `r` resizes `x` (4-D) to `y`: N and C kept, each spatial size within
/// one of the input's times its scale (floored from scales, or the sizes whose ratio the
/// scale is).
fn fits(r: &rt::Resize, x: &[usize], y: &[usize]) -> std::result::Result<(), String> {
    let (&[n, c, hi, wi], &[n2, c2, ho, wo]) = (x, y) else {
        return Err(format!("a resize from {x:?} to {y:?}, not 4-D"));
    };
    let &[sh, sw] = &r.scales[..] else {
        return Err(format!("{} scales, not 2", r.scales.len()));
    };
    let near = |len: usize, s: f32, out: usize| (len as f64 * s as f64 - out as f64).abs() < 1.0;
    let known = ResizeMode::try_from(r.mode).is_ok()
        && ResizeCoordinates::try_from(r.coordinates).is_ok()
        && NearestMode::try_from(r.nearest).is_ok();
    if (n, c) != (n2, c2) || !near(hi, sh, ho) || !near(wi, sw, wo) || !known || ho * wo == 0 {
        return Err(format!("a resize from {x:?} to {y:?} by {:?}", r.scales));
    }
    Ok(())
}

fn mode_name(m: ResizeMode) -> &'static str {
    match m {
        ResizeMode::Nearest => "nearest",
        ResizeMode::Linear => "linear",
    }
}

fn coordinates_name(c: ResizeCoordinates) -> &'static str {
    match c {
        ResizeCoordinates::HalfPixel => "half_pixel",
        ResizeCoordinates::PytorchHalfPixel => "pytorch_half_pixel",
        ResizeCoordinates::AlignCorners => "align_corners",
        ResizeCoordinates::Asymmetric => "asymmetric",
        ResizeCoordinates::TfHalfPixelForNn => "tf_half_pixel_for_nn",
    }
}

fn nearest_name(m: NearestMode) -> &'static str {
    match m {
        NearestMode::RoundPreferFloor => "round_prefer_floor",
        NearestMode::RoundPreferCeil => "round_prefer_ceil",
        NearestMode::Floor => "floor",
        NearestMode::Ceil => "ceil",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::NodeProto;
    use crate::ops::{Arg, OnnxNode};
    use actc_runtime::kernels::resize::fit as resize_fit;
    use actc_runtime::kernels::resize::forward;

    fn arg(shape: &[usize], data: Option<Data>) -> Arg {
        Arg {
            shape: shape.to_vec(),
            dtype: match data {
                Some(Data::I64(_)) => DType::I64,
                _ => DType::F32,
            },
            data,
        }
    }

    /// `x` = 0, 1, …, 11 as (1, 1, 3, 4) through one node, imported and run by actc: its
    /// output shape and values.
    fn run(node: NodeProto, args: &[Arg], opset: i64) -> (Vec<usize>, Vec<f32>) {
        let lowered = Resizes.import(&OnnxNode::new(&node, args, opset)).unwrap();
        let y = lowered.outputs[0].0.clone();
        let Some((Kind::Resize(r), _)) = lowered.kernel else {
            panic!("{node:?}: no kernel");
        };
        let u64s = |s: &[usize]| s.iter().map(|&d| d as u64).collect::<Vec<_>>();
        let g = resize_fit(&r, &[1, 1, 3, 4], &u64s(&y)).unwrap();
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut out = vec![f32::NAN; g.output_len()];
        forward(&g, &x, &mut out);
        (y[2..].to_vec(), out)
    }

    /// Every coordinate transform and nearest mode, scales and sizes, opsets 11 and 13,
    /// against onnxruntime 1.32's outputs on the same node (the numbers below).
    #[test]
    fn import_and_kernel_give_onnxruntimes_values() {
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Option<[f32; 4]>,
            Option<[i64; 4]>,
            i64,
            [usize; 2],
            &'a [f32],
        );
        let cases: &[Case] = &[
            (
                "nearest",
                "half_pixel",
                "round_prefer_floor",
                Some([1.0, 1.0, 1.7, 0.6]),
                None,
                13,
                [5, 2],
                &[0.0, 2.0, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 8.0, 10.0],
            ),
            (
                "nearest",
                "align_corners",
                "round_prefer_ceil",
                None,
                Some([1, 1, 5, 7]),
                13,
                [5, 7],
                &[
                    0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 5.0, 5.0, 6.0, 6.0, 7.0, 7.0, 4.0, 5.0,
                    5.0, 6.0, 6.0, 7.0, 7.0, 8.0, 9.0, 9.0, 10.0, 10.0, 11.0, 11.0, 8.0, 9.0, 9.0,
                    10.0, 10.0, 11.0, 11.0,
                ],
            ),
            (
                "nearest",
                "tf_half_pixel_for_nn",
                "ceil",
                Some([1.0, 1.0, 2.5, 1.5]),
                None,
                11,
                [7, 6],
                &[
                    5.0, 5.0, 6.0, 7.0, 7.0, 7.0, 5.0, 5.0, 6.0, 7.0, 7.0, 7.0, 5.0, 5.0, 6.0, 7.0,
                    7.0, 7.0, 9.0, 9.0, 10.0, 11.0, 11.0, 11.0, 9.0, 9.0, 10.0, 11.0, 11.0, 11.0,
                    9.0, 9.0, 10.0, 11.0, 11.0, 11.0, 9.0, 9.0, 10.0, 11.0, 11.0, 11.0,
                ],
            ),
            (
                "nearest",
                "pytorch_half_pixel",
                "floor",
                None,
                Some([1, 1, 1, 5]),
                13,
                [1, 5],
                &[0.0, 0.0, 1.0, 2.0, 3.0],
            ),
            (
                "nearest",
                "asymmetric",
                "round_prefer_floor",
                Some([1.0, 1.0, 2.0, 0.5]),
                None,
                13,
                [6, 2],
                &[0.0, 2.0, 0.0, 2.0, 4.0, 6.0, 4.0, 6.0, 8.0, 10.0, 8.0, 10.0],
            ),
            (
                "linear",
                "half_pixel",
                "round_prefer_floor",
                Some([1.0, 1.0, 1.5, 0.75]),
                None,
                13,
                [4, 3],
                &[
                    0.16666669, 1.5, 2.8333333, 2.1666667, 3.5, 4.8333335, 4.833333, 6.1666665,
                    7.4999995, 7.4999995, 8.833332, 10.166666,
                ],
            ),
            (
                "linear",
                "pytorch_half_pixel",
                "round_prefer_floor",
                None,
                Some([1, 1, 1, 6]),
                13,
                [1, 6],
                &[0.0, 0.5, 1.1666666, 1.8333333, 2.5, 3.0],
            ),
            (
                "linear",
                "align_corners",
                "round_prefer_floor",
                None,
                Some([1, 1, 5, 3]),
                13,
                [5, 3],
                &[
                    0.0, 1.5, 3.0, 2.0, 3.5, 5.0, 4.0, 5.5, 7.0, 6.0, 7.5, 9.0, 8.0, 9.5, 11.0,
                ],
            ),
            (
                "linear",
                "asymmetric",
                "round_prefer_floor",
                Some([1.0, 1.0, 0.7, 1.6]),
                None,
                13,
                [2, 6],
                &[
                    0.0, 0.625, 1.25, 1.875, 2.5, 3.0, 5.714286, 6.339286, 6.9642863, 7.589286,
                    8.214285, 8.714285,
                ],
            ),
            (
                "linear",
                "tf_half_pixel_for_nn",
                "round_prefer_floor",
                Some([1.0, 1.0, 1.5, 2.0]),
                None,
                11,
                [4, 8],
                &[
                    1.5833333, 2.0833333, 2.5833333, 3.0833333, 3.5833335, 4.083333, 4.333333,
                    4.333333, 4.25, 4.75, 5.25, 5.75, 6.25, 6.75, 7.0, 7.0, 6.9166665, 7.416666,
                    7.9166665, 8.416666, 8.916666, 9.416666, 9.666666, 9.666666, 8.25, 8.75, 9.25,
                    9.75, 10.25, 10.75, 11.0, 11.0,
                ],
            ),
        ];
        for &(mode, coordinates, nearest, scales, sizes, opset, hw, want) in cases {
            let node = NodeProto {
                op_type: Some("Resize".into()),
                attribute: vec![
                    attr_string("mode", mode),
                    attr_string("coordinate_transformation_mode", coordinates),
                    attr_string("nearest_mode", nearest),
                ],
                ..Default::default()
            };
            let empty = || arg(&[0], Some(Data::F32(Vec::new().into())));
            let mut args = vec![arg(&[1, 1, 3, 4], None), empty()];
            args.push(match scales {
                Some(s) => arg(&[4], Some(Data::F32(s.to_vec().into()))),
                None => empty(),
            });
            if let Some(s) = sizes {
                args.push(arg(&[4], Some(Data::I64(s.to_vec().into()))));
            }
            let (shape, got) = run(node, &args, opset);
            assert_eq!(shape, hw, "{mode} {coordinates} {nearest}");
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{mode} {coordinates} {nearest} [{i}]: {g} vs onnxruntime's {w}"
                );
            }
        }
    }

    /// Before opset 11 (Resize-10, Upsample-9): x = i / scale, nearest rounding down.
    #[test]
    fn legacy_opsets_give_onnxruntimes_values() {
        let scales = arg(&[4], Some(Data::F32(vec![1.0, 1.0, 2.0, 1.5].into())));
        let args = [arg(&[1, 1, 3, 4], None), scales];
        let node = |op: &str, mode: &str| NodeProto {
            op_type: Some(op.into()),
            attribute: vec![attr_string("mode", mode)],
            ..Default::default()
        };
        let (shape, got) = run(node("Resize", "linear"), &args, 10);
        assert_eq!(shape, [6, 6]);
        let want = [
            0.0, 0.6666667, 1.3333334, 2.0, 2.6666667, 3.0, 2.0, 2.666667, 3.3333335, 4.0,
            4.6666665, 5.0, 4.0, 4.666667, 5.333333, 6.0, 6.6666665, 7.0, 6.0, 6.666667, 7.333333,
            8.0, 8.666666, 9.0, 8.0, 8.666666, 9.333333, 10.0, 10.666666, 11.0, 8.0, 8.666666,
            9.333333, 10.0, 10.666666, 11.0,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-5 * w.max(1.0), "{got:?}");
        }
        let (shape, got) = run(node("Upsample", "nearest"), &args, 9);
        assert_eq!(shape, [6, 6]);
        let want = [
            0.0, 0.0, 1.0, 2.0, 2.0, 3.0, 0.0, 0.0, 1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 5.0, 6.0, 6.0,
            7.0, 4.0, 4.0, 5.0, 6.0, 6.0, 7.0, 8.0, 8.0, 9.0, 10.0, 10.0, 11.0, 8.0, 8.0, 9.0,
            10.0, 10.0, 11.0,
        ];
        assert_eq!(got, want);
    }
}
