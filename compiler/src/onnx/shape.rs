//! Shape rules and constant evaluation of ONNX ops.
//!
//! Shapes are static once the input shape is fixed, so every tensor's shape is inferred here,
//! in the prefix as well as in the trainable part. Sub-graphs that compute shapes
//! (`Shape → Gather → Concat → Reshape`) and arithmetic on weights are evaluated, so later
//! passes see constants.

use super::Attrs;
use super::proto::NodeProto;
use crate::error::Result;
use crate::ir::Data;
use crate::ops::{Arg, OnnxNode, Out};
use crate::{bail, err};
use actc_runtime::plan::DType;
use ndarray::{ArrayD, Axis, IxDyn};
use std::sync::Arc;

/// The output shapes and types of `n`, an op no room imports, or an error naming the node.
pub fn infer(n: &OnnxNode) -> Result<Vec<Out>> {
    let (node, args, opset, a) = (n.proto, n.args, n.opset, &n.attrs);
    let label = n.label.as_str();
    let op = n.op();
    let arg = |i: usize| n.arg(i);
    let x = arg(0)?;
    let same = || Ok(vec![(x.shape.clone(), x.dtype)]);
    let need_const = |i: usize, what: &str| n.const_ints(i, what);
    let out = match op {
        "LpPool" => pool_shape(n)?,
        "GlobalMaxPool" | "GlobalLpPool" => {
            let mut s = x.shape[..2].to_vec();
            s.extend(std::iter::repeat_n(1, x.rank().saturating_sub(2)));
            vec![(s, x.dtype)]
        }
        "Tanh"
        | "Exp"
        | "Log"
        | "Sqrt"
        | "Neg"
        | "Abs"
        | "Sin"
        | "Cos"
        | "Erf"
        | "Reciprocal"
        | "Floor"
        | "Ceil"
        | "Round"
        | "Softplus"
        | "Softsign"
        | "Elu"
        | "Selu"
        | "Celu"
        | "Gelu"
        | "Mish"
        | "LogSoftmax"
        | "Hardmax"
        | "LRN"
        | "InstanceNormalization"
        | "Not"
        | "Sign"
        | "Identity"
        | "ThresholdedRelu"
        | "Tan"
        | "Atan"
        | "Asin"
        | "Acos"
        | "Sinh"
        | "Cosh"
        | "IsNaN"
        | "IsInf" => {
            let mut outs = same()?;
            if matches!(op, "Not" | "IsNaN" | "IsInf") {
                outs[0].1 = DType::I64;
            }
            outs
        }
        "Dropout" => {
            let mut outs = same()?;
            if node.output.len() > 1 {
                outs.push((x.shape.clone(), DType::I64));
            }
            outs
        }
        "Pow" | "Max" | "Min" | "Sum" | "Mean" | "Mod" | "Equal" | "Less" | "Greater"
        | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" | "Where" | "BitShift" => {
            let mut s = x.shape.clone();
            for other in &args[1..] {
                s = broadcast(label, &s, &other.shape)?;
            }
            let dtype = match op {
                "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or"
                | "Xor" => DType::I64,
                "Where" => arg(1)?.dtype,
                _ => x.dtype,
            };
            vec![(s, dtype)]
        }
        "Cast" => {
            let to = a.int("to", 1);
            vec![(
                x.shape.clone(),
                if matches!(to, 1 | 10 | 11 | 16) {
                    DType::F32
                } else {
                    DType::I64
                },
            )]
        }
        "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL2" | "ReduceL1"
        | "ReduceSumSquare" | "ReduceLogSumExp" | "ArgMax" | "ArgMin" => reduce_shape(n)?,
        "Shape" => {
            let r = x.rank() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = clamp(a.int("start", 0));
            let end = clamp(a.int("end", r));
            vec![(vec![end.saturating_sub(start)], DType::I64)]
        }
        "Size" => vec![(vec![], DType::I64)],
        "Gather" => {
            let idx = arg(1)?;
            let axis = norm_axis(label, a.int("axis", 0), x.rank())?;
            let mut s = x.shape[..axis].to_vec();
            s.extend(&idx.shape);
            s.extend(&x.shape[axis + 1..]);
            vec![(s, x.dtype)]
        }
        "Slice" => {
            let (starts, ends, axes, steps) = slice_params(node, a, args, opset, label)?;
            let mut s = x.shape.clone();
            for i in 0..starts.len() {
                let ax = norm_axis(label, axes[i], x.rank())?;
                let (lo, hi, step) = slice_range(starts[i], ends[i], steps[i], x.shape[ax]);
                s[ax] = slice_len(lo, hi, step);
            }
            vec![(s, x.dtype)]
        }
        "ConstantOfShape" => {
            let s = usizes(&need_const(0, "shape")?);
            let dtype = match a.tensor("value") {
                Some(t) if !matches!(t.data_type(), 1 | 10 | 11 | 16) => DType::I64,
                Some(_) | None => DType::F32,
            };
            vec![(s, dtype)]
        }
        "Expand" => {
            let target = usizes(&need_const(1, "shape")?);
            vec![(broadcast(label, &x.shape, &target)?, x.dtype)]
        }
        "Tile" => {
            let reps = usizes(&need_const(1, "repeats")?);
            vec![(
                x.shape.iter().zip(&reps).map(|(d, r)| d * r).collect(),
                x.dtype,
            )]
        }
        "Range" => {
            let (s, l, d) = (arg(0)?, arg(1)?, arg(2)?);
            match (&s.data, &l.data, &d.data) {
                (Some(s), Some(l), Some(d)) => {
                    let (s, l, d) = (
                        s.as_f32()[0] as f64,
                        l.as_f32()[0] as f64,
                        d.as_f32()[0] as f64,
                    );
                    let n = ((l - s) / d).ceil().max(0.0) as usize;
                    vec![(vec![n], x.dtype)]
                }
                _ => bail!("node '{label}' (Range): its inputs must be constant"),
            }
        }
        "Split" => {
            let axis = norm_axis(label, a.int("axis", 0), x.rank())?;
            let n = node.output.len();
            let split = if opset >= 13 && args.len() > 1 {
                args[1].ints()
            } else {
                a.ints("split")
            };
            let parts = match split {
                Some(p) => usizes(&p),
                None => {
                    let each = x.shape[axis].div_ceil(n);
                    (0..n)
                        .map(|i| each.min(x.shape[axis] - (each * i).min(x.shape[axis])))
                        .collect()
                }
            };
            parts
                .iter()
                .map(|&p| {
                    let mut s = x.shape.clone();
                    s[axis] = p;
                    (s, x.dtype)
                })
                .collect()
        }
        "DepthToSpace" | "SpaceToDepth" => {
            let b = a.int("blocksize", 1) as usize;
            let [n, c, h, w] = x.shape[..] else {
                bail!("node '{label}' ({op}): needs a 4-D input")
            };
            if op == "DepthToSpace" {
                vec![(vec![n, c / (b * b), h * b, w * b], x.dtype)]
            } else {
                vec![(vec![n, c * b * b, h / b, w / b], x.dtype)]
            }
        }
        other => bail!(
            "node '{label}': actc has no shape rule for op {other}, so it cannot plan memory around it; \
             open an issue with the model, or export the model with this part replaced by supported ops"
        ),
    };
    for (s, _) in &out {
        if s.contains(&0)
            && !matches!(
                op,
                "Shape"
                    | "Slice"
                    | "Concat"
                    | "Squeeze"
                    | "Unsqueeze"
                    | "Reshape"
                    | "Range"
                    | "ConstantOfShape"
            )
        {
            bail!(
                "node '{label}' ({op}): output shape {s:?} is empty for input shape {:?}; the input shape is too small for this model",
                x.shape
            );
        }
    }
    Ok(out)
}

