//! The plan file: everything the runtime needs to fine-tune a model without the original ONNX
//! file, as prost messages (derive macros, so no `protoc` in any build).
//!
//! On disk: `MAGIC`, a little-endian `u32` format version, a `u64` payload length, the
//! prost-encoded [`Plan`], and a CRC-32 of the payload. prost encodes fields in tag order and
//! the plan holds no maps, so identical plans are identical bytes.

use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

pub use crate::ops::{Kind as OpKind, Op};
use prost::Message;
use prost::bytes::buf::UninitSlice;
use prost::bytes::{Buf, BufMut};

pub const MAGIC: &[u8; 8] = b"ACTCPLAN";
/// Bumped whenever a message changes incompatibly; the runtime refuses any other version.
/// 2: an ε-rule HOSVD compression of a large mode carries state (its tracked vectors).
/// 3: fused conv chains (`ConvChain`) in the frozen prefix, conv weight gradients fused
/// into their SGD update (`ConvBackwardWeightSgd`).
/// 4: a fused update's weight gradient may come from a compressed input; prefix lanes.
/// 5: low-rank adapters and sequential freezing's turns, which an older runtime would
/// ignore and train the wrong weights.
/// 6: an MSE over several outputs (`MseSegments`: each output's mean, weighted), which an
/// older runtime would read as one mean over all the values.
/// 7: int8 weights in the frozen prefix (`compile --prefix-precision int8`). Only such plans
/// are written as 7, so that every other plan still runs on a runtime that reads 6.
pub const FORMAT_VERSION: u32 = 7;
/// The oldest version this runtime reads: 7 added int8 prefix steps and changed nothing else.
const OLDEST_VERSION: u32 = 6;
/// Magic, version and payload length.
const HEADER: usize = 20;

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
    /// The buffer holding the model output that the loss reads (for accuracy and eval); with
    /// several trained outputs, their rows side by side (`Source::outputs`).
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
    /// Arena offsets of the further prefix lanes (`exec::lanes`): copies of the prefix's
    /// arena bytes in which other threads run other micro-batches at the same time. Empty:
    /// one micro-batch at a time.
    #[prost(uint64, repeated, tag = "18")]
    pub prefix_lanes: Vec<u64>,
    /// In a checkpoint that `train` saves: how far the run got, so `train --resume` goes on
    /// from there. Its optimizer and compressor state are then among `weights`.
    #[prost(message, optional, tag = "19")]
    pub progress: Option<Progress>,
    /// Low-rank adapters trained beside frozen weights (`compile --lora`).
    #[prost(message, repeated, tag = "20")]
    pub adapters: Vec<Adapter>,
    /// Sequential freezing of decomposed layers (`compile --freeze-schedule`).
    #[prost(message, optional, tag = "21")]
    pub freeze: Option<Freeze>,
}

