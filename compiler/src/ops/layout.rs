//! Data movement: `Reshape` (and `Flatten`, `Squeeze`, `Unsqueeze`, which are reshapes),
//! `Transpose`, `Concat`, constant `Pad`, `Slice` with unit steps and `Gather` at constant
//! indices (a transformer's q, k, v and its class token), each with its gradient: a slice
//! and a zero pad are each other's, a gather's scatters back into zeros.

use super::room::{Backward, Lowered, OnnxNode, OnnxOut, Room, expect, shapes};
use crate::bail;
use crate::error::Result;
use crate::ir::Data;
use crate::ir::{Graph, Node, Tensor};
use crate::onnx::shape::{self, norm_axis, reshape_shape, u32s, usizes};
use crate::onnx::{attr_int, attr_ints};
use actc_runtime::ops::{self, Empty, Kind};
use actc_runtime::plan::DType;

pub struct Layout;

impl Room for Layout {
    fn onnx_ops(&self) -> &'static [&'static str] {
        &[
            "Reshape",
            "Flatten",
            "Squeeze",
            "Unsqueeze",
            "Transpose",
            "Concat",
            "Pad",
            "Slice",
            "Gather",
        ]
    }

    fn owns(&self, kind: &Kind) -> bool {
        matches!(
            kind,
            Kind::Reshape(_)
                | Kind::Transpose(_)
                | Kind::Concat(_)
                | Kind::Pad(_)
                | Kind::Slice(_)
                | Kind::Gather(_)
                | Kind::GatherBackward(_)
        )
    }

    fn import(&self, n: &OnnxNode) -> Result<Lowered> {
        let x = n.arg(0)?;
        let a = &n.attrs;
        match n.op() {
            "Transpose" => {
                let y = transpose_shape(n)?;
                let perm = a
                    .ints("perm")
                    .map(|p| usizes(&p))
                    .unwrap_or_else(|| (0..x.rank()).rev().collect());
                let kind = Kind::Transpose(ops::Perm { perm: u32s(&perm) });
                Ok(Lowered::kernel(vec![(y, x.dtype)], kind, vec![0]))
            }
            "Concat" => {
                let y = concat_shape(n)?;
                let axis = norm_axis(&n.label, a.int("axis", 0), x.rank())? as i32;
                let kind = Kind::Concat(ops::Axis { axis });
                Ok(Lowered::kernel(
                    vec![(y, x.dtype)],
                    kind,
                    (0..n.args.len()).collect(),
                ))
            }
            "Pad" => {
                let outputs = vec![(pad_shape(n)?, x.dtype)];
                if a.string("mode", "constant") != "constant" {
                    return Ok(Lowered::onnx(outputs));
                }
                let (pads, value) = if n.opset >= 11 {
                    (n.args[1].ints(), n.const_f32(2, 0.0))
                } else {
                    (a.ints("pads"), Some(a.float("value", 0.0)))
                };
                let axes_given = n.opset >= 18
                    && n.args.len() > 3
                    && !n.args[3].data.as_ref().is_some_and(|d| d.is_empty());
                match (pads, value) {
                    (Some(p), Some(value)) if !axes_given && p.iter().all(|&v| v >= 0) => {
                        let kind = Kind::Pad(ops::Pad {
                            pads: u32s(&usizes(&p)),
                            value,
                        });
                        Ok(Lowered::kernel(outputs, kind, vec![0]))
                    }
                    _ => Ok(Lowered::onnx(outputs)),
                }
            }
            "Slice" => {
                let outputs = shape::infer(n)?;
                let y = &outputs[0].0;
                let starts = match shape::slice_starts(n, &x.shape)? {
                    // Cutting the batch would change what a micro-batch of it computes.
                    Some(st) if x.dtype == DType::F32 && st[0] == 0 && y[0] == x.shape[0] => st,
                    _ => return Ok(Lowered::onnx(outputs)),
                };
                let kind = Kind::Slice(ops::Slices {
                    starts: u32s(&starts),
                });
                Ok(Lowered::kernel(outputs, kind, vec![0]))
            }
            "Gather" => {
                let outputs = shape::infer(n)?;
                let axis = norm_axis(&n.label, a.int("axis", 0), x.rank())?;
                let (len, idx) = (x.shape[axis] as i64, n.arg(1)?);
                let Some(raw) = idx.ints().filter(|_| x.dtype == DType::F32) else {
                    return Ok(Lowered::onnx(outputs));
                };
                let mut indices = Vec::with_capacity(raw.len());
                for i in raw {
                    let j = if i < 0 { i + len } else { i };
                    if !(0..len).contains(&j) {
                        bail!(
                            "node '{}' (Gather): index {i} is outside axis {axis} of length {len}",
                            n.label
                        );
                    }
                    indices.push(j as u32);
                }
                let kind = Kind::Gather(ops::Gather {
                    axis: axis as u32,
                    indices,
                });
                Ok(Lowered::kernel(outputs, kind, vec![0]))
            }
            _ => {
                let y = reshape_like(n)?;
                Ok(Lowered::kernel(
                    vec![(y, x.dtype)],
                    Kind::Reshape(Empty {}),
                    vec![0],
                ))
            }
        }
    }

    fn check(
        &self,
        kind: &Kind,
        ins: &[&Tensor],
        outs: &[&Tensor],
    ) -> std::result::Result<(), String> {
        let s = shapes(ins, 1)?;
        let y = &outs.first().ok_or("no output")?.shape;
        match kind {
            Kind::Reshape(_) => {
                let (n, m) = (s[0].iter().product::<usize>(), y.iter().product::<usize>());
                if n != m {
                    return Err(format!("{:?} has {n} elements, {y:?} has {m}", s[0]));
                }
                expect(outs, &[(y.clone(), ins[0].dtype)])
            }
            Kind::Transpose(p) => {
                let want: Option<Vec<usize>> = p
                    .perm
                    .iter()
                    .map(|&i| s[0].get(i as usize).copied())
                    .collect();
                match want {
                    Some(w) if p.perm.len() == s[0].len() => expect(outs, &[(w, ins[0].dtype)]),
                    _ => Err(format!("perm {:?} does not fit {:?}", p.perm, s[0])),
                }
            }
            Kind::Concat(a) => {
                let axis = a.axis as usize;
                let mut want = s[0].to_vec();
                if axis >= want.len() {
                    return Err(format!("axis {axis} of {want:?}"));
                }
                want[axis] = s.iter().map(|x| x.get(axis).copied().unwrap_or(0)).sum();
                expect(outs, &[(want, DType::F32)])
            }
            Kind::Pad(p) => {
                let r = s[0].len();
                if p.pads.len() != 2 * r {
                    return Err(format!("{} pads for rank {r}", p.pads.len()));
                }
                let want = (0..r)
                    .map(|i| s[0][i] + (p.pads[i] + p.pads[i + r]) as usize)
                    .collect();
                expect(outs, &[(want, DType::F32)])
            }
            // dy → the window of dy starting at `starts` with the output's extents
            Kind::Slice(sl) => {
                let fits = sl.starts.len() == y.len()
                    && y.len() == s[0].len()
                    && (0..y.len()).all(|i| sl.starts[i] as usize + y[i] <= s[0][i]);
                if fits {
                    Ok(())
                } else {
                    Err(format!(
                        "{y:?} at {:?} does not fit in {:?}",
                        sl.starts, s[0]
                    ))
                }
            }
            Kind::Gather(g) => gather_fits(g, s[0], y),
            // dy → dx of the gathered tensor's shape
            Kind::GatherBackward(g) => gather_fits(g, y, s[0]),
            _ => Err("not a layout op".into()),
        }
    }

    fn mixes_batch(&self, kind: &Kind) -> bool {
        match kind {
            Kind::Transpose(p) => p.perm.first().is_some_and(|&a| a != 0),
            Kind::Concat(a) => a.axis == 0,
            Kind::Gather(g) | Kind::GatherBackward(g) => g.axis == 0,
            Kind::Pad(p) => {
                p.pads.first().is_some_and(|&v| v != 0)
                    || p.pads.get(p.pads.len() / 2).is_some_and(|&v| v != 0)
            }
            _ => false,
        }
    }

    fn differentiable(&self, kind: &Kind, _node: &Node, _graph: &Graph) -> bool {
        !matches!(kind, Kind::GatherBackward(_))
    }

    fn backward(&self, kind: &Kind, ad: &mut Backward) {
        let dy = ad.dy;
        match kind {
            Kind::Reshape(_) => {
                if ad.needs(0) {
                    ad.grad(0, "grad_input", Kind::Reshape(Empty {}), vec![dy]);
                }
            }
            Kind::Transpose(p) => {
                if ad.needs(0) {
                    let mut inverse = vec![0u32; p.perm.len()];
                    for (i, &j) in p.perm.iter().enumerate() {
                        inverse[j as usize] = i as u32;
                    }
                    let k = Kind::Transpose(ops::Perm { perm: inverse });
                    ad.grad(0, "grad_input", k, vec![dy]);
                }
            }
            Kind::Concat(a) => {
                let axis = a.axis as usize;
                let rank = ad.shape(ad.output(0)).len();
                let mut offset = 0;
                for i in 0..ad.inputs().len() {
                    let width = ad.shape(ad.input(i))[axis];
                    if ad.needs(i) {
                        let mut starts = vec![0u32; rank];
                        starts[axis] = offset as u32;
                        let k = Kind::Slice(ops::Slices { starts });
                        ad.grad(i, &format!("grad_{i}"), k, vec![dy]);
                    }
                    offset += width;
                }
            }
            Kind::Pad(p) => {
                if ad.needs(0) {
                    let rank = ad.shape(ad.input(0)).len();
                    let starts = p.pads[..rank].to_vec();
                    ad.grad(
                        0,
                        "grad_input",
                        Kind::Slice(ops::Slices { starts }),
                        vec![dy],
                    );
                }
            }
            Kind::Slice(sl) => {
                if ad.needs(0) {
                    let (x, y) = (ad.shape(ad.input(0)), ad.shape(ad.output(0)));
                    let ends = (0..x.len()).map(|i| (x[i] - y[i]) as u32 - sl.starts[i]);
                    let pads = sl.starts.iter().copied().chain(ends).collect();
                    let k = Kind::Pad(ops::Pad { pads, value: 0.0 });
                    ad.grad(0, "grad_input", k, vec![dy]);
                }
            }
            Kind::Gather(g) => {
                if ad.needs(0) {
                    let k = Kind::GatherBackward(g.clone());
                    ad.grad(0, "grad_input", k, vec![dy]);
                }
            }
            _ => unreachable!("differentiable admits the forward layout ops only"),
        }
    }

    fn flops(&self, kind: &Kind, ins: &[&[u64]], outs: &[&[u64]]) -> u64 {
        let numel = |s: Option<&&[u64]>| s.map_or(0, |s| s.iter().product::<u64>());
        match kind {
            Kind::Reshape(_) => 0,
            _ => numel(outs.first()).max(numel(ins.first())),
        }
    }

    fn to_onnx(&self, kind: &Kind, out: &mut OnnxOut) -> std::result::Result<(), String> {
        let x = out.inputs();
        match kind {
            Kind::Reshape(_) => {
                // 0 copies the input's size on that axis: the batch stays free.
                let (from, to) = (&out.ins[0].shape, &out.outs[0].shape);
                let target: Vec<i64> = to
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| {
                        if i == 0 && from.first() == Some(&d) {
                            0
                        } else {
                            d as i64
                        }
                    })
                    .collect();
                let shape = out.constant("shape", &[target.len()], Data::I64(target.into()));
                out.node("Reshape", vec![x[0].clone(), shape], vec![]);
            }
            Kind::Transpose(p) => {
                let perm: Vec<i64> = p.perm.iter().map(|&v| v as i64).collect();
                out.node("Transpose", x, vec![attr_ints("perm", &perm)]);
            }
            Kind::Concat(a) => out.node("Concat", x, vec![attr_int("axis", a.axis as i64)]),
            Kind::Slice(sl) => {
                let (from, to) = (&out.ins[0].shape, &out.outs[0].shape);
                let axes: Vec<i64> = (0..to.len())
                    .filter(|&i| to[i] != from[i])
                    .map(|i| i as i64)
                    .collect();
                let at = |i: i64| sl.starts[i as usize] as i64;
                let starts: Vec<i64> = axes.iter().map(|&i| at(i)).collect();
                let ends: Vec<i64> = axes
                    .iter()
                    .map(|&i| at(i) + to[i as usize] as i64)
                    .collect();
                let n = axes.len();
                let inputs = vec![
                    x[0].clone(),
                    out.constant("starts", &[n], Data::I64(starts.into())),
                    out.constant("ends", &[n], Data::I64(ends.into())),
                    out.constant("axes", &[n], Data::I64(axes.into())),
                ];
                out.node("Slice", inputs, vec![]);
            }
            Kind::Gather(g) => {
                let idx: Vec<i64> = g.indices.iter().map(|&i| i as i64).collect();
                // A scalar index drops the axis.
                let dims = if out.outs[0].shape.len() < out.ins[0].shape.len() {
                    vec![]
                } else {
                    vec![idx.len()]
                };
                let indices = out.constant("indices", &dims, Data::I64(idx.into()));
                let attrs = vec![attr_int("axis", g.axis as i64)];
                out.node("Gather", vec![x[0].clone(), indices], attrs);
            }
            _ => return Err("no ONNX form".into()),
        }
        Ok(())
    }

    fn aliases_input(&self, kind: &Kind) -> bool {
        matches!(kind, Kind::Reshape(_))
    }
}