/// Evaluates `node` when its result is a constant: all inputs constant (or, for `Shape`,
/// only the input's shape known). Returns `None` for ops that are not evaluated.
pub fn eval(n: &OnnxNode, outs: &[Out]) -> Result<Option<Vec<Data>>> {
    let (node, args, opset) = (n.proto, n.args, n.opset);
    let op = n.op();
    let label = n.label.as_str();
    if op == "Shape" {
        let r = args[0].rank() as i64;
        let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let a = Attrs::new(node);
        let (start, end) = (clamp(a.int("start", 0)), clamp(a.int("end", r)));
        let dims: Vec<i64> = args[0].shape[start..end.max(start)]
            .iter()
            .map(|&d| d as i64)
            .collect();
        return Ok(Some(vec![Data::I64(dims.into())]));
    }
    if op == "Size" {
        return Ok(Some(vec![Data::I64(
            vec![args[0].shape.iter().product::<usize>() as i64].into(),
        )]));
    }
    if op == "ConstantOfShape" {
        let a = Attrs::new(node);
        let n: usize = outs[0].0.iter().product();
        let value = match a.tensor("value") {
            Some(t) => super::tensor_data(t)?.1,
            None => Data::F32(vec![0.0].into()),
        };
        return Ok(Some(vec![match value {
            Data::F32(v) => Data::F32(vec![v.first().copied().unwrap_or(0.0); n].into()),
            Data::I64(v) => Data::I64(vec![v.first().copied().unwrap_or(0); n].into()),
            Data::I8(v) => Data::I8(vec![v.first().copied().unwrap_or(0); n].into()),
        }]));
    }
    const EVALUATED: &[&str] = &[
        "Gather",
        "Unsqueeze",
        "Squeeze",
        "Concat",
        "Slice",
        "Cast",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Reshape",
        "Flatten",
        "Range",
        "Equal",
        "Where",
        "Expand",
        "Transpose",
        "Identity",
        "Floor",
        "Ceil",
        "Sqrt",
        "Neg",
        "Abs",
        "Max",
        "Min",
        "Less",
        "Greater",
        "Not",
        "ReduceProd",
        "Tile",
        "Mod",
        "Pow",
    ];
    if !EVALUATED.contains(&op) {
        return Ok(None);
    }
    if args.iter().any(|a| a.data.is_none()) {
        return Ok(None);
    }
    let a = Attrs::new(node);
    let out_shape = &outs[0].0;
    let arr = |i: usize| -> ArrayD<f64> {
        let d = args[i].data.as_ref().expect("checked constant");
        let v: Vec<f64> = match d {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I8(v) => v.iter().map(|&x| x as f64).collect(),
        };
        ArrayD::from_shape_vec(IxDyn(&args[i].shape), v).expect("shape checked at import")
    };
    // i64 values beyond 2^53 (INT64_MAX as "to the end") only appear as Slice bounds, which
    // read them as integers before this conversion.
    let x = arr(0);
    let result: ArrayD<f64> = match op {
        "Identity" | "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Cast" => {
            let v: Vec<f64> = x.iter().copied().collect();
            let v = if op == "Cast" && outs[0].1 == DType::I64 {
                v.iter().map(|f| f.trunc()).collect()
            } else {
                v
            };
            ArrayD::from_shape_vec(IxDyn(out_shape), v).map_err(|e| err!("node '{label}': {e}"))?
        }
        "Transpose" => {
            let perm = match a.ints("perm") {
                Some(p) => usizes(&p),
                None => (0..x.ndim()).rev().collect(),
            };
            x.permuted_axes(IxDyn(&perm))
                .as_standard_layout()
                .into_owned()
        }
        "Gather" => {
            let axis = norm_axis(label, a.int("axis", 0), x.ndim())?;
            let idx = args[1].ints().expect("constant");
            let len = x.shape()[axis] as i64;
            let idx: Vec<usize> = idx
                .iter()
                .map(|&i| if i < 0 { i + len } else { i } as usize)
                .collect();
            if idx.iter().any(|&i| i >= len as usize) {
                bail!("node '{label}' (Gather): index out of range for axis of length {len}");
            }
            take(&x, axis, &idx)
                .into_shape_clone(IxDyn(out_shape))
                .map_err(|e| err!("node '{label}': {e}"))?
        }
        "Concat" => {
            let axis = norm_axis(label, a.int("axis", 0), x.ndim())?;
            let parts: Vec<ArrayD<f64>> = (0..args.len()).map(arr).collect();
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            ndarray::concatenate(Axis(axis), &views).map_err(|e| err!("node '{label}': {e}"))?
        }
        "Slice" => {
            let (starts, ends, axes, steps) = slice_params(node, &a, args, opset, label)?;
            let mut y = x;
            for i in 0..starts.len() {
                let ax = norm_axis(label, axes[i], y.ndim())?;
                let (lo, hi, step) = slice_range(starts[i], ends[i], steps[i], y.shape()[ax]);
                let picked: Vec<usize> = (0..slice_len(lo, hi, step))
                    .map(|j| (lo + j as i64 * step) as usize)
                    .collect();
                y = take(&y, ax, &picked);
            }
            y
        }
        "Add" | "Sub" | "Mul" | "Div" | "Equal" | "Max" | "Min" | "Less" | "Greater" | "Mod"
        | "Pow" => {
            let y = arr(1);
            let shape = IxDyn(out_shape);
            let xb = x
                .broadcast(shape.clone())
                .ok_or_else(|| err!("node '{label}': cannot broadcast"))?;
            let yb = y
                .broadcast(shape)
                .ok_or_else(|| err!("node '{label}': cannot broadcast"))?;
            let int = outs[0].1 == DType::I64 && args[0].dtype == DType::I64;
            ndarray::Zip::from(&xb)
                .and(&yb)
                .map_collect(|&p, &q| match op {
                    "Add" => p + q,
                    "Sub" => p - q,
                    "Mul" => p * q,
                    "Div" if int => (p / q).trunc(),
                    "Div" => p / q,
                    "Equal" => (p == q) as i64 as f64,
                    "Max" => p.max(q),
                    "Min" => p.min(q),
                    "Less" => (p < q) as i64 as f64,
                    "Greater" => (p > q) as i64 as f64,
                    "Pow" => p.powf(q),
                    _ => p.rem_euclid(q),
                })
        }
        "Where" => {
            let shape = IxDyn(out_shape);
            let (c, p, q) = (arr(0), arr(1), arr(2));
            let (c, p, q) = (
                c.broadcast(shape.clone())
                    .ok_or_else(|| err!("node '{label}': cannot broadcast"))?
                    .to_owned(),
                p.broadcast(shape.clone())
                    .ok_or_else(|| err!("node '{label}': cannot broadcast"))?
                    .to_owned(),
                q.broadcast(shape)
                    .ok_or_else(|| err!("node '{label}': cannot broadcast"))?
                    .to_owned(),
            );
            ndarray::Zip::from(&c)
                .and(&p)
                .and(&q)
                .map_collect(|&c, &p, &q| if c != 0.0 { p } else { q })
        }
        "Expand" => x
            .broadcast(IxDyn(out_shape))
            .ok_or_else(|| err!("node '{label}': cannot expand"))?
            .to_owned(),
        "Tile" => {
            let reps = usizes(&args[1].ints().expect("constant"));
            let mut y = x.clone();
            for (ax, &r) in reps.iter().enumerate() {
                let views: Vec<_> = (0..r).map(|_| y.view()).collect();
                y = ndarray::concatenate(Axis(ax), &views)
                    .map_err(|e| err!("node '{label}': {e}"))?;
            }
            y
        }
        "Range" => {
            let (s, d) = (
                x.iter().next().copied().unwrap_or(0.0),
                arr(2).iter().next().copied().unwrap_or(1.0),
            );
            ArrayD::from_shape_fn(IxDyn(out_shape), |i| s + d * i[0] as f64)
        }
        "ReduceProd" => ArrayD::from_elem(IxDyn(out_shape), x.iter().product()),
        "Floor" => x.mapv(f64::floor),
        "Ceil" => x.mapv(f64::ceil),
        "Sqrt" => x.mapv(f64::sqrt),
        "Neg" => x.mapv(|v| -v),
        "Abs" => x.mapv(f64::abs),
        "Not" => x.mapv(|v| (v == 0.0) as i64 as f64),
        _ => return Ok(None),
    };
    Ok(Some(vec![to_data(&result, outs[0].1)]))
}

