//! The plan file: everything the runtime needs to fine-tune a model without the original ONNX
//! file, as prost messages (derive macros, so no `protoc` in any build).
//!
//! On disk: `MAGIC`, a little-endian `u32` format version, a `u64` payload length, the
//! prost-encoded [`Plan`], and a CRC-32 of the payload. prost encodes fields in tag order and
//! the plan holds no maps, so identical plans are identical bytes.

use std::fmt;
use std::path::Path;

pub use crate::ops::{Kind as OpKind, Op};
use prost::Message;

pub const MAGIC: &[u8; 8] = b"ACTCPLAN";
/// Bumped whenever a message changes incompatibly; the runtime refuses any other version.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, PartialEq, Message)]
pub struct Plan {
    /// Where the plan came from: file name of the model, the command line that made it.
    #[prost(message, optional, tag = "1")]
    pub source: Option<Source>,
    /// The frozen prefix as an ONNX model whose outputs are the boundary tensors; empty when
    /// training reaches the model input.
    #[prost(bytes = "vec", tag = "2")]
    pub prefix_onnx: Vec<u8>,
    /// The rest of the original model (every node not in the prefix) with the original
    /// weights, so `actc export` can rebuild the full model with fine-tuned weights.
    #[prost(bytes = "vec", tag = "3")]
    pub rest_onnx: Vec<u8>,
    #[prost(message, repeated, tag = "4")]
    pub buffers: Vec<Buffer>,
    #[prost(message, repeated, tag = "5")]
    pub steps: Vec<Step>,
    /// Initial contents of the persistent buffers (weights, frozen constants).
    #[prost(message, repeated, tag = "6")]
    pub weights: Vec<Weight>,
    #[prost(message, optional, tag = "7")]
    pub hyper: Option<Hyper>,
    #[prost(message, optional, tag = "8")]
    pub memory: Option<Memory>,
    /// Buffers the runtime fills before a step: boundary tensors (from the prefix) and labels.
    #[prost(uint32, repeated, tag = "9")]
    pub feeds: Vec<u32>,
    /// The buffer holding the scalar loss after the forward phase.
    #[prost(uint32, tag = "10")]
    pub loss: u32,
    /// The buffer holding the model output that the loss reads (for accuracy and eval).
    #[prost(uint32, tag = "11")]
    pub output: u32,
    /// Number of leading steps that form inference (everything up to the model output).
    #[prost(uint32, tag = "12")]
    pub eval_steps: u32,
    #[prost(message, repeated, tag = "13")]
    pub layers: Vec<Layer>,
    /// Number of leading steps that are the frozen prefix on actc's own kernels (phase
    /// `Prefix`: model input → boundary tensors); 0 when tract runs `prefix_onnx` instead.
    #[prost(uint32, tag = "14")]
    pub prefix_steps: u32,
    /// The buffer of one micro-batch of the model input, which the prefix steps read (when
    /// `prefix_steps > 0`).
    #[prost(uint32, tag = "15")]
    pub input: u32,
    /// Samples per run of the own prefix: it runs `batch / prefix_batch` times per batch.
    #[prost(uint32, tag = "16")]
    pub prefix_batch: u32,
    /// The prefix's outputs for one micro-batch, in the order of the boundary feeds: each run
    /// copies them into its rows of the boundary tensors.
    #[prost(uint32, repeated, tag = "17")]
    pub prefix_outputs: Vec<u32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Source {
    #[prost(string, tag = "1")]
    pub model: String,
    #[prost(string, tag = "2")]
    pub producer: String,
    /// Name of the model input and the fixed shape it was compiled for.
    #[prost(string, tag = "3")]
    pub input_name: String,
    #[prost(uint64, repeated, tag = "4")]
    pub input_shape: Vec<u64>,
    #[prost(string, tag = "5")]
    pub output_name: String,
    #[prost(string, tag = "6")]
    pub layers: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DType {
    F32 = 0,
    I64 = 1,
    U32 = 2,
    U8 = 3,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::I64 => 8,
            DType::U8 => 1,
        }
    }
}

/// What a buffer holds; decides its region and how `inspect` accounts for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum BufferKind {
    /// A boundary tensor, written by the frozen prefix.
    Boundary = 0,
    Label = 1,
    /// A forward value that dies in the forward phase.
    Activation = 2,
    /// A forward value that a backward step reads (what activation compression targets).
    Saved = 3,
    Gradient = 4,
    /// The gradient of a trainable weight.
    WeightGradient = 5,
    Workspace = 6,
    Loss = 7,
    Trainable = 8,
    Frozen = 9,
    OptimizerState = 10,
    /// The model input, read by the prefix steps when actc runs the prefix itself.
    Input = 11,
}

impl BufferKind {
    /// Persistent buffers live for the whole run and sit outside the reused arena.
    pub fn is_persistent(self) -> bool {
        matches!(
            self,
            BufferKind::Trainable | BufferKind::Frozen | BufferKind::OptimizerState
        )
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct Buffer {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, repeated, tag = "2")]
    pub shape: Vec<u64>,
    #[prost(enumeration = "DType", tag = "3")]
    pub dtype: i32,
    #[prost(enumeration = "BufferKind", tag = "4")]
    pub kind: i32,
    /// Byte offset in the arena (transient buffers) or in the persistent region.
    #[prost(uint64, tag = "5")]
    pub offset: u64,
    #[prost(uint64, tag = "6")]
    pub bytes: u64,
}

