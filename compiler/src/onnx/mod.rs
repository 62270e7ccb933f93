//! ONNX front and back end: the protobuf types (generated from the current `onnx.proto`, so
//! nothing is lost on re-encode), decoding of files, tensors and attributes, the importer that
//! builds the IR (`import`, with `shape` for the ops no room imports) and the writer that
//! turns IR back into ONNX (`write`; `export` fills in trained weights).

pub mod export;
pub mod import;
#[allow(clippy::doc_overindented_list_items, clippy::enum_variant_names)]
pub mod proto;
pub mod shape;
pub mod write;

use crate::error::Result;
use crate::ir::Data;
use crate::{bail, err};
use prost::Message;
use proto::{
    AttributeProto, ModelProto, NodeProto, TensorProto, attribute_proto::AttributeType,
    tensor_proto::DataType,
};
use std::path::{Component, Path};

/// Reads and decodes an ONNX file, refusing what is not one.
pub fn load(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|e| err!("{}: cannot read: {e}", path.display()))?;
    decode(&bytes).map_err(|e| err!("{}: {}", path.display(), e.0))
}

pub fn decode(bytes: &[u8]) -> Result<ModelProto> {
    let model = ModelProto::decode(bytes).map_err(|e| {
        err!("not a valid ONNX model (protobuf decoding failed: {e}); is the file truncated?")
    })?;
    // Protobuf accepts many byte strings as some message; a real model has an IR version and
    // a graph with at least one node and one output.
    match &model.graph {
        Some(g) if model.ir_version() > 0 && !g.node.is_empty() && !g.output.is_empty() => {
            Ok(model)
        }
        _ => bail!(
            "not an ONNX model (no IR version or no graph); expected a .onnx file as written by torch.onnx.export or tf2onnx"
        ),
    }
}

/// The opset version of the default (`ai.onnx`) domain.
pub fn opset(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain(), "" | "ai.onnx"))
        .map(|o| o.version())
        .unwrap_or(1)
}

/// Reads every external tensor of `model` (a separate weights file, relative to `dir`, the
/// model's folder) into the model itself: a plan and the model exported from it then hold
/// every value, and load wherever they are moved.
pub fn inline_external(model: &mut ModelProto, dir: &Path) -> Result<()> {
    let Some(g) = model.graph.as_mut() else {
        return Ok(());
    };
    let attributes = g.node.iter_mut().flat_map(|n| n.attribute.iter_mut());
    let in_nodes = attributes.flat_map(|a| a.t.as_mut().into_iter().chain(a.tensors.iter_mut()));
    for t in g.initializer.iter_mut().chain(in_nodes) {
        if t.data_location() == proto::tensor_proto::DataLocation::External {
            t.raw_data = Some(read_external(t, dir)?);
            t.data_location = None;
            t.external_data.clear();
        }
    }
    Ok(())
}

/// Decodes a tensor's values (its external data read already: [`inline_external`]).
pub fn tensor_data(t: &TensorProto) -> Result<(Vec<usize>, Data)> {
    if t.dims.iter().any(|&d| d < 0) {
        bail!(
            "tensor '{}' has a negative dimension in {:?}",
            t.name(),
            t.dims
        );
    }
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let n = numel(&dims).ok_or_else(|| {
        err!(
            "tensor '{}' declares {:?}, more elements than actc handles",
            t.name(),
            t.dims
        )
    })?;
    let raw = t.raw_data();
    let dtype = DataType::try_from(t.data_type()).unwrap_or(DataType::Undefined);
    let data = match dtype {
        DataType::Float => Data::F32(if !raw.is_empty() {
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        } else {
            t.float_data.clone().into()
        }),
        DataType::Double => Data::F32(if !raw.is_empty() {
            raw.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect()
        } else {
            t.double_data.iter().map(|&v| v as f32).collect()
        }),
        DataType::Float16 => Data::F32(if !raw.is_empty() {
            raw.chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect()
        } else {
            t.int32_data.iter().map(|&v| f16_to_f32(v as u16)).collect()
        }),
        DataType::Int64 => Data::I64(if !raw.is_empty() {
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        } else {
            t.int64_data.clone().into()
        }),
        DataType::Int32 | DataType::Int16 | DataType::Int8 | DataType::Uint8 | DataType::Bool => {
            let width = match dtype {
                DataType::Int32 => 4,
                DataType::Int16 => 2,
                _ => 1,
            };
            Data::I64(if !raw.is_empty() {
                raw.chunks_exact(width)
                    .map(|c| match (dtype, width) {
                        (_, 4) => i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64,
                        (_, 2) => i16::from_le_bytes([c[0], c[1]]) as i64,
                        (DataType::Int8, _) => c[0] as i8 as i64,
                        _ => c[0] as i64,
                    })
                    .collect()
            } else {
                t.int32_data.iter().map(|&v| v as i64).collect()
            })
        }
        other => bail!(
            "tensor '{}' has element type {:?}, which actc does not read (float, double, float16 and integer types are supported)",
            t.name(),
            other
        ),
    };
    if data.len() != n {
        bail!(
            "tensor '{}' holds {} values but its shape {:?} needs {n}",
            t.name(),
            data.len(),
            dims
        );
    }
    Ok((dims, data))
}