/// The outputs of a pool over a window (`kernel_shape`, `ceil_mode`): the pooled values,
/// and the indices when the node asks for them.
pub fn pool_shape(n: &OnnxNode) -> Result<Vec<Out>> {
    let (node, a, label, op) = (n.proto, &n.attrs, n.label.as_str(), n.op());
    let x = n.arg(0)?;
    let kernel = usizes(&a.ints("kernel_shape").unwrap_or_default());
    if kernel.len() + 2 != x.rank() {
        bail!(
            "node '{label}' ({op}): kernel_shape {kernel:?} does not fit input rank {}",
            x.rank()
        );
    }
    let ceil = a.int("ceil_mode", 0) != 0;
    let (spatial, _) = spatial_out(label, a, &x.shape[2..], &kernel, ceil)?;
    let mut s = x.shape[..2].to_vec();
    s.extend(spatial);
    let mut outs = vec![(s.clone(), DType::F32)];
    if node.output.len() > 1 {
        outs.push((s, DType::I64));
    }
    Ok(outs)
}

/// The output of a reduction over `axes` (an attribute or, in newer opsets, an input).
pub fn reduce_shape(n: &OnnxNode) -> Result<Vec<Out>> {
    let (node, args, opset, a, label, op) =
        (n.proto, n.args, n.opset, &n.attrs, n.label.as_str(), n.op());
    let x = n.arg(0)?;
    let keep = a.int("keepdims", 1) != 0;
    let axes = reduce_axes(node, a, args, opset)?;
    let axes: Vec<usize> = match axes {
        Some(ax) => ax
            .iter()
            .map(|&v| norm_axis(label, v, x.rank()))
            .collect::<Result<_>>()?,
        None if a.int("noop_with_empty_axes", 0) != 0 => vec![],
        None => (0..x.rank()).collect(),
    };
    let mut s = vec![];
    for (i, &d) in x.shape.iter().enumerate() {
        if axes.contains(&i) {
            if keep {
                s.push(1);
            }
        } else {
            s.push(d);
        }
    }
    Ok(vec![(
        s,
        if op.starts_with("Arg") {
            DType::I64
        } else {
            x.dtype
        },
    )])
}