impl Buffer {
    pub fn numel(&self) -> usize {
        self.shape.iter().product::<u64>() as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Phase {
    Forward = 0,
    Loss = 1,
    Backward = 2,
    Update = 3,
    /// The frozen prefix, run on actc's kernels before the forward phase (inference only).
    Prefix = 4,
}

#[derive(Clone, PartialEq, Message)]
pub struct Step {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub op: Option<Op>,
    #[prost(uint32, repeated, tag = "3")]
    pub inputs: Vec<u32>,
    #[prost(uint32, repeated, tag = "4")]
    pub outputs: Vec<u32>,
    #[prost(enumeration = "Phase", tag = "5")]
    pub phase: i32,
    /// Scratch buffer for this step only, if its kernel needs one.
    #[prost(uint32, optional, tag = "6")]
    pub workspace: Option<u32>,
    /// For backward, loss and update steps: the forward step they serve.
    #[prost(string, tag = "7")]
    pub origin: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Weight {
    #[prost(uint32, tag = "1")]
    pub buffer: u32,
    /// Name of the ONNX initializer this came from (what `export` writes back).
    #[prost(string, tag = "2")]
    pub source: String,
    /// Little-endian f32 values.
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

/// A trainable layer (a Conv/Gemm/MatMul node of the model), for reports.
#[derive(Clone, PartialEq, Message)]
pub struct Layer {
    #[prost(string, tag = "1")]
    pub node: String,
    #[prost(string, tag = "2")]
    pub op_type: String,
    /// 1-based position counted from the output, as `--layers` counts.
    #[prost(uint32, tag = "3")]
    pub from_output: u32,
    #[prost(uint32, repeated, tag = "4")]
    pub weights: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum LossKind {
    CrossEntropy = 0,
    Mse = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Schedule {
    Constant = 0,
    Cosine = 1,
    LinearWarmup = 2,
}

#[derive(Clone, PartialEq, Message)]
pub struct Hyper {
    #[prost(enumeration = "LossKind", tag = "1")]
    pub loss: i32,
    #[prost(float, tag = "2")]
    pub lr: f32,
    #[prost(enumeration = "Schedule", tag = "3")]
    pub schedule: i32,
    #[prost(uint32, tag = "4")]
    pub warmup_steps: u32,
    /// Global gradient-norm clipping; 0 means off.
    #[prost(float, tag = "5")]
    pub clip_grad_norm: f32,
    #[prost(uint32, tag = "6")]
    pub batch: u32,
}

/// The planner's accounting, in bytes.
#[derive(Clone, PartialEq, Message)]
pub struct Memory {
    /// Size of the reused arena (transient buffers).
    #[prost(uint64, tag = "1")]
    pub arena: u64,
    /// Weights, frozen constants and optimizer state.
    #[prost(uint64, tag = "2")]
    pub persistent: u64,
    /// What the transient buffers would take without reuse.
    #[prost(uint64, tag = "3")]
    pub naive: u64,
    /// Bytes of forward values kept for the backward phase.
    #[prost(uint64, tag = "4")]
    pub saved: u64,
    /// The arena the own prefix would need alone (0 without one) and the one the training
    /// steps would need alone; the arena holds both phases, so it is at least the larger.
    #[prost(uint64, tag = "5")]
    pub prefix_arena: u64,
    #[prost(uint64, tag = "6")]
    pub training_arena: u64,
}

#[derive(Debug)]
pub enum PlanError {
    Io(std::io::Error),
    NotAPlan,
    Version(u32),
    Truncated,
    Checksum,
    Decode(prost::DecodeError),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Io(e) => write!(f, "{e}"),
            PlanError::NotAPlan => write!(
                f,
                "not an actc plan (no ACTCPLAN header); make one with `actc compile MODEL.onnx`"
            ),
            PlanError::Version(v) => write!(
                f,
                "plan format version {v}, this actc reads version {FORMAT_VERSION}; recompile the model with this actc"
            ),
            PlanError::Truncated => write!(f, "plan file is truncated"),
            PlanError::Checksum => write!(f, "plan file is damaged (checksum mismatch)"),
            PlanError::Decode(e) => write!(f, "plan file is damaged ({e})"),
        }
    }
}

impl std::error::Error for PlanError {}

impl Plan {
    pub fn to_bytes(&self) -> Vec<u8> {
        let payload = self.encode_to_vec();
        let mut out = Vec::with_capacity(payload.len() + 24);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&payload);
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Plan, PlanError> {
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(PlanError::NotAPlan);
        }
        let header = bytes.get(8..20).ok_or(PlanError::Truncated)?;
        let version = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(PlanError::Version(version));
        }
        let len = u64::from_le_bytes(header[4..12].try_into().expect("8 bytes")) as usize;
        let end = 20usize.checked_add(len).ok_or(PlanError::Truncated)?;
        let payload = bytes.get(20..end).ok_or(PlanError::Truncated)?;
        let crc = bytes.get(end..end + 4).ok_or(PlanError::Truncated)?;
        if crc32fast::hash(payload).to_le_bytes() != crc {
            return Err(PlanError::Checksum);
        }
        Plan::decode(payload).map_err(PlanError::Decode)
    }

    pub fn load(path: &Path) -> Result<Plan, PlanError> {
        Plan::from_bytes(&std::fs::read(path).map_err(PlanError::Io)?)
    }

    pub fn buffer(&self, id: u32) -> &Buffer {
        &self.buffers[id as usize]
    }
}