/// Sequential freezing (Hajimolahoseini et al., arXiv 2309.03824): the factors `actc
/// decompose` made of a layer train in turns, one at a time, the others frozen. Every turn's
/// steps are in the plan and its memory plan holds them all; a turn leaves some out (the
/// frozen factors' weight gradients and updates, and whatever only they needed).
#[derive(Clone, PartialEq, Message)]
pub struct Freeze {
    /// Updates per turn; 0: one epoch per turn (the trainer tells the executor the epoch's
    /// length).
    #[prost(uint32, tag = "1")]
    pub every: u32,
    #[prost(message, repeated, tag = "2")]
    pub turns: Vec<Turn>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Turn {
    /// Indices of the training steps this turn leaves out.
    #[prost(uint32, repeated, tag = "1")]
    pub skip: Vec<u32>,
    /// The factor layers (node names) that train in this turn, for reports.
    #[prost(string, repeated, tag = "2")]
    pub trains: Vec<String>,
}

/// A weight frozen in training while a low-rank adapter beside it trains: the layer computes
/// with W + left·right (transposed when `transpose`), which `export` writes into W.
#[derive(Clone, PartialEq, Message)]
pub struct Adapter {
    /// The `source` names of the weights: the frozen one and the two factors.
    #[prost(string, tag = "1")]
    pub weight: String,
    #[prost(string, tag = "2")]
    pub left: String,
    #[prost(string, tag = "3")]
    pub right: String,
    #[prost(bool, tag = "4")]
    pub transpose: bool,
}

/// Where a training run stands: what it was started with (a run is only resumed with the
/// same), and how far it got.
#[derive(Clone, PartialEq, Message)]
pub struct Progress {
    #[prost(message, optional, tag = "1")]
    pub run: Option<Run>,
    /// Epochs completed.
    #[prost(uint32, tag = "2")]
    pub epochs_done: u32,
    /// Steps of the next epoch taken.
    #[prost(uint64, tag = "3")]
    pub steps_done: u64,
    /// Updates taken in all (the lr schedule's and Adam's step count).
    #[prost(uint64, tag = "4")]
    pub updates: u64,
    /// The next epoch's tallies over its steps taken: top-1 hits, summed loss.
    #[prost(uint64, tag = "5")]
    pub hits: u64,
    #[prost(double, tag = "6")]
    pub loss_sum: f64,
    /// The best validation score so far (what the `.best` file holds): the accuracy, or
    /// for regression targets the negated loss.
    #[prost(double, optional, tag = "7")]
    pub best: Option<f64>,
    /// The next epoch's summed absolute error over its steps taken (regression targets).
    #[prost(double, tag = "8")]
    pub abs_error_sum: f64,
    /// With several trained outputs, each one's summed squared error (its MSE per sample)
    /// over the next epoch's steps taken.
    #[prost(double, repeated, tag = "9")]
    pub output_sq_sums: Vec<f64>,
}

/// What decides a run's result besides the plan: checked when it is resumed.
#[derive(Clone, PartialEq, Message)]
pub struct Run {
    /// The CRC of the plan file trained.
    #[prost(uint32, tag = "1")]
    pub plan_crc: u32,
    #[prost(uint64, tag = "2")]
    pub seed: u64,
    #[prost(uint32, tag = "3")]
    pub epochs: u32,
    /// Training data: its path as given, and a checksum of its samples and labels.
    #[prost(string, tag = "4")]
    pub data: String,
    #[prost(uint32, tag = "5")]
    pub data_crc: u32,
    /// Validation data (`--val`, else the held-out fraction of the training data).
    #[prost(string, tag = "6")]
    pub val: String,
    #[prost(uint32, tag = "7")]
    pub val_crc: u32,
    /// Preprocessing and the hold-out, in words (`--scale`, `--mean`, `--std`, `--layout`,
    /// `--val-fraction`).
    #[prost(string, tag = "8")]
    pub settings: String,
    /// Threads the run used: a different count may change the results' last bits.
    #[prost(uint32, tag = "9")]
    pub threads: u32,
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
    /// The model's inputs when there are several or an integer one: the runtime then feeds
    /// each sample as one float row holding every input's values in turn (`input_shape` is
    /// [batch, row length]), and the frozen prefix unpacks them. Empty for one float input.
    #[prost(message, repeated, tag = "7")]
    pub inputs: Vec<ModelInput>,
    /// The outputs the loss reads, in order (`--train-output a,b`): one sample's targets
    /// are their values back to back. `output_name` is the first's name.
    #[prost(message, repeated, tag = "8")]
    pub outputs: Vec<TrainedOutput>,
}

/// A model output the loss reads: its name in the model and compiled shape (batch first).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrainedOutput {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, repeated, tag = "2")]
    pub shape: Vec<u64>,
}

/// One model input of a plan that packs several: its name, compiled shape and type.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelInput {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, repeated, tag = "2")]
    pub shape: Vec<u64>,
    #[prost(enumeration = "DType", tag = "3")]
    pub dtype: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DType {
    F32 = 0,
    I64 = 1,
    U32 = 2,
    U8 = 3,
    /// Signed bytes: the int8 weights of a quantized prefix conv.
    I8 = 4,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::I64 => 8,
            DType::U8 | DType::I8 => 1,
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
    /// What a compression carries from step to step (a fixed-rank HOSVD's factors).
    CompressorState = 12,
}

