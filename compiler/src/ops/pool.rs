//! Pooling, means and sums: `GlobalAveragePool`, `AveragePool`, `MaxPool` (2-D windows),
//! `ReduceMean` and `ReduceSum`, with the one backward op that serves them all.

use super::room::{Backward, Lowered, OnnxNode, Room, expect, shapes, window_out};
use crate::error::Result;
use crate::ir::{Graph, Node, Tensor};
use crate::onnx::shape::{
    norm_axis, pool_shape, reduce_axes, reduce_shape, spatial_out, u32s, usizes,
};
use actc_runtime::ops::{self, Empty, Kind, PoolKind};
use actc_runtime::plan::DType;
use actc_runtime::planning::pool_byte_taps as byte_taps;

pub struct Pools;

impl Room for Pools {
    fn onnx_ops(&self) -> &'static [&'static str] {
        &[
            "GlobalAveragePool",
            "AveragePool",
            "MaxPool",
            "ReduceMean",
            "ReduceSum",
        ]
    }

    fn owns(&self, kind: &Kind) -> bool {
        matches!(
            kind,
            Kind::GlobalAveragePool(_)
                | Kind::AveragePool(_)
                | Kind::MaxPool(_)
                | Kind::ReduceMean(_)
                | Kind::ReduceSum(_)
                | Kind::PoolBackward(_)
        )
    }

    fn import(&self, n: &OnnxNode) -> Result<Lowered> {
        let x = n.arg(0)?;
        let four_d = x.rank() == 4;
        match n.op() {
            "GlobalAveragePool" => {
                let outputs = vec![(global(&x.shape), x.dtype)];
                Ok(match four_d {
                    true => Lowered::kernel(outputs, Kind::GlobalAveragePool(Empty {}), vec![0]),
                    false => Lowered::onnx(outputs),
                })
            }
            "ReduceMean" | "ReduceSum" => {
                let outputs = reduce_shape(n)?;
                Ok(match reduced_axes(n)? {
                    Some(axes) if x.dtype == DType::F32 => {
                        let axes = ops::Axes { axes: u32s(&axes) };
                        let kind = match n.op() {
                            "ReduceMean" => Kind::ReduceMean(axes),
                            _ => Kind::ReduceSum(axes),
                        };
                        Lowered::kernel(outputs, kind, vec![0])
                    }
                    _ => Lowered::onnx(outputs),
                })
            }
            op => {
                let outputs = pool_shape(n)?;
                let a = &n.attrs;
                let count_include_pad = a.int("count_include_pad", 0) != 0;
                let ceil = a.int("ceil_mode", 0) != 0;
                if !four_d
                    || outputs.len() != 1
                    || (op == "AveragePool" && ceil && count_include_pad)
                {
                    return Ok(Lowered::onnx(outputs));
                }
                let kernel = usizes(&a.ints("kernel_shape").unwrap_or_default());
                let (_, pads) = spatial_out(&n.label, a, &x.shape[2..], &kernel, ceil)?;
                let ints = |name: &str| u32s(&usizes(&a.ints(name).unwrap_or_else(|| vec![1, 1])));
                let pool = ops::Pool {
                    kernel: u32s(&kernel),
                    strides: ints("strides"),
                    pads: u32s(&pads),
                    dilations: ints("dilations"),
                    count_include_pad,
                };
                let kind = match op {
                    "MaxPool" => Kind::MaxPool(pool),
                    _ => Kind::AveragePool(pool),
                };
                Ok(Lowered::kernel(outputs, kind, vec![0]))
            }
        }
    }

    fn check(
        &self,
        kind: &Kind,
        ins: &[&Tensor],
        outs: &[&Tensor],
    ) -> std::result::Result<(), String> {
        let x = shapes(ins, 1)?[0];
        match kind {
            Kind::PoolBackward(b) => {
                let dx = &outs.first().ok_or("no output")?.shape;
                let y = match b.pool.as_ref().ok_or("no pool")? {
                    PoolKind::Global(_) => global(dx),
                    PoolKind::Average(p) | PoolKind::Max(p) => window(p, dx)?,
                    PoolKind::ReduceMean(a) | PoolKind::ReduceSum(a) => {
                        return mean_fits(a, dx, x);
                    }
                };
                if y != x {
                    return Err(format!("dy is {x:?}, the pool of dx {dx:?} gives {y:?}"));
                }
                Ok(())
            }
            Kind::GlobalAveragePool(_) => expect(outs, &[(global(x), DType::F32)]),
            Kind::AveragePool(p) => expect(outs, &[(window(p, x)?, DType::F32)]),
            Kind::MaxPool(p) => {
                let y = window(p, x)?;
                let mut want = vec![(y.clone(), DType::F32)];
                if outs.len() == 2 {
                    let taps = p.kernel.iter().map(|&k| k as usize).product();
                    let dtype = if byte_taps(taps) {
                        DType::U8
                    } else {
                        DType::U32
                    };
                    want.push((y, dtype));
                }
                expect(outs, &want)
            }
            Kind::ReduceMean(a) | Kind::ReduceSum(a) => {
                mean_fits(a, x, &outs.first().ok_or("no output")?.shape)
            }
            _ => Err("not a pool op".into()),
        }
    }

    fn mixes_batch(&self, kind: &Kind) -> bool {
        matches!(kind, Kind::ReduceMean(a) | Kind::ReduceSum(a) if a.axes.contains(&0))
    }

    fn differentiable(&self, kind: &Kind, _node: &Node, _graph: &Graph) -> bool {
        !matches!(kind, Kind::PoolBackward(_))
    }

    fn backward(&self, kind: &Kind, ad: &mut Backward) {
        if !ad.needs(0) {
            return;
        }
        let dy = ad.dy;
        let (pool, inputs) = match kind {
            Kind::GlobalAveragePool(_) => (PoolKind::Global(Empty {}), vec![dy]),
            Kind::AveragePool(p) => (PoolKind::Average(p.clone()), vec![dy]),
            Kind::ReduceMean(a) => (PoolKind::ReduceMean(a.clone()), vec![dy]),
            Kind::ReduceSum(a) => (PoolKind::ReduceSum(a.clone()), vec![dy]),
            Kind::MaxPool(p) => {
                // The backward reads where each maximum came from: per output element the
                // winner's tap in its window, one byte where the window allows (a quarter of
                // four-byte flat indices, kept from forward to backward).
                let taps = p.kernel.iter().map(|&k| k as usize).product();
                let y = ad.output(0);
                let argmax = ad.forward_output(1, |g| {
                    let y = g.tensor(y);
                    let dtype = if byte_taps(taps) {
                        DType::U8
                    } else {
                        DType::U32
                    };
                    Tensor::value(format!("{}.argmax", y.name), y.shape.clone(), dtype)
                });
                (PoolKind::Max(p.clone()), vec![dy, argmax])
            }
            _ => unreachable!("differentiable admits the forward pools only"),
        };
        let k = Kind::PoolBackward(ops::PoolBackward { pool: Some(pool) });
        ad.grad(0, "grad_input", k, inputs);
    }

    fn flops(&self, kind: &Kind, ins: &[&[u64]], outs: &[&[u64]]) -> u64 {
        let numel = |s: Option<&&[u64]>| s.map_or(0, |s| s.iter().product::<u64>());
        let taps = |p: &ops::Pool| p.kernel.iter().map(|&k| k as u64).product::<u64>();
        match kind {
            Kind::AveragePool(p) | Kind::MaxPool(p) => numel(outs.first()) * taps(p),
            Kind::PoolBackward(b) => match &b.pool {
                Some(PoolKind::Average(p)) => numel(ins.first()) * taps(p),
                _ => numel(outs.first()),
            },
            _ => numel(outs.first()).max(numel(ins.first())),
        }
    }
}