/// The entries `idx` of `x` along `axis` (in range), as `select` but a run of the inner axes
/// at a time: `select` joins one view per index (a fuzzed model folding 6 M pads took 5 s).
fn take(x: &ArrayD<f64>, axis: usize, idx: &[usize]) -> ArrayD<f64> {
    let x = x.as_standard_layout();
    let shape = x.shape();
    let (len, inner) = (shape[axis], shape[axis + 1..].iter().product::<usize>());
    let mut dims = shape.to_vec();
    dims[axis] = idx.len();
    if len * inner == 0 {
        return ArrayD::zeros(IxDyn(&dims));
    }
    let values = x.as_slice().expect("standard layout");
    let mut out = Vec::with_capacity(values.len() / len.max(1) * idx.len());
    for block in values.chunks(len * inner) {
        for &i in idx {
            out.extend_from_slice(&block[i * inner..][..inner]);
        }
    }
    ArrayD::from_shape_vec(IxDyn(&dims), out).expect("the shape of the values taken")
}

fn to_data(a: &ArrayD<f64>, dtype: DType) -> Data {
    match dtype {
        DType::I64 => Data::I64(a.iter().map(|&v| v as i64).collect::<Vec<_>>().into()),
        _ => Data::F32(a.iter().map(|&v| v as f32).collect::<Arc<[f32]>>()),
    }
}

