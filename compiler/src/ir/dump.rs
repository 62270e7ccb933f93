//! The IR as stable text, one line per node in schedule order: what the snapshot tests pin.
//!
//! `phase name = Op{attrs}(inputs) -> outputs`, a tensor as `name:f32[8,3,32,32]` and a
//! constant input marked `=const` (frozen) or `=param` (trainable); a node that runs at once
//! with the next ends in `, beside the next`.

use super::{Graph, NodeOp, Role, TensorId, kind_name};
use actc_runtime::ops::{Compressor, Hosvd, Kind, Method};
use petgraph::stable_graph::NodeIndex;
use std::fmt::Write;

impl Graph {
    /// Renders `order` (every node of the graph, in the order the plan runs them); the
    /// positions in `beside` run at once with the node after them.
    pub fn dump(&self, order: &[NodeIndex], beside: &[usize]) -> String {
        let mut out = String::new();
        for &t in &self.inputs {
            let _ = writeln!(out, "input {}", self.tensor_text(t));
        }
        for (s, &n) in order.iter().enumerate() {
            let node = &self.nodes[n];
            let op = match &node.op {
                NodeOp::Kernel(k) => {
                    let name = kind_name(k);
                    let attrs = attrs(k);
                    if attrs.is_empty() {
                        name
                    } else {
                        format!("{name}{{{attrs}}}")
                    }
                }
                NodeOp::Onnx(p) => format!("onnx.{}", p.op_type()),
            };
            let ins: Vec<String> = node.inputs.iter().map(|&t| self.input_text(t)).collect();
            let outs: Vec<String> = node.outputs.iter().map(|&t| self.tensor_text(t)).collect();
            let _ = writeln!(
                out,
                "{:<8} {} = {}({}) -> {}{}",
                format!("{:?}", node.phase).to_lowercase(),
                node.name,
                op,
                ins.join(", "),
                outs.join(", "),
                if beside.contains(&s) {
                    ", beside the next"
                } else {
                    ""
                }
            );
        }
        for &t in &self.outputs {
            let _ = writeln!(out, "output {}", self.tensor_text(t));
        }
        out
    }

    fn tensor_text(&self, t: TensorId) -> String {
        let t = self.tensor(t);
        let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        format!(
            "{}:{}[{}]",
            t.name,
            format!("{:?}", t.dtype).to_lowercase(),
            dims.join(",")
        )
    }

    fn input_text(&self, t: TensorId) -> String {
        match self.tensor(t).role {
            Role::Const => format!("{}=const", self.tensor_text(t)),
            Role::Trainable => format!("{}=param", self.tensor_text(t)),
            _ => self.tensor(t).name.clone(),
        }
    }
}

/// An op's attributes as `field: value, …` (its Debug form without the braces); a
/// compressor as its method and parameters.
fn attrs(k: &Kind) -> String {
    match k {
        Kind::Compress(c) | Kind::Decompress(c) => compressor(c),
        Kind::ConvBackwardWeightCompressed(cc) => format!(
            "{}; {}",
            fields(cc.conv.as_ref()),
            cc.compressor.as_ref().map(compressor).unwrap_or_default()
        ),
        Kind::ConvBackwardWeightSgd(cs) => format!(
            "{}; sgd {}{}",
            fields(cs.conv.as_ref()),
            fields(cs.sgd.as_ref()).replace(", lr_scale: None", ""),
            cs.compressor
                .as_ref()
                .map(|c| format!("; {}", compressor(c)))
                .unwrap_or_default()
        ),
        Kind::LinearGradWCompressed(cl) => format!(
            "trans_b: {}; {}",
            cl.trans_b,
            cl.compressor.as_ref().map(compressor).unwrap_or_default()
        ),
        // An int8 flag shows only where `--prefix-precision int8` set it, a learning-rate
        // scale only where a decomposed layer's factor has one.
        _ => fields(Some(k))
            .replace(", int8: false", "")
            .replace(", lr_scale: None", ""),
    }
}

/// A message's Debug form without its name and braces; empty when there is none.
fn fields(m: Option<&impl std::fmt::Debug>) -> String {
    m.and_then(|m| {
        let d = format!("{m:?}");
        d.split_once(" { ")
            .map(|(_, rest)| rest.trim_end_matches([')', '}']).trim().to_string())
    })
    .unwrap_or_default()
}

fn compressor(c: &Compressor) -> String {
    let list = |v: &[u32]| {
        let v: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        v.join(",")
    };
    let centered = |h: &Hosvd| if h.center { " centered" } else { "" };
    match &c.method {
        Some(Method::Hosvd(h)) if h.fixed && h.eps == 0.0 => {
            format!("hosvd{} ranks=[{}] (fixed)", centered(h), list(&h.caps))
        }
        Some(Method::Hosvd(h)) if h.fixed => format!(
            "hosvd{} ranks=[{}] (eps={} on calibration)",
            centered(h),
            list(&h.caps),
            h.eps
        ),
        Some(Method::Hosvd(h)) => format!(
            "hosvd{} eps={} caps=[{}]",
            centered(h),
            h.eps,
            list(&h.caps)
        ),
        Some(Method::Svd(s)) => format!("svd eps={} cap={}", s.eps, s.cap),
        Some(Method::GradFilter(f)) => format!("gradfilter patch={}", f.patch),
        None => String::new(),
    }
}