/// The axes a `ReduceMean` or `ReduceSum` reduces, or `None` when actc's kernel does not
/// take it as written (`noop_with_empty_axes`).
fn reduced_axes(n: &OnnxNode) -> Result<Option<Vec<usize>>> {
    let rank = n.arg(0)?.rank();
    Ok(Some(
        match reduce_axes(n.proto, &n.attrs, n.args, n.opset)? {
            Some(v) => v
                .iter()
                .map(|&ax| norm_axis(&n.label, ax, rank))
                .collect::<Result<_>>()?,
            None if n.attrs.int("noop_with_empty_axes", 0) != 0 => return Ok(None),
            None => (0..rank).collect(),
        },
    ))
}

fn global(x: &[usize]) -> Vec<usize> {
    let mut y = x[..2.min(x.len())].to_vec();
    y.extend(std::iter::repeat_n(1, x.len().saturating_sub(2)));
    y
}

/// The output shape of a 2-D window over `x` (ceil mode is extra end padding by now).
fn window(p: &ops::Pool, x: &[usize]) -> std::result::Result<Vec<usize>, String> {
    let [n, c, h, w] = x[..] else {
        return Err(format!("{x:?} is not 4-D"));
    };
    let k = |i: usize| p.kernel.get(i).copied().unwrap_or(1) as usize;
    let [oh, ow] = window_out([h, w], [k(0), k(1)], &p.strides, &p.dilations, &p.pads)?;
    Ok(vec![n, c, oh, ow])
}

/// Whether `y` is `x` reduced over `a`'s axes, kept as 1 or dropped.
fn mean_fits(a: &ops::Axes, x: &[usize], y: &[usize]) -> std::result::Result<(), String> {
    let axes: Vec<usize> = a.axes.iter().map(|&v| v as usize).collect();
    let kept: Vec<usize> = (0..x.len())
        .map(|i| if axes.contains(&i) { 1 } else { x[i] })
        .collect();
    let dropped: Vec<usize> = (0..x.len())
        .filter(|i| !axes.contains(i))
        .map(|i| x[i])
        .collect();
    if y == kept || y == dropped {
        Ok(())
    } else {
        Err(format!("{y:?} is not {x:?} averaged over axes {axes:?}"))
    }
}