/// A reduction's axes as written (attribute or input by op and opset); `None`: all.
pub fn reduce_axes(
    node: &NodeProto,
    a: &Attrs,
    args: &[Arg],
    opset: i64,
) -> Result<Option<Vec<i64>>> {
    let from_input = match node.op_type() {
        "ReduceSum" => opset >= 13,
        "ArgMax" | "ArgMin" => return Ok(Some(vec![a.int("axis", 0)])),
        _ => opset >= 18,
    };
    if from_input {
        match args.get(1) {
            Some(ax) => match ax.ints() {
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => Ok(Some(v)),
                None => bail!(
                    "node '{}' ({}): its axes input must be constant",
                    super::node_label(node),
                    node.op_type()
                ),
            },
            None => Ok(None),
        }
    } else {
        Ok(a.ints("axes"))
    }
}

/// Where a `Slice` with unit steps starts on every axis of `shape` (the output's shape gives
/// the extents); `None` when a step is not 1 or a bound is computed.
pub fn slice_starts(n: &OnnxNode, shape: &[usize]) -> Result<Option<Vec<usize>>> {
    let Ok((starts, ends, axes, steps)) =
        slice_params(n.proto, &n.attrs, n.args, n.opset, &n.label)
    else {
        return Ok(None);
    };
    if steps.iter().any(|&s| s != 1) {
        return Ok(None);
    }
    let mut at = vec![0; shape.len()];
    for i in 0..starts.len() {
        let ax = norm_axis(&n.label, axes[i], shape.len())?;
        at[ax] = slice_range(starts[i], ends[i], 1, shape[ax]).0 as usize;
    }
    Ok(Some(at))
}

