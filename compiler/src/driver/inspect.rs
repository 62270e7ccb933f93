//! `actc inspect`: a per-layer table of a plan (ops, shapes, what trains, saved bytes, FLOPs,
//! planned offsets and the peak), as text or JSON.

use crate::ModelProto;
use actc_runtime::plan::{Buffer, BufferKind, Phase, Plan, Step};
use prost::Message;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write;

struct Row<'a> {
    step: &'a Step,
    op: String,
    trains: bool,
    saved: u64,
    fwd: u64,
    bwd: u64,
}

fn rows(plan: &Plan) -> Vec<Row<'_>> {
    let mut saved_seen = std::collections::BTreeSet::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for step in &plan.steps {
        let phase = step.phase();
        if phase == Phase::Forward {
            let mut saved = 0;
            for &b in &step.inputs {
                let buf = plan.buffer(b);
                let kept = buf.kind() == BufferKind::Saved
                    || (buf.kind() == BufferKind::Boundary && is_read_backward(plan, b));
                if kept && saved_seen.insert(b) {
                    saved += buf.bytes;
                }
            }
            index.insert(step.name.as_str(), rows.len());
            rows.push(Row {
                step,
                op: op_name(step),
                trains: step
                    .inputs
                    .iter()
                    .any(|&b| plan.buffer(b).kind() == BufferKind::Trainable),
                saved,
                fwd: flops(plan, step),
                bwd: 0,
            });
        } else if let Some(&r) = index.get(step.origin.as_str()) {
            rows[r].bwd += flops(plan, step);
        }
    }
    rows
}

fn is_read_backward(plan: &Plan, b: u32) -> bool {
    plan.steps
        .iter()
        .any(|s| s.phase() == Phase::Backward && s.inputs.contains(&b))
}

pub fn op_name(step: &Step) -> String {
    step.kind().map_or_else(|| "?".into(), crate::op_name)
}