/// The bytes of an external tensor. Only a regular file inside the model's folder is read
/// (as ONNX Runtime and `onnx.checker` allow), and only the range the tensor names.
fn read_external(t: &TensorProto, dir: &Path) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let get = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key() == k)
            .map(|e| e.value().to_string())
    };
    let name = t.name();
    let location =
        get("location").ok_or_else(|| err!("tensor '{name}' is external but names no location"))?;
    let relative = Path::new(&location);
    let inside = relative
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !inside {
        bail!(
            "tensor '{name}': external data location '{location}' leaves the model's folder; it must be a relative path inside it"
        );
    }
    let path = dir.join(relative);
    let fail = |e: std::io::Error| err!("tensor '{name}': {}: {e}", path.display());
    let (real, base) = (
        path.canonicalize().map_err(fail)?,
        dir.canonicalize().map_err(fail)?,
    );
    let meta = std::fs::metadata(&real).map_err(fail)?;
    if !real.starts_with(&base) || !meta.is_file() {
        bail!(
            "tensor '{name}': external data '{location}' is not a regular file inside the model's folder"
        );
    }
    let number = |k: &str, default: u64| -> Result<u64> {
        match get(k) {
            Some(v) => v
                .parse()
                .map_err(|_| err!("tensor '{name}': external data {k} '{v}' is not a number")),
            None => Ok(default),
        }
    };
    let offset = number("offset", 0)?;
    let length = number("length", meta.len().saturating_sub(offset))?;
    if offset
        .checked_add(length)
        .is_none_or(|end| end > meta.len())
    {
        bail!(
            "tensor '{name}': {} holds {} bytes, fewer than its offset {offset} + length {length}",
            path.display(),
            meta.len()
        );
    }
    let mut file = std::fs::File::open(&real).map_err(fail)?;
    file.seek(SeekFrom::Start(offset)).map_err(fail)?;
    let mut bytes = vec![0; length as usize];
    file.read_exact(&mut bytes).map_err(fail)?;
    Ok(bytes)
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if frac == 0 => sign,
        0 => {
            // subnormal: renormalise
            let mut e = 127 - 15 + 1;
            let mut f = frac;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        0x1f => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// A constant as an initializer of its values.
pub fn tensor_proto(name: &str, dims: &[usize], data: &Data) -> TensorProto {
    let data_type = match data {
        Data::F32(_) => DataType::Float,
        Data::I64(_) => DataType::Int64,
        Data::I8(_) => DataType::Int8,
    };
    let raw = data.bytes();
    TensorProto {
        name: Some(name.to_string()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type as i32),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// An integer attribute, as the back end writes it.
pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(proto::attribute_proto::AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(proto::attribute_proto::AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(proto::attribute_proto::AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(proto::attribute_proto::AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

/// The type ONNX gives the attributes actc reads, by name (the same across the ops that
/// have them): an attribute written with another type would otherwise read as a default
/// (a Gemm `beta` given as INTS read as 0).
fn attribute_type(name: &str) -> Option<AttributeType> {
    Some(match name {
        "alpha" | "beta" | "epsilon" | "min" | "max" | "value_float" => AttributeType::Float,
        "axis"
        | "group"
        | "transA"
        | "transB"
        | "keepdims"
        | "ceil_mode"
        | "count_include_pad"
        | "allowzero"
        | "noop_with_empty_axes"
        | "start"
        | "end"
        | "to"
        | "training_mode"
        | "blocksize"
        | "antialias"
        | "value_int" => AttributeType::Int,
        "strides" | "pads" | "dilations" | "kernel_shape" | "perm" | "axes" | "split"
        | "output_padding" | "output_shape" | "value_ints" => AttributeType::Ints,
        "auto_pad"
        | "mode"
        | "approximate"
        | "coordinate_transformation_mode"
        | "nearest_mode"
        | "keep_aspect_ratio_policy" => AttributeType::String,
        "value" => AttributeType::Tensor,
        "value_floats" | "scales" => AttributeType::Floats,
        _ => return None,
    })
}

/// Refuses a node whose attributes actc reads carry another type than ONNX gives them, or
/// declare one type and hold another.
pub fn check_attributes(node: &NodeProto) -> Result<()> {
    for a in &node.attribute {
        let declared = a.r#type.and_then(|t| AttributeType::try_from(t).ok());
        let holds = match declared {
            Some(AttributeType::Float) => a.f.is_some(),
            Some(AttributeType::Int) => a.i.is_some(),
            Some(AttributeType::String) => a.s.is_some(),
            Some(AttributeType::Tensor) => a.t.is_some(),
            _ => true,
        };
        let expected = attribute_type(a.name());
        if !holds || expected.is_some_and(|e| declared.is_some_and(|d| d != e)) {
            bail!(
                "node '{}' ({}): attribute {} is {}{}; ONNX defines it as {}",
                node_label(node),
                node.op_type(),
                a.name(),
                declared.map_or("untyped", |d| d.as_str_name()),
                if holds {
                    ""
                } else {
                    " but holds no such value"
                },
                expected.map_or("its declared type", |e| e.as_str_name())
            );
        }
    }
    Ok(())
}

/// Typed access to a node's attributes, with errors that name the node.
pub struct Attrs<'a> {
    node: &'a NodeProto,
}

impl<'a> Attrs<'a> {
    pub fn new(node: &'a NodeProto) -> Attrs<'a> {
        Attrs { node }
    }

    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name() == name)
    }

    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map(|a| a.i()).unwrap_or(default)
    }

    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map(|a| a.f()).unwrap_or(default)
    }

    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name)
            .map(|a| String::from_utf8_lossy(a.s()).into_owned())
            .unwrap_or_else(|| default.to_string())
    }

    pub fn tensor(&self, name: &str) -> Option<&'a TensorProto> {
        self.get(name).and_then(|a| a.t.as_ref())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Elements of a tensor of this shape, or `None` past what actc handles (2^32: beyond any
/// device it fine-tunes on) or on overflow.
pub fn numel(dims: &[usize]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= 1 << 32)
}

/// How error messages name a node: its name, or its first output when it has none.
pub fn node_label(node: &NodeProto) -> String {
    if !node.name().is_empty() {
        node.name().to_string()
    } else {
        node.output.first().cloned().unwrap_or_default()
    }
}