/// `check` helper: a gather along `g.axis` of `x` at indices inside it fills `y`.
fn gather_fits(g: &ops::Gather, x: &[usize], y: &[usize]) -> std::result::Result<(), String> {
    let axis = g.axis as usize;
    let len = *x.get(axis).ok_or(format!("axis {axis} of {x:?}"))?;
    if g.indices.iter().any(|&i| i as usize >= len) {
        return Err(format!("an index outside axis {axis} of {x:?}"));
    }
    let rows = x.iter().product::<usize>() / len.max(1) * g.indices.len();
    if y.iter().product::<usize>() != rows {
        return Err(format!(
            "{} rows of {x:?} do not fill {y:?}",
            g.indices.len()
        ));
    }
    Ok(())
}

/// The ONNX shape rules of the ops that are reshapes (`Reshape`, `Flatten`, `Squeeze`,
/// `Unsqueeze`).
fn reshape_like(n: &OnnxNode) -> Result<Vec<usize>> {
    let (args, opset, a, label) = (n.args, n.opset, &n.attrs, n.label.as_str());
    let x = n.arg(0)?;
    let need_const = |i: usize, what: &str| n.const_ints(i, what);
    let out = match n.op() {
        "Flatten" => {
            let axis = norm_axis(label, a.int("axis", 1), x.rank() + 1)?;
            let outer: usize = x.shape[..axis].iter().product();
            let inner: usize = x.shape[axis..].iter().product();
            vec![(vec![outer, inner], x.dtype)]
        }
        "Reshape" => {
            let target = need_const(1, "shape")?;
            vec![(
                reshape_shape(label, &x.shape, &target, a.int("allowzero", 0) != 0)?,
                x.dtype,
            )]
        }
        "Squeeze" => {
            let axes = if opset >= 13 && args.len() > 1 {
                Some(need_const(1, "axes")?)
            } else {
                a.ints("axes")
            };
            let axes: Vec<usize> = match axes {
                Some(ax) => ax
                    .iter()
                    .map(|&v| norm_axis(label, v, x.rank()))
                    .collect::<Result<_>>()?,
                None => (0..x.rank()).filter(|&i| x.shape[i] == 1).collect(),
            };
            let s = x
                .shape
                .iter()
                .enumerate()
                .filter(|(i, _)| !axes.contains(i))
                .map(|(_, &d)| d)
                .collect();
            vec![(s, x.dtype)]
        }
        "Unsqueeze" => {
            let axes = if opset >= 13 {
                need_const(1, "axes")?
            } else {
                a.ints("axes").unwrap_or_default()
            };
            let rank = x.rank() + axes.len();
            let mut axes: Vec<usize> = axes
                .iter()
                .map(|&v| norm_axis(label, v, rank))
                .collect::<Result<_>>()?;
            axes.sort_unstable();
            let mut s = x.shape.clone();
            for ax in axes {
                s.insert(ax, 1);
            }
            vec![(s, x.dtype)]
        }
        _ => unreachable!("the room lists the reshapes"),
    };
    Ok(out.into_iter().next().expect("one output").0)
}

