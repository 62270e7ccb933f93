//! Plan → ONNX: the original model put back together from the plan's prefix and rest, with
//! the trained weights written into their initializers. Any inference runtime can load it.

use super::proto::tensor_proto::{DataLocation, DataType};
use super::proto::{ModelProto, StringStringEntryProto, TensorProto};
use crate::error::Result;
use crate::{bail, err};
use actc_runtime::plan::{Adapter, BufferKind, Plan};
use prost::Message;
use std::collections::{BTreeMap, HashSet};

/// The fine-tuned model. `weights` supplies the trained values (a plan saved by `actc
/// train`); it must come from the same compiled plan as `plan`.
pub fn export(plan: &Plan, weights: &Plan) -> Result<ModelProto> {
    let mut trained: BTreeMap<&str, Vec<u8>> = weights
        .weights
        .iter()
        .filter(|w| weights.buffer(w.buffer).kind() == BufferKind::Trainable)
        .map(|w| (w.source.as_str(), w.data.clone()))
        .collect();
    let expected: HashSet<&str> = plan
        .weights
        .iter()
        .filter(|w| plan.buffer(w.buffer).kind() == BufferKind::Trainable)
        .map(|w| w.source.as_str())
        .collect();
    if trained.keys().copied().collect::<HashSet<_>>() != expected {
        bail!(
            "the weights file does not come from this plan (its trainable tensors differ); pass the plan it was trained from"
        );
    }
    for a in &plan.adapters {
        let merged = merge_adapter(weights, a, &trained)?;
        trained.remove(a.left.as_str());
        trained.remove(a.right.as_str());
        trained.insert(a.weight.as_str(), merged);
    }
    let decode = |bytes: &[u8], what: &str| {
        ModelProto::decode(bytes).map_err(|e| err!("the plan's {what} model is damaged: {e}"))
    };
    let rest = decode(&plan.rest_onnx, "rest")?;
    let mut model = if plan.prefix_onnx.is_empty() {
        rest.clone()
    } else {
        let mut merged = decode(&plan.prefix_onnx, "prefix")?;
        let g = merged.graph.as_mut().expect("prefix has a graph");
        let r = rest.graph.clone().unwrap_or_default();
        let mut produced: HashSet<String> = g.node.iter().flat_map(|n| n.output.clone()).collect();
        let known: HashSet<String> = g.initializer.iter().map(|t| t.name().to_string()).collect();
        // Both parts write the shape computations they read (folded, then written back from
        // their source nodes): the prefix's copy serves the rest too.
        for n in r.node {
            if n.output
                .iter()
                .all(|o| o.is_empty() || produced.contains(o))
            {
                continue;
            }
            produced.extend(n.output.iter().cloned());
            g.node.push(n);
        }
        g.initializer.extend(
            r.initializer
                .into_iter()
                .filter(|t| !known.contains(t.name())),
        );
        // The prefix's outputs were the boundary tensors; the model's are the rest's.
        g.output = r.output;
        // Inputs of the rest that the prefix computes or holds are internal again.
        for i in r.input {
            let internal = produced.contains(i.name()) || known.contains(i.name());
            if !internal && !g.input.iter().any(|x| x.name() == i.name()) {
                g.input.push(i);
            }
        }
        merged.producer_name = rest.producer_name.clone();
        merged
    };
    let g = model.graph.as_mut().expect("a graph");
    let mut written = 0;
    for init in g.initializer.iter_mut() {
        if let Some(data) = trained.get(init.name()) {
            write_f32(init, data)?;
            written += 1;
        }
    }
    // Exporters such as tf2onnx and Paddle hold weights in Constant nodes instead.
    for node in g.node.iter_mut().filter(|n| n.op_type() == "Constant") {
        let Some(data) = node.output.first().and_then(|o| trained.get(o.as_str())) else {
            continue;
        };
        if let Some(t) = node
            .attribute
            .iter_mut()
            .find(|a| a.name() == "value")
            .and_then(|a| a.t.as_mut())
        {
            write_f32(t, data)?;
            written += 1;
        }
    }
    if written != trained.len() {
        bail!(
            "the plan's model lacks {} of the trained initializers; recompile the model",
            trained.len() - written
        );
    }
    Ok(model)
}

/// The frozen weight of adapter `a` with the adapter's product added: W + left·right
/// (transposed when the adapter says so), the trained factors from `trained`.
fn merge_adapter(plan: &Plan, a: &Adapter, trained: &BTreeMap<&str, Vec<u8>>) -> Result<Vec<u8>> {
    let missing = || {
        err!(
            "the weights file lacks adapter '{}'; pass the plan it was trained from",
            a.weight
        )
    };
    let frozen = plan
        .weights
        .iter()
        .find(|w| w.source == a.weight)
        .ok_or_else(missing)?;
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect()
    };
    let (left, right) = (
        floats(trained.get(a.left.as_str()).ok_or_else(missing)?),
        floats(trained.get(a.right.as_str()).ok_or_else(missing)?),
    );
    let mut w = floats(&frozen.data);
    let rows = plan
        .weights
        .iter()
        .find(|x| x.source == a.left)
        .map_or(0, |x| plan.buffer(x.buffer).shape[0] as usize);
    let rank = left.len() / rows.max(1);
    let cols = right.len() / rank.max(1);
    if rows * rank != left.len() || rank * cols != right.len() || rows * cols != w.len() {
        bail!(
            "adapter '{}' does not fit its weight; recompile the model",
            a.weight
        );
    }
    for i in 0..rows {
        for j in 0..cols {
            let d: f32 = (0..rank)
                .map(|r| left[i * rank + r] * right[r * cols + j])
                .sum();
            let at = if a.transpose {
                j * rows + i
            } else {
                i * cols + j
            };
            w[at] += d;
        }
    }
    Ok(w.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// Protobuf cannot encode a message past 2 GiB: a model whose weights make it larger must keep
/// them in a file beside it.
pub const MAX_INLINE: usize = (1 << 31) - 1;

/// Moves every initializer of `model` holding at least 1 KiB of raw bytes into one blob,
/// returned, that the model then names as external data at `location` (a file name beside
/// the model, as `onnx.save_model(..., save_as_external_data=True)` writes).
pub fn externalize(model: &mut ModelProto, location: &str) -> Vec<u8> {
    let mut blob = Vec::new();
    let Some(g) = model.graph.as_mut() else {
        return blob;
    };
    for t in &mut g.initializer {
        let Some(raw) = t.raw_data.take_if(|r| r.len() >= 1024) else {
            continue;
        };
        let entry = |key: &str, value: String| StringStringEntryProto {
            key: Some(key.into()),
            value: Some(value),
        };
        t.data_location = Some(DataLocation::External as i32);
        t.external_data = vec![
            entry("location", location.into()),
            entry("offset", blob.len().to_string()),
            entry("length", raw.len().to_string()),
        ];
        blob.extend_from_slice(&raw);
    }
    blob
}

fn write_f32(t: &mut TensorProto, data: &[u8]) -> Result<()> {
    let numel: i64 = t.dims.iter().product();
    if t.data_type() != DataType::Float as i32 || numel as usize * 4 != data.len() {
        bail!(
            "initializer '{}' is not a float tensor of {} values",
            t.name(),
            data.len() / 4
        );
    }
    t.float_data.clear();
    t.raw_data = Some(data.to_vec());
    Ok(())
}