impl BufferKind {
    /// Persistent buffers live for the whole run and sit outside the reused arena.
    pub fn is_persistent(self) -> bool {
        matches!(
            self,
            BufferKind::Trainable
                | BufferKind::Frozen
                | BufferKind::OptimizerState
                | BufferKind::CompressorState
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
    /// Runs at once with the next step, each on its own thread: two compressions of small
    /// maps (`compile`'s schedule pairs them), planned so that neither touches what the
    /// other writes. A runtime that ignores it runs them one after the other, as safely.
    #[prost(bool, tag = "8")]
    pub beside_next: bool,
}

impl Step {
    /// The step's operation. `None` when the step carries none, or one this build does not
    /// know (prost decodes an unknown oneof as absent: a plan from a newer actc), which the
    /// executor refuses when it loads the plan.
    pub fn kind(&self) -> Option<&OpKind> {
        self.op.as_ref().and_then(|o| o.kind.as_ref())
    }
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
                "plan format version {v}, this actc reads versions {OLDEST_VERSION} to {FORMAT_VERSION}; recompile the model with this actc"
            ),
            PlanError::Truncated => write!(f, "plan file is truncated"),
            PlanError::Checksum => write!(f, "plan file is damaged (checksum mismatch)"),
            PlanError::Decode(e) => write!(f, "plan file is damaged ({e})"),
        }
    }
}

impl std::error::Error for PlanError {}

/// Where [`Plan::write_to`] encodes: a buffer handed to prost, flushed into the writer
/// (and the CRC) whenever it is full. prost's encoder cannot fail midway, so the first
/// write error is kept and later bytes are dropped.
struct Sink<'w, W: Write> {
    out: &'w mut W,
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    error: Option<std::io::Error>,
}

impl<W: Write> Sink<'_, W> {
    fn flush(&mut self) {
        if self.error.is_none() {
            self.crc.update(&self.buf);
            self.error = self.out.write_all(&self.buf).err();
        }
        self.buf.clear();
    }
}

// SAFETY: `chunk_mut` hands out the buffer's spare capacity (never empty: a full buffer is
// flushed first), and `advance_mut` only counts bytes of it the encoder has written.
unsafe impl<W: Write> BufMut for Sink<'_, W> {
    fn remaining_mut(&self) -> usize {
        isize::MAX as usize - self.buf.len()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        let len = self.buf.len() + cnt;
        assert!(len <= self.buf.capacity(), "advanced past the chunk");
        // SAFETY: the caller wrote these `cnt` bytes of the chunk `chunk_mut` gave.
        unsafe { self.buf.set_len(len) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        if self.buf.len() == self.buf.capacity() {
            self.flush();
        }
        UninitSlice::uninit(self.buf.spare_capacity_mut())
    }
}

impl Plan {
    /// Whether a step reads int8 weights (a prefix compiled with `--prefix-precision int8`).
    pub fn has_int8(&self) -> bool {
        self.buffers.iter().any(|b| b.dtype() == DType::I8)
    }

    /// The version the plan is written as: the oldest that can hold it.
    fn format_version(&self) -> u32 {
        if self.has_int8() {
            FORMAT_VERSION
        } else {
            OLDEST_VERSION
        }
    }

    /// How the own prefix runs, in words: "16 samples at a time", or with lanes "2 lanes
    /// of 8 samples at a time".
    pub fn prefix_runs(&self) -> String {
        let m = self.prefix_batch;
        let samples = format!("{m} sample{} at a time", if m == 1 { "" } else { "s" });
        match self.prefix_lanes.len() + 1 {
            1 => samples,
            l => format!("{l} lanes of {samples}"),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.encoded_len() + 4);
        self.write_to(&mut out)
            .expect("writing into a Vec cannot fail");
        out
    }