fn transpose_shape(n: &OnnxNode) -> Result<Vec<usize>> {
    let (a, label) = (&n.attrs, n.label.as_str());
    let x = n.arg(0)?;
    let perm = match a.ints("perm") {
        Some(p) => usizes(&p),
        None => (0..x.rank()).rev().collect(),
    };
    if perm.len() != x.rank() {
        bail!(
            "node '{label}' (Transpose): perm {perm:?} does not fit rank {}",
            x.rank()
        );
    }
    Ok(perm.iter().map(|&p| x.shape[p]).collect())
}

fn concat_shape(n: &OnnxNode) -> Result<Vec<usize>> {
    let (args, a, label) = (n.args, &n.attrs, n.label.as_str());
    let x = n.arg(0)?;
    let axis = norm_axis(label, a.int("axis", 0), x.rank())?;
    let mut s = x.shape.clone();
    for other in &args[1..] {
        if other.rank() != x.rank()
            || other
                .shape
                .iter()
                .zip(&x.shape)
                .enumerate()
                .any(|(i, (p, q))| i != axis && p != q)
        {
            bail!(
                "node '{label}' (Concat): shapes {:?} and {:?} do not concatenate on axis {axis}",
                x.shape,
                other.shape
            );
        }
        s[axis] += other.shape[axis];
    }
    Ok(s)
}

fn pad_shape(n: &OnnxNode) -> Result<Vec<usize>> {
    let (args, opset, a, label) = (n.args, n.opset, &n.attrs, n.label.as_str());
    let x = n.arg(0)?;
    let need_const = |i: usize, what: &str| n.const_ints(i, what);
    let pads = if opset >= 11 {
        need_const(1, "pads")?
    } else {
        a.ints("pads").unwrap_or_default()
    };
    let axes = if opset >= 18 && args.len() > 3 && args[3].data.is_some() {
        args[3]
            .ints()
            .unwrap_or_default()
            .iter()
            .map(|&v| norm_axis(label, v, x.rank()))
            .collect::<Result<Vec<_>>>()?
    } else {
        (0..x.rank()).collect()
    };
    if pads.len() != 2 * axes.len() {
        bail!(
            "node '{label}' (Pad): {} pads for {} axes",
            pads.len(),
            axes.len()
        );
    }
    let mut s = x.shape.clone();
    for (j, &ax) in axes.iter().enumerate() {
        let v = s[ax] as i64 + pads[j] + pads[j + axes.len()];
        if v < 0 {
            bail!("node '{label}' (Pad): negative size on axis {ax}");
        }
        s[ax] = v as usize;
    }
    Ok(s)
}