type SliceParams = (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>);

fn slice_params(
    node: &NodeProto,
    a: &Attrs,
    args: &[Arg],
    opset: i64,
    label: &str,
) -> Result<SliceParams> {
    let (starts, ends, axes, steps) = if opset >= 10 {
        let get = |i: usize, what: &str| -> Result<Option<Vec<i64>>> {
            match args.get(i) {
                Some(arg) if !node.input.get(i).is_some_and(|n| n.is_empty()) => {
                    arg.ints().map(Some).ok_or_else(|| {
                        err!("node '{label}' (Slice): its {what} input must be constant")
                    })
                }
                _ => Ok(None),
            }
        };
        (
            get(1, "starts")?.unwrap_or_default(),
            get(2, "ends")?.unwrap_or_default(),
            get(3, "axes")?,
            get(4, "steps")?,
        )
    } else {
        (
            a.ints("starts").unwrap_or_default(),
            a.ints("ends").unwrap_or_default(),
            a.ints("axes"),
            None,
        )
    };
    let n = starts.len();
    let axes = axes.unwrap_or_else(|| (0..n as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; n]);
    if ends.len() != n || axes.len() != n || steps.len() != n || steps.contains(&0) {
        bail!("node '{label}' (Slice): starts, ends, axes and steps do not fit together");
    }
    Ok((starts, ends, axes, steps))
}

/// ONNX's clamping of slice bounds, returning (first index, end bound, step).
fn slice_range(start: i64, end: i64, step: i64, dim: usize) -> (i64, i64, i64) {
    let d = dim as i64;
    let fix = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
    if step > 0 {
        (fix(start).clamp(0, d), fix(end).clamp(0, d), step)
    } else {
        (fix(start).clamp(-1, d - 1), fix(end).clamp(-1, d - 1), step)
    }
}

fn slice_len(lo: i64, hi: i64, step: i64) -> usize {
    if step > 0 {
        if hi > lo {
            ((hi - lo + step - 1) / step) as usize
        } else {
            0
        }
    } else if lo > hi {
        ((lo - hi - step - 1) / -step) as usize
    } else {
        0
    }
}

pub fn usizes(v: &[i64]) -> Vec<usize> {
    v.iter().map(|&d| d.max(0) as usize).collect()
}

pub fn norm_axis(label: &str, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let v = if axis < 0 { axis + r } else { axis };
    if !(0..r.max(1)).contains(&v) {
        bail!("node '{label}': axis {axis} is out of range for rank {rank}");
    }
    Ok(v as usize)
}

pub fn broadcast(label: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let p = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let q = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (p, q) {
            (p, q) if p == q => p,
            (1, q) => q,
            (p, 1) => p,
            _ => bail!("node '{label}': shapes {a:?} and {b:?} do not broadcast"),
        };
    }
    Ok(out)
}

