//! Tensors of the IR: named, with a static shape, an element type and, for constants, data.

use crate::onnx::proto::NodeProto;
use actc_runtime::plan::DType;
use std::sync::Arc;

pub type TensorId = usize;

/// The ONNX node an IR node or folded constant came from, with the IR tensor of each of its
/// inputs (`None` for an omitted optional input).
#[derive(Clone, Debug, PartialEq)]
pub struct OnnxSource {
    pub proto: Arc<NodeProto>,
    pub inputs: Vec<Option<TensorId>>,
}

/// Constant contents. Shared, because folding and the passes copy tensors around.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Arc<[f32]>),
    I64(Arc<[i64]>),
    /// A quantized weight of the frozen prefix (`--prefix-precision int8`).
    I8(Arc<[i8]>),
}

impl Data {
    pub fn len(&self) -> usize {
        match self {
            Data::F32(d) => d.len(),
            Data::I64(d) => d.len(),
            Data::I8(d) => d.len(),
        }
    }

    /// The values as little-endian bytes: a plan's weight, an ONNX initializer's raw data.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Data::F32(d) => d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I64(d) => d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I8(d) => d.iter().map(|&x| x as u8).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::I64(_) => DType::I64,
            Data::I8(_) => DType::I8,
        }
    }

    /// Values as integers (floats truncated), for shape arithmetic.
    pub fn as_i64(&self) -> Vec<i64> {
        match self {
            Data::F32(d) => d.iter().map(|&v| v as i64).collect(),
            Data::I64(d) => d.to_vec(),
            Data::I8(d) => d.iter().map(|&v| v as i64).collect(),
        }
    }

    pub fn as_f32(&self) -> Vec<f32> {
        match self {
            Data::F32(d) => d.to_vec(),
            Data::I64(d) => d.iter().map(|&v| v as f32).collect(),
            Data::I8(d) => d.iter().map(|&v| v as f32).collect(),
        }
    }
}

/// What a tensor is to the training graph; the memory planner turns it into a buffer kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A graph input of the model (of the trainable part, after `select`: a boundary tensor).
    Input,
    /// The model's input when the plan runs the frozen prefix on actc's kernels.
    ModelInput,
    /// A constant: an initializer, a `Constant` node or a folded sub-graph.
    Const,
    /// A constant that training updates.
    Trainable,
    /// A value computed by a node.
    Value,
    Label,
    Loss,
    Gradient,
    OptimizerState,
    /// What a compression carries from one step to the next.
    CompressorState,
}

#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub role: Role,
    pub data: Option<Data>,
    /// For a constant that import folded: the ONNX node that computed it (a shape
    /// computation, say), which the ONNX back end writes instead of the folded values.
    pub folded: Option<Arc<OnnxSource>>,
}

impl Tensor {
    pub fn value(name: impl Into<String>, shape: Vec<usize>, dtype: DType) -> Tensor {
        Tensor {
            name: name.into(),
            shape,
            dtype,
            role: Role::Value,
            data: None,
            folded: None,
        }
    }

    /// The shape as the runtime's buffers and geometry rules take it.
    pub fn dims(&self) -> Vec<u64> {
        self.shape.iter().map(|&d| d as u64).collect()
    }

    pub fn constant(name: impl Into<String>, shape: Vec<usize>, data: Data) -> Tensor {
        Tensor {
            name: name.into(),
            shape,
            dtype: data.dtype(),
            role: Role::Const,
            data: Some(data),
            folded: None,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }

    pub fn is_const(&self) -> bool {
        matches!(self.role, Role::Const | Role::Trainable)
    }
}