fn shape(b: &Buffer) -> String {
    b.shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// Multiply-adds count as two FLOPs; elementwise ops one per output element (each op's
/// room in the compiler says).
pub fn flops(plan: &Plan, step: &Step) -> u64 {
    let Some(kind) = step.kind() else {
        return 0;
    };
    let shapes = |ids: &[u32]| -> Vec<&[u64]> {
        ids.iter()
            .map(|&b| plan.buffer(b).shape.as_slice())
            .collect()
    };
    crate::flops(kind, &shapes(&step.inputs), &shapes(&step.outputs))
}

fn prefix_nodes(plan: &Plan) -> usize {
    ModelProto::decode(plan.prefix_onnx.as_slice())
        .ok()
        .and_then(|m| m.graph)
        .map(|g| g.node.len())
        .unwrap_or(0)
}

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

fn mflops(f: u64) -> String {
    format!("{:.2}", f as f64 / 1e6)
}

fn bytes_of(plan: &Plan, kinds: &[BufferKind]) -> u64 {
    plan.buffers
        .iter()
        .filter(|b| kinds.contains(&b.kind()))
        .map(|b| b.bytes)
        .sum()
}

pub fn text(plan: &Plan) -> String {
    let mut out = String::new();
    let src = plan.source.clone().unwrap_or_default();
    let mem = plan.memory.clone().unwrap_or_default();
    let input: Vec<String> = src.input_shape.iter().map(|d| d.to_string()).collect();
    let _ = writeln!(
        out,
        "model    {}  input {} {}  output {}",
        src.model,
        src.input_name,
        input.join("x"),
        output_names(&src)
    );
    let trained: Vec<String> = plan
        .layers
        .iter()
        .map(|l| format!("{} ({})", l.node, l.op_type))
        .collect();
    let _ = writeln!(
        out,
        "layers   --layers {}: {} trained: {}",
        src.layers,
        plan.layers.len(),
        trained.join(", ")
    );
    if let Some(f) = &plan.freeze {
        let every = match f.every {
            0 => "an epoch".to_string(),
            1 => "1 step".to_string(),
            k => format!("{k} steps"),
        };
        let _ = writeln!(
            out,
            "freezing sequential, {} turns of {every}:",
            f.turns.len()
        );
        for (t, turn) in f.turns.iter().enumerate() {
            let _ = writeln!(
                out,
                "         turn {} trains {}; skips {} steps, {} MFLOP",
                t + 1,
                turn.trains.join(", "),
                turn.skip.len(),
                mflops(skipped_flops(plan, &turn.skip))
            );
        }
    }
    let boundary: Vec<String> = plan.feeds[..plan.feeds.len().saturating_sub(1)]
        .iter()
        .map(|&b| format!("{} {}", plan.buffer(b).name, shape(plan.buffer(b))))
        .collect();
    let _ = writeln!(
        out,
        "prefix   {} ONNX nodes, frozen, {}; boundary: {}",
        prefix_nodes(plan),
        prefix_runner(plan),
        boundary.join(", ")
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:>3}  {:<40} {:<18} {:<24} {:<5} {:>10} {:>10} {:>10} {:>10}",
        "#", "node", "op", "output", "train", "saved", "fwd MFLOP", "bwd MFLOP", "offset"
    );
    let rows = rows(plan);
    for (i, r) in rows.iter().enumerate() {
        let out_buf = r.step.outputs.first().map(|&b| plan.buffer(b));
        let name: String = if r.step.name.chars().count() > 40 {
            let tail: String = r
                .step
                .name
                .chars()
                .rev()
                .take(39)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("…{tail}")
        } else {
            r.step.name.clone()
        };
        let _ = writeln!(
            out,
            "{:>3}  {:<40} {:<18} {:<24} {:<5} {:>10} {:>10} {:>10} {:>10}",
            i,
            name,
            r.op,
            out_buf.map(shape).unwrap_or_default(),
            if r.trains { "yes" } else { "" },
            if r.saved > 0 {
                human(r.saved)
            } else {
                String::new()
            },
            mflops(r.fwd),
            mflops(r.bwd),
            out_buf.map(|b| b.offset.to_string()).unwrap_or_default(),
        );
    }
    let total_fwd: u64 = rows.iter().map(|r| r.fwd).sum();
    let total_bwd: u64 = plan
        .steps
        .iter()
        .filter(|s| s.phase() != Phase::Forward)
        .map(|s| flops(plan, s))
        .sum();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "steps             {} ({} forward), {:.1} MFLOP forward, {:.1} MFLOP loss+backward+update",
        plan.steps.len(),
        plan.eval_steps,
        total_fwd as f64 / 1e6,
        total_bwd as f64 / 1e6
    );
    let _ = writeln!(out, "saved for backward {}", human(mem.saved));
    let _ = write!(
        out,
        "weights           {} trainable, {} frozen; optimizer state {}",
        human(bytes_of(plan, &[BufferKind::Trainable])),
        human(bytes_of(plan, &[BufferKind::Frozen])),
        human(bytes_of(plan, &[BufferKind::OptimizerState]))
    );
    match bytes_of(plan, &[BufferKind::CompressorState]) {
        0 => out.push('\n'),
        b => {
            let _ = writeln!(out, "; fixed-rank factors {}", human(b));
        }
    }
    let _ = writeln!(
        out,
        "arena             {} planned peak (naive sum {}, {:.2}x smaller)",
        human(mem.arena),
        human(mem.naive),
        mem.naive as f64 / mem.arena.max(1) as f64
    );
    if plan.prefix_steps > 0 {
        let _ = writeln!(
            out,
            "                  of it: training {}, frozen prefix {}",
            human(mem.training_arena),
            human(mem.prefix_arena)
        );
    }
    let _ = writeln!(
        out,
        "planned peak      {} (arena + weights + optimizer state)",
        human(mem.arena + mem.persistent)
    );
    out
}