    /// Writes the plan file into `w`: the payload is encoded straight into it through a
    /// small buffer, so saving a plan (mostly weights: 175 MB for DINOv2 with its frozen
    /// prefix) needs no payload-sized buffer in memory.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        self.write_with(w, &[], |_| &[], None)
    }

    /// [`Plan::write_to`] of this plan (whose `weights` are left out) with `weights` added,
    /// each one's values taken from `data(weight)` where they lie instead of its own `data`,
    /// and with `onnx`'s ONNX parts (this plan's own being empty) copied from that plan
    /// file: what an executor saves without a copy of its weights or of the model. Protobuf
    /// readers take fields in any order, so the file reads back as one plan.
    pub fn write_with<'d>(
        &self,
        w: &mut impl Write,
        weights: &[Weight],
        data: impl Fn(&Weight) -> &'d [u8],
        onnx: Option<&PlanFile>,
    ) -> std::io::Result<()> {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
        const WEIGHTS: u32 = 6;
        const DATA: u32 = 3;
        debug_assert!(
            weights.is_empty()
                || self.weights.is_empty() && weights.iter().all(|w| w.data.is_empty()),
            "weights given apart carry no data and are not also among the plan's"
        );
        debug_assert!(
            onnx.is_none() || self.prefix_onnx.is_empty() && self.rest_onnx.is_empty(),
            "ONNX parts copied from a file are not also the plan's own"
        );
        // A bytes field's length on the wire; an empty one is left out.
        let field_len = |tag: u32, n: usize| match n {
            0 => 0,
            n => key_len(tag) + encoded_len_varint(n as u64) + n,
        };
        let message_len = |wt: &Weight| wt.encoded_len() + field_len(DATA, data(wt).len());
        let parts = onnx.map_or([(0, (0, 0)); 2], PlanFile::onnx_fields);
        let len = self.encoded_len()
            + weights
                .iter()
                .map(|wt| {
                    let n = message_len(wt);
                    key_len(WEIGHTS) + encoded_len_varint(n as u64) + n
                })
                .sum::<usize>()
            + parts
                .iter()
                .map(|&(tag, (_, n))| field_len(tag, n as usize))
                .sum::<usize>();
        w.write_all(MAGIC)?;
        w.write_all(&self.format_version().to_le_bytes())?;
        w.write_all(&(len as u64).to_le_bytes())?;
        let mut sink = Sink {
            out: w,
            buf: Vec::with_capacity(1 << 16),
            crc: crc32fast::Hasher::new(),
            error: None,
        };
        self.encode_raw(&mut sink);
        for wt in weights {
            let values = data(wt);
            encode_key(WEIGHTS, WireType::LengthDelimited, &mut sink);
            encode_varint(message_len(wt) as u64, &mut sink);
            wt.encode_raw(&mut sink);
            if !values.is_empty() {
                encode_key(DATA, WireType::LengthDelimited, &mut sink);
                encode_varint(values.len() as u64, &mut sink);
                sink.put_slice(values);
            }
        }
        if let Some(file) = onnx {
            let mut chunk = vec![0u8; 1 << 16];
            for (tag, (offset, n)) in parts.into_iter().filter(|&(_, (_, n))| n > 0) {
                encode_key(tag, WireType::LengthDelimited, &mut sink);
                encode_varint(n, &mut sink);
                let mut at = 0;
                while at < n && sink.error.is_none() {
                    let part = &mut chunk[..(n - at).min(1 << 16) as usize];
                    match file.read_at((offset + at, part.len() as u64), part) {
                        Ok(()) => sink.put_slice(part),
                        Err(e) => sink.error = Some(e),
                    }
                    at += part.len() as u64;
                }
            }
        }
        sink.flush();
        let Sink {
            crc, error, out, ..
        } = sink;
        match error {
            Some(e) => Err(e),
            None => out.write_all(&crc.finalize().to_le_bytes()),
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Plan, PlanError> {
        Plan::read(bytes)
    }

    /// Decodes while reading, through a small buffer: holding the whole file besides the
    /// decoded plan would double what loading needs (the plan is mostly weights).
    pub fn load(path: &Path) -> Result<Plan, PlanError> {
        let file = std::fs::File::open(path).map_err(PlanError::Io)?;
        Plan::read(std::io::BufReader::with_capacity(1 << 16, file))
    }

    fn read(r: impl Read) -> Result<Plan, PlanError> {
        read_payload(r, |p| Plan::decode(p).map_err(PlanError::Decode))
    }

    /// [`Plan::load`] without the large byte fields: the weights' bytes and the two ONNX
    /// parts stay in the file, which [`PlanFile`] keeps open to read them when they are
    /// needed (the runtime copies weights straight into its memory; the ONNX parts are only
    /// read to save or export). A plan is mostly those bytes, so this is what a training
    /// process should hold.
    pub fn open(path: &Path) -> Result<(Plan, PlanFile), PlanError> {
        let file = std::fs::File::open(path).map_err(PlanError::Io)?;
        let mut places = Places::default();
        let plan = read_payload(std::io::BufReader::with_capacity(1 << 16, &file), |p| {
            decode_leaving_bytes(p, &mut places)
        })?;
        if places.weights.len() != plan.weights.len() {
            return Err(PlanError::Truncated);
        }
        Ok((plan, PlanFile { file, places }))
    }

    /// The CRC a plan file stores of its payload: what tells one plan from another without
    /// reading it (checked by [`Plan::open`] and [`Plan::load`], not here).
    pub fn stored_crc(path: &Path) -> Result<u32, PlanError> {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::File::open(path).map_err(PlanError::Io)?;
        let mut magic = [0u8; MAGIC.len()];
        if read_up_to(&mut file, &mut magic).map_err(PlanError::Io)? < magic.len()
            || &magic != MAGIC
        {
            return Err(PlanError::NotAPlan);
        }
        let len = file.seek(SeekFrom::End(0)).map_err(PlanError::Io)?;
        if len < (HEADER + 4) as u64 {
            return Err(PlanError::Truncated);
        }
        let mut crc = [0u8; 4];
        file.seek(SeekFrom::End(-4)).map_err(PlanError::Io)?;
        read_up_to(&mut file, &mut crc).map_err(PlanError::Io)?;
        Ok(u32::from_le_bytes(crc))
    }

    pub fn buffer(&self, id: u32) -> &Buffer {
        &self.buffers[id as usize]
    }
}

/// Checks a plan file's header, runs `decode` over its payload and checks the payload's CRC
/// (a damaged file is reported as such even when the decoder failed first).
fn read_payload<R: Read, T>(
    mut r: R,
    decode: impl FnOnce(&mut Payload<R>) -> Result<T, PlanError>,
) -> Result<T, PlanError> {
    let mut header = [0u8; HEADER];
    let got = read_up_to(&mut r, &mut header).map_err(PlanError::Io)?;
    if got < MAGIC.len() || &header[..MAGIC.len()] != MAGIC {
        return Err(PlanError::NotAPlan);
    }
    if got < HEADER {
        return Err(PlanError::Truncated);
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(PlanError::Version(version));
    }
    let len = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    let mut payload = Payload::new(r, len);
    let decoded = decode(&mut payload);
    // Whatever the decoder left (it stops at the first damaged field) still counts
    // towards the checksum, which tells a damaged file from a plan of another shape.
    while payload.remaining > 0 {
        let rest = payload.chunk().len();
        payload.advance(rest);
    }
    let Payload {
        mut source,
        crc,
        failed,
        ..
    } = payload;
    match failed {
        Some(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(PlanError::Truncated);
        }
        Some(e) => return Err(PlanError::Io(e)),
        None => {}
    }
    let mut stored = [0u8; 4];
    if read_up_to(&mut source, &mut stored).map_err(PlanError::Io)? < 4 {
        return Err(PlanError::Truncated);
    }
    if crc.finalize().to_le_bytes() != stored {
        return Err(PlanError::Checksum);
    }
    decoded
}

/// Reads until `buf` is full or the input ends; returns how much was read.
pub(crate) fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The payload of a plan file as a [`prost::bytes::Buf`] over a reader: `len` bytes, read a
/// window at a time and checksummed as they pass. A read error or an early end makes the
/// payload look exhausted to the decoder and is kept in `failed`.
struct Payload<R> {
    source: R,
    window: Vec<u8>,
    at: usize,
    /// Payload bytes consumed so far.
    position: u64,
    remaining: u64,
    crc: crc32fast::Hasher,
    failed: Option<std::io::Error>,
}

impl<R: Read> Payload<R> {
    fn new(source: R, len: u64) -> Self {
        let mut p = Payload {
            source,
            window: Vec::with_capacity(1 << 16),
            at: 0,
            position: 0,
            remaining: len,
            crc: crc32fast::Hasher::new(),
            failed: None,
        };
        p.refill();
        p
    }

    fn refill(&mut self) {
        let want = (self.window.capacity() as u64).min(self.remaining) as usize;
        self.window.resize(want, 0);
        self.at = 0;
        match read_up_to(&mut self.source, &mut self.window) {
            Ok(got) if got == want => self.crc.update(&self.window),
            Ok(_) => self.fail(std::io::ErrorKind::UnexpectedEof.into()),
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        self.failed = Some(e);
        self.remaining = 0;
        self.window.clear();
    }
}

impl<R: Read> prost::bytes::Buf for Payload<R> {
    fn remaining(&self) -> usize {
        self.remaining as usize
    }

    fn chunk(&self) -> &[u8] {
        &self.window[self.at..]
    }

    fn advance(&mut self, cnt: usize) {
        assert!(
            cnt <= self.window.len() - self.at,
            "advance past the window"
        );
        self.at += cnt;
        self.position += cnt as u64;
        self.remaining -= cnt as u64;
        if self.at == self.window.len() && self.remaining > 0 {
            self.refill();
        }
    }
}

/// Where the large byte fields of a plan opened by [`Plan::open`] lie in its file.
#[derive(Default)]
struct Places {
    /// (file offset, length) of each weight's bytes, in the plan's order.
    weights: Vec<(u64, u64)>,
    prefix_onnx: (u64, u64),
    rest_onnx: (u64, u64),
}

/// A plan file kept open for the bytes [`Plan::open`] left in it.
pub struct PlanFile {
    file: std::fs::File,
    places: Places,
}

impl PlanFile {
    /// The length of weight `i`'s bytes.
    pub fn weight_len(&self, i: usize) -> u64 {
        self.places.weights[i].1
    }

    /// Weight `i`'s bytes into `out` (of [`PlanFile::weight_len`]).
    pub fn read_weight(&self, i: usize, out: &mut [u8]) -> std::io::Result<()> {
        self.read_at(self.places.weights[i], out)
    }

    /// The plan's `prefix_onnx`, read from the file.
    pub fn prefix_onnx(&self) -> std::io::Result<Vec<u8>> {
        self.read_whole(self.places.prefix_onnx)
    }

    /// The plan's `rest_onnx`, read from the file.
    pub fn rest_onnx(&self) -> std::io::Result<Vec<u8>> {
        self.read_whole(self.places.rest_onnx)
    }

    /// Where the plan's ONNX parts lie in the file, with their field tags in [`Plan`]:
    /// (tag, (offset, length)).
    fn onnx_fields(&self) -> [(u32, (u64, u64)); 2] {
        [(2, self.places.prefix_onnx), (3, self.places.rest_onnx)]
    }

    fn read_whole(&self, place: (u64, u64)) -> std::io::Result<Vec<u8>> {
        let mut v = vec![0; place.1 as usize];
        self.read_at(place, &mut v).map(|_| v)
    }

    fn read_at(&self, (offset, len): (u64, u64), out: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        debug_assert_eq!(out.len() as u64, len);
        self.file.read_exact_at(out, offset)
    }
}

/// Decodes a plan like prost does, but records where the weights' bytes and the ONNX parts
/// are instead of copying them. Field numbers are [`Plan`]'s and [`Weight`]'s.
fn decode_leaving_bytes<R: Read>(
    buf: &mut Payload<R>,
    places: &mut Places,
) -> Result<Plan, PlanError> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint};
    let damaged = |e| PlanError::Decode(e);
    // The bytes of a length-delimited field: skipped, their place in the file returned.
    let skip = |buf: &mut Payload<R>| -> Result<(u64, u64), PlanError> {
        let len = decode_varint(buf).map_err(damaged)?;
        if len > buf.remaining {
            return Err(PlanError::Truncated);
        }
        let place = (HEADER as u64 + buf.position, len);
        let mut left = len;
        while left > 0 {
            let n = (buf.chunk().len() as u64).min(left);
            // An empty window: the file ended before the length its header gave.
            if n == 0 {
                return Err(PlanError::Truncated);
            }
            buf.advance(n as usize);
            left -= n;
        }
        Ok(place)
    };
    let mut plan = Plan::default();
    while buf.has_remaining() {
        let (tag, wire) = decode_key(buf).map_err(damaged)?;
        match (tag, wire) {
            (2, WireType::LengthDelimited) => places.prefix_onnx = skip(buf)?,
            (3, WireType::LengthDelimited) => places.rest_onnx = skip(buf)?,
            (6, WireType::LengthDelimited) => {
                let len = decode_varint(buf).map_err(damaged)?;
                let end = buf.position + len;
                let (mut weight, mut data) = (Weight::default(), (0, 0));
                while buf.position < end && buf.has_remaining() {
                    let (tag, wire) = decode_key(buf).map_err(damaged)?;
                    if (tag, wire) == (3, WireType::LengthDelimited) {
                        data = skip(buf)?;
                    } else {
                        weight
                            .merge_field(tag, wire, buf, DecodeContext::default())
                            .map_err(damaged)?;
                    }
                }
                if buf.position != end {
                    return Err(PlanError::Truncated);
                }
                plan.weights.push(weight);
                places.weights.push(data);
            }
            _ => plan
                .merge_field(tag, wire, buf, DecodeContext::default())
                .map_err(damaged)?,
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan with int8 weights is written as version 7, any other as 6, so that a runtime
    /// that reads 6 still runs every plan it can; this one reads both and no others.
    #[test]
    fn only_int8_plans_need_the_newer_version() {
        let version = |plan: &Plan| {
            let mut bytes = Vec::new();
            plan.write_to(&mut bytes).unwrap();
            (u32::from_le_bytes(bytes[8..12].try_into().unwrap()), bytes)
        };
        let mut plan = Plan {
            buffers: vec![Buffer {
                name: "w".into(),
                shape: vec![4],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (v, bytes) = version(&plan);
        assert_eq!(v, 6);
        assert!(Plan::from_bytes(&bytes).unwrap() == plan);
        plan.buffers[0].dtype = DType::I8 as i32;
        let (v, mut bytes) = version(&plan);
        assert_eq!(v, 7);
        assert!(Plan::from_bytes(&bytes).unwrap() == plan);
        for other in [5u32, 8] {
            bytes[8..12].copy_from_slice(&other.to_le_bytes());
            let e = Plan::from_bytes(&bytes).err().unwrap().to_string();
            assert!(
                e.contains(&format!("version {other}")) && e.contains("6 to 7"),
                "{e}"
            );
        }
    }

    /// A plan of many buffers' worth of weights goes through the sink's buffer several
    /// times: it reads back whole (the CRC checked), also with its weights' values given
    /// apart, and a writer that fails midway makes the write fail rather than leave a file
    /// that looks complete.
    #[test]
    fn plans_stream_into_a_writer() {
        let plan = Plan {
            weights: (0..5)
                .map(|i| Weight {
                    buffer: i,
                    source: format!("w{i}"),
                    data: (0..100_000u32).map(|v| (v * (i + 1)) as u8).collect(),
                })
                .collect(),
            ..Default::default()
        };
        let mut bytes = Vec::new();
        plan.write_to(&mut bytes).unwrap();
        assert!(bytes.len() > 500_000);
        assert!(Plan::from_bytes(&bytes).unwrap() == plan);

        // The weights given apart, their values read from elsewhere: the same plan.
        let bare = Plan {
            weights: Vec::new(),
            ..plan.clone()
        };
        let light: Vec<Weight> = plan
            .weights
            .iter()
            .map(|w| Weight {
                data: Vec::new(),
                ..w.clone()
            })
            .collect();
        let mut apart = Vec::new();
        let values = |w: &Weight| plan.weights[w.buffer as usize].data.as_slice();
        bare.write_with(&mut apart, &light, values, None).unwrap();
        assert!(Plan::from_bytes(&apart).unwrap() == plan);

        struct FailsAfter(usize);
        impl Write for FailsAfter {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if self.0 < b.len() {
                    return Err(std::io::Error::other("disk full"));
                }
                self.0 -= b.len();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let e = plan.write_to(&mut FailsAfter(200_000)).unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
    }
}