pub fn matmul_shape(label: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    if a.is_empty() || b.is_empty() {
        bail!(
            "node '{label}' (MatMul): a scalar operand ({a:?} × {b:?}); MatMul multiplies tensors of rank 1 or more"
        );
    }
    let (mut a2, mut b2) = (a.to_vec(), b.to_vec());
    if a2.len() == 1 {
        a2.insert(0, 1);
    }
    if b2.len() == 1 {
        b2.push(1);
    }
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (kb, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != kb {
        bail!("node '{label}' (MatMul): inner dimensions {k} and {kb} differ ({a:?} × {b:?})");
    }
    let mut out = broadcast(label, &a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(out)
}

pub fn reshape_shape(
    label: &str,
    x: &[usize],
    target: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>> {
    let numel: usize = x.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1 => {
                if infer.replace(i).is_some() {
                    bail!("node '{label}' (Reshape): more than one -1 in {target:?}");
                }
                out.push(1);
            }
            0 if !allowzero => out.push(*x.get(i).ok_or_else(|| {
                err!("node '{label}' (Reshape): 0 at axis {i} beyond input rank")
            })?),
            t if t >= 0 => out.push(t as usize),
            _ => bail!("node '{label}' (Reshape): invalid target {target:?}"),
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !numel.is_multiple_of(known) {
            bail!("node '{label}' (Reshape): cannot reshape {x:?} to {target:?}");
        }
        out[i] = numel / known;
    } else if known != numel {
        bail!("node '{label}' (Reshape): cannot reshape {x:?} ({numel} elements) to {target:?}");
    }
    Ok(out)
}

/// Spatial output sizes of a conv or pool and its resolved pads (begin…, end…), honouring
/// `auto_pad`, dilations and `ceil_mode` (which becomes extra end padding).
pub fn spatial_out(
    label: &str,
    a: &Attrs,
    input: &[usize],
    kernel: &[usize],
    ceil: bool,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let n = input.len();
    let ints = |name: &str, default: Vec<i64>, least: i64| -> Result<Vec<usize>> {
        let v = a.ints(name).unwrap_or(default);
        if let Some(bad) = v.iter().find(|&&x| x < least || x > 1 << 20) {
            bail!("node '{label}': {name} {v:?} holds {bad}; each must be at least {least}");
        }
        Ok(usizes(&v))
    };
    let strides = ints("strides", vec![1; n], 1)?;
    let dil = ints("dilations", vec![1; n], 1)?;
    let auto = a.string("auto_pad", "NOTSET");
    let mut pads = ints("pads", vec![0; 2 * n], 0)?;
    if strides.len() != n || dil.len() != n || pads.len() != 2 * n || kernel.len() != n {
        bail!("node '{label}': strides/dilations/pads do not fit {n} spatial dims");
    }
    if kernel.contains(&0) {
        bail!("node '{label}': a kernel of {kernel:?} has an empty axis");
    }
    let mut out = vec![0; n];
    for i in 0..n {
        let eff = dil[i] * (kernel[i] - 1) + 1;
        match auto.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => {
                let o = input[i].div_ceil(strides[i]);
                let total = ((o - 1) * strides[i] + eff).saturating_sub(input[i]);
                let (small, big) = (total / 2, total - total / 2);
                if auto == "SAME_UPPER" {
                    pads[i] = small;
                    pads[i + n] = big;
                } else {
                    pads[i] = big;
                    pads[i + n] = small;
                }
            }
            "VALID" => {
                pads[i] = 0;
                pads[i + n] = 0;
            }
            _ => {}
        }
        let span = input[i] + pads[i] + pads[i + n];
        if span < eff {
            bail!(
                "node '{label}': spatial size {} (padded {span}) is smaller than the kernel extent {eff}; the input shape is too small for this model",
                input[i]
            );
        }
        let o = if ceil {
            (span - eff).div_ceil(strides[i]) + 1
        } else {
            (span - eff) / strides[i] + 1
        };
        // ceil_mode must not start a window entirely in the end padding (ONNX/PyTorch rule)
        let o = if ceil && (o - 1) * strides[i] >= input[i] + pads[i] {
            o - 1
        } else {
            o
        };
        if ceil {
            pads[i + n] = ((o - 1) * strides[i] + eff).saturating_sub(input[i] + pads[i]);
        }
        out[i] = o;
    }
    Ok((out, pads))
}

pub fn u32s(v: &[usize]) -> Vec<u32> {
    v.iter().map(|&d| d as u32).collect()
}