fn skipped_flops(plan: &Plan, skip: &[u32]) -> u64 {
    skip.iter()
        .map(|&i| flops(plan, &plan.steps[i as usize]))
        .sum()
}

/// Who runs the frozen prefix, as `inspect` says it.
fn prefix_runner(plan: &Plan) -> String {
    if plan.prefix_steps > 0 {
        format!(
            "run by actc in {} steps, {}",
            plan.prefix_steps,
            plan.prefix_runs()
        )
    } else {
        "run by tract".into()
    }
}

pub fn json(plan: &Plan) -> Value {
    let src = plan.source.clone().unwrap_or_default();
    let mem = plan.memory.clone().unwrap_or_default();
    let layers: Vec<Value> = rows(plan)
        .iter()
        .map(|r| {
            let outb = r.step.outputs.first().map(|&b| plan.buffer(b));
            json!({
                "node": r.step.name,
                "op": r.op,
                "inputs": r.step.inputs.iter().map(|&b| json!({"name": plan.buffer(b).name, "shape": plan.buffer(b).shape})).collect::<Vec<_>>(),
                "output_shape": outb.map(|b| b.shape.clone()),
                "trainable": r.trains,
                "saved_bytes": r.saved,
                "flops_forward": r.fwd,
                "flops_backward": r.bwd,
                "offset": outb.map(|b| b.offset),
            })
        })
        .collect();
    json!({
        "model": src.model,
        "input": {"name": src.input_name, "shape": src.input_shape},
        "output": output_names(&src),
        "trained_outputs": src.outputs.iter().map(|o| json!({"name": o.name, "shape": o.shape})).collect::<Vec<_>>(),
        "layers_flag": src.layers,
        "trained_layers": plan.layers.iter().map(|l| json!({"node": l.node, "op": l.op_type, "from_output": l.from_output})).collect::<Vec<_>>(),
        "prefix_nodes": prefix_nodes(plan),
        "prefix": {"runner": if plan.prefix_steps > 0 { "actc" } else { "tract" }, "steps": plan.prefix_steps, "batch": plan.prefix_batch, "lanes": plan.prefix_lanes.len() + 1},
        "boundary": plan.feeds[..plan.feeds.len().saturating_sub(1)].iter().map(|&b| json!({"name": plan.buffer(b).name, "shape": plan.buffer(b).shape})).collect::<Vec<_>>(),
        "steps": plan.steps.len(),
        "freeze": plan.freeze.as_ref().map(|f| json!({
            "every_steps": f.every,
            "turns": f.turns.iter().map(|t| json!({
                "trains": t.trains,
                "skipped_steps": t.skip.len(),
                "skipped_flops": skipped_flops(plan, &t.skip),
            })).collect::<Vec<_>>(),
        })),
        "nodes": layers,
        "memory": {
            "arena_bytes": mem.arena,
            "training_arena_bytes": mem.training_arena,
            "prefix_arena_bytes": mem.prefix_arena,
            "naive_bytes": mem.naive,
            "persistent_bytes": mem.persistent,
            "saved_bytes": mem.saved,
            "trainable_bytes": bytes_of(plan, &[BufferKind::Trainable]),
            "frozen_bytes": bytes_of(plan, &[BufferKind::Frozen]),
            "optimizer_state_bytes": bytes_of(plan, &[BufferKind::OptimizerState]),
            "compressor_state_bytes": bytes_of(plan, &[BufferKind::CompressorState]),
            "planned_peak_bytes": mem.arena + mem.persistent,
        },
    })
}

/// The outputs the loss reads, comma-separated as `--train-output` takes them (a plan from
/// before they were recorded names its one output).
fn output_names(src: &actc_runtime::plan::Source) -> String {
    match src.outputs.len() {
        0 => src.output_name.clone(),
        _ => src
            .outputs
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
    }
}
