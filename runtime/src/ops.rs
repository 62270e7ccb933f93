//! The operations a plan's steps perform: the one vocabulary shared by the compiler (which
//! builds and differentiates graphs of them) and the runtime (which executes them).
//!
//! Each variant's inputs and outputs are listed beside it, in order; shapes travel on the
//! buffers, so attributes hold only what the shapes cannot tell.

use prost::{Message, Oneof};

#[derive(Clone, PartialEq, Message)]
pub struct Op {
    #[prost(
        oneof = "Kind",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 80, 81, 82, 83, 84, 85"
    )]
    pub kind: Option<Kind>,
}

impl From<Kind> for Op {
    fn from(kind: Kind) -> Op {
        Op { kind: Some(kind) }
    }
}

/// 2-D convolution geometry (ONNX Conv attributes after auto_pad is resolved).
#[derive(Clone, PartialEq, Eq, Hash, Message)]
pub struct Conv {
    #[prost(uint32, repeated, tag = "1")]
    pub kernel: Vec<u32>,
    #[prost(uint32, repeated, tag = "2")]
    pub strides: Vec<u32>,
    /// top, left, bottom, right
    #[prost(uint32, repeated, tag = "3")]
    pub pads: Vec<u32>,
    #[prost(uint32, repeated, tag = "4")]
    pub dilations: Vec<u32>,
    #[prost(uint32, tag = "5")]
    pub group: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Gemm {
    #[prost(bool, tag = "1")]
    pub trans_a: bool,
    #[prost(bool, tag = "2")]
    pub trans_b: bool,
    #[prost(float, tag = "3")]
    pub alpha: f32,
    #[prost(float, tag = "4")]
    pub beta: f32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Epsilon {
    #[prost(float, tag = "1")]
    pub epsilon: f32,
}

/// LayerNormalization over every axis from `axis` on (the compiler makes it non-negative).
#[derive(Clone, PartialEq, Message)]
pub struct LayerNorm {
    #[prost(uint32, tag = "1")]
    pub axis: u32,
    #[prost(float, tag = "2")]
    pub epsilon: f32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Clip {
    #[prost(float, tag = "1")]
    pub min: f32,
    #[prost(float, tag = "2")]
    pub max: f32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Alpha {
    #[prost(float, tag = "1")]
    pub alpha: f32,
}

#[derive(Clone, PartialEq, Message)]
pub struct HardSigmoid {
    #[prost(float, tag = "1")]
    pub alpha: f32,
    #[prost(float, tag = "2")]
    pub beta: f32,
}

/// ONNX Gelu's `approximate`: "none" (the exact erf form) or "tanh".
#[derive(Clone, PartialEq, Message)]
pub struct Gelu {
    #[prost(bool, tag = "1")]
    pub tanh: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Axis {
    #[prost(int32, tag = "1")]
    pub axis: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Axes {
    #[prost(uint32, repeated, tag = "1")]
    pub axes: Vec<u32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MatMulT {
    #[prost(bool, tag = "1")]
    pub trans_a: bool,
    #[prost(bool, tag = "2")]
    pub trans_b: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Gather {
    #[prost(uint32, tag = "1")]
    pub axis: u32,
    /// Constant positions along the axis, each below its size.
    #[prost(uint32, repeated, tag = "2")]
    pub indices: Vec<u32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Perm {
    #[prost(uint32, repeated, tag = "1")]
    pub perm: Vec<u32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Pool {
    #[prost(uint32, repeated, tag = "1")]
    pub kernel: Vec<u32>,
    #[prost(uint32, repeated, tag = "2")]
    pub strides: Vec<u32>,
    /// top, left, bottom, right
    #[prost(uint32, repeated, tag = "3")]
    pub pads: Vec<u32>,
    #[prost(uint32, repeated, tag = "4")]
    pub dilations: Vec<u32>,
    #[prost(bool, tag = "5")]
    pub count_include_pad: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Pad {
    /// ONNX order: all begins, then all ends.
    #[prost(uint32, repeated, tag = "1")]
    pub pads: Vec<u32>,
    #[prost(float, tag = "2")]
    pub value: f32,
}

/// Where a slice of a concatenation lies, for the concat's backward.
#[derive(Clone, PartialEq, Message)]
pub struct SliceAxis {
    #[prost(uint32, tag = "1")]
    pub axis: u32,
    #[prost(uint32, tag = "2")]
    pub start: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Scale {
    #[prost(float, tag = "1")]
    pub scale: f32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sgd {
    #[prost(float, tag = "1")]
    pub momentum: f32,
    #[prost(float, tag = "2")]
    pub dampening: f32,
    #[prost(bool, tag = "3")]
    pub nesterov: bool,
    #[prost(float, tag = "4")]
    pub weight_decay: f32,
    /// This weight's learning rate as a multiple of the plan's [default: 1]: `compile`
    /// cools the factors of a decomposed layer, whose product moves faster than the layer.
    #[prost(float, optional, tag = "5")]
    pub lr_scale: Option<f32>,
}

impl Sgd {
    /// This weight's learning rate when the plan's is `base`.
    pub fn lr(&self, base: f32) -> f32 {
        base * self.lr_scale.unwrap_or(1.0)
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct AdamW {
    #[prost(float, tag = "1")]
    pub beta1: f32,
    #[prost(float, tag = "2")]
    pub beta2: f32,
    #[prost(float, tag = "3")]
    pub epsilon: f32,
    #[prost(float, tag = "4")]
    pub weight_decay: f32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Empty {}

/// How an MSE over several outputs splits each sample's row of (concatenated) values:
/// segment k holds `sizes[k]` values and adds `weights[k]` × its own mean squared error.
/// Empty: one segment of weight 1, the mean over every element (a plan of one output).
#[derive(Clone, PartialEq, Message)]
pub struct MseSegments {
    #[prost(uint32, repeated, tag = "1")]
    pub sizes: Vec<u32>,
    #[prost(float, repeated, tag = "2")]
    pub weights: Vec<f32>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum Kind {
    // ---- forward ----
    /// x, w, [b] → y
    #[prost(message, tag = "1")]
    Conv(Conv),
    /// a, b, [c] → y
    #[prost(message, tag = "2")]
    Gemm(Gemm),
    /// x (…, M, K), w (K, N) → y (…, M, N)
    #[prost(message, tag = "3")]
    MatMul(Empty),
    /// x, scale, bias, mean, var → y (inference statistics; the parameters stay frozen)
    #[prost(message, tag = "4")]
    BatchNorm(Epsilon),
    /// x → y
    #[prost(message, tag = "5")]
    Relu(Empty),
    /// x → y
    #[prost(message, tag = "6")]
    Clip(Clip),
    /// x → y
    #[prost(message, tag = "7")]
    LeakyRelu(Alpha),
    /// x, slope → y
    #[prost(message, tag = "8")]
    PRelu(Empty),
    /// x → y
    #[prost(message, tag = "9")]
    Sigmoid(Empty),
    /// x → y
    #[prost(message, tag = "10")]
    HardSigmoid(HardSigmoid),
    /// x → y
    #[prost(message, tag = "11")]
    HardSwish(Empty),
    /// a, b → y (numpy broadcasting, as are Sub, Mul, Div)
    #[prost(message, tag = "12")]
    Add(Empty),
    #[prost(message, tag = "13")]
    Sub(Empty),
    #[prost(message, tag = "14")]
    Mul(Empty),
    #[prost(message, tag = "15")]
    Div(Empty),
    /// x₁ … xₙ → y
    #[prost(message, tag = "16")]
    Concat(Axis),
    /// x → y: same elements, the output buffer's shape (Reshape, Flatten, Dropout at
    /// inference, Identity all become this; the planner lets it share the input's memory)
    #[prost(message, tag = "17")]
    Reshape(Empty),
    /// x → y
    #[prost(message, tag = "18")]
    Transpose(Perm),
    /// x → y
    #[prost(message, tag = "19")]
    GlobalAveragePool(Empty),
    /// x → y
    #[prost(message, tag = "20")]
    AveragePool(Pool),
    /// x → y, taps (per output element, the winner's tap ky·kw + kx of its window: u8, or u32
    /// for windows of 255 taps or more; see `kernels::pool::Tap`)
    #[prost(message, tag = "21")]
    MaxPool(Pool),
    /// x → y (keepdims; a Reshape follows when the model drops the axes)
    #[prost(message, tag = "22")]
    ReduceMean(Axes),
    /// x → y (constant mode)
    #[prost(message, tag = "23")]
    Pad(Pad),
    /// x → y
    #[prost(message, tag = "24")]
    Softmax(Axis),

    // ---- loss ----
    /// logits (B, K), labels (B, u32) → loss (scalar), probabilities (B, K)
    #[prost(message, tag = "25")]
    SoftmaxCrossEntropy(Empty),
    /// probabilities, labels → dlogits
    #[prost(message, tag = "26")]
    SoftmaxCrossEntropyBackward(Empty),
    /// prediction, target → loss (mean over all elements; with segments, their weighted
    /// sum of means)
    #[prost(message, tag = "27")]
    Mse(MseSegments),
    /// prediction, target → dprediction
    #[prost(message, tag = "28")]
    MseBackward(MseSegments),

    // ---- backward ----
    /// dy, w → dx
    #[prost(message, tag = "29")]
    ConvBackwardData(Conv),
    /// x, dy → dw
    #[prost(message, tag = "30")]
    ConvBackwardWeight(Conv),
    /// dy → db: sum over every axis but 1
    #[prost(message, tag = "31")]
    BiasGrad(Empty),
    /// dy, b → da (Gemm's gradient for input A)
    #[prost(message, tag = "32")]
    GemmGradA(Gemm),
    /// a, dy → db (Gemm's gradient for input B)
    #[prost(message, tag = "33")]
    GemmGradB(Gemm),
    /// dy, w → dx
    #[prost(message, tag = "34")]
    MatMulGradX(Empty),
    /// x, dy → dw (summed over the batch axes)
    #[prost(message, tag = "35")]
    MatMulGradW(Empty),
    /// dy, scale, bias, mean, var → dx
    #[prost(message, tag = "36")]
    BatchNormBackward(Epsilon),
    /// x, dy → dx for the activations (x is the forward input, y for Sigmoid/Softmax)
    #[prost(message, tag = "37")]
    ReluBackward(Empty),
    #[prost(message, tag = "38")]
    ClipBackward(Clip),
    #[prost(message, tag = "39")]
    LeakyReluBackward(Alpha),
    /// x, slope, dy → dx, dslope
    #[prost(message, tag = "40")]
    PReluBackward(Empty),
    /// y, dy → dx
    #[prost(message, tag = "41")]
    SigmoidBackward(Empty),
    #[prost(message, tag = "42")]
    HardSigmoidBackward(HardSigmoid),
    #[prost(message, tag = "43")]
    HardSwishBackward(Empty),
    /// y, dy → dx
    #[prost(message, tag = "44")]
    SoftmaxBackward(Axis),
    /// dy, [other] → d(input) summed down to the output buffer's (broadcast) shape:
    /// scale·dy, or scale·dy·other (Mul), or scale·dy/other (Div)
    #[prost(message, tag = "45")]
    BroadcastGrad(BroadcastGrad),
    /// dy → dx: the part of dy that came from one concat input (or an unpadded window)
    #[prost(message, tag = "46")]
    Slice(Slices),
    /// dy [, argmax] → dx for the pools and ReduceMean: the op's attributes say which
    #[prost(message, tag = "47")]
    PoolBackward(PoolBackward),
    /// g₁ … gₙ → g: gradient contributions summed
    #[prost(message, tag = "48")]
    Accumulate(Empty),

    // ---- update ----
    /// w, g, [momentum], [clip scale] → (w, momentum updated in place)
    #[prost(message, tag = "49")]
    SgdUpdate(Sgd),
    /// w, g, state (first moments then second moments, 2·numel), [clip scale] → (updated in
    /// place). The clip scale, when present, comes from the GradNorm step.
    #[prost(message, tag = "50")]
    AdamWUpdate(AdamW),
    /// g₁ … gₙ → scale: min(1, max_norm / (‖g‖₂ + 1e-6)) over all gradients, as
    /// `torch.nn.utils.clip_grad_norm_` computes it
    #[prost(message, tag = "51")]
    GradNorm(Scale),

    // ---- activation compression (DESIGN §4) ----
    /// x → packed: the compressed form of a saved activation, a flat buffer sized at the
    /// compressor's caps
    #[prost(message, tag = "52")]
    Compress(Compressor),
    /// packed → x̂: the activation rebuilt from its compressed form
    #[prost(message, tag = "53")]
    Decompress(Compressor),
    /// packed, dy → dw: a conv's weight gradient straight from the compressed input
    #[prost(message, tag = "54")]
    ConvBackwardWeightCompressed(CompressedConv),
    /// packed, dy → dw: a dense layer's weight gradient (Gemm's B, MatMul's weight) straight
    /// from its compressed input, read as a matrix (rows, features)
    #[prost(message, tag = "55")]
    LinearGradWCompressed(CompressedLinear),
    /// x → mask (u32 words, bit i of word w for element 32w + i): whether min < x < max,
    /// where a Clip (ReLU: min 0, max ∞) passes its gradient
    #[prost(message, tag = "56")]
    PassMask(Clip),
    /// mask, dy → dx: dy where the mask is set, else 0 (ReLU's and Clip's backward)
    #[prost(message, tag = "57")]
    MaskedGrad(Empty),

    // ---- fused inference ----
    /// x, w, [bias] → min(max(conv(x, w) + bias, min), max): a Conv and the Relu or Clip
    /// after it, as the frozen prefix runs them (one buffer, one pass fewer). Int8: x, w
    /// (i8), qparams, [bias], where qparams is (2, c_out): each output channel's weight
    /// step, then the sum of its float weights (`kernels::qgemm`)
    #[prost(message, tag = "58")]
    ConvClip(ConvClip),
    /// x, then each stage's w, [qparams when int8] and [bias] → y: convs whose intermediate
    /// maps have one reader each, run band of rows by band of rows (`kernels::chain`), plus
    /// x when `residual`
    #[prost(message, tag = "59")]
    ConvChain(ConvChain),

    // ---- fused training ----
    /// x (or its compressed form), dy, w, [momentum] → (w and momentum in place): a conv's
    /// weight gradient stored by its product straight into the SGD update
    /// (`optim::Sgd::step_fused`), never held
    #[prost(message, tag = "60")]
    ConvBackwardWeightSgd(ConvSgd),

    // ---- normalization over the trailing axes ----
    /// x, scale, [bias] → y, mean, inv_std (one value per row of the axes before `axis`:
    /// what the backward reads)
    #[prost(message, tag = "61")]
    LayerNorm(LayerNorm),
    /// x, scale, mean, inv_std, dy → dx, dscale, [dbias]
    #[prost(message, tag = "62")]
    LayerNormBackward(LayerNorm),

    // ---- transformer activations ----
    /// x → y: x·Φ(x) (erf), or its tanh approximation
    #[prost(message, tag = "63")]
    Gelu(Gelu),
    /// x, dy → dx
    #[prost(message, tag = "64")]
    GeluBackward(Gelu),
    /// x → y
    #[prost(message, tag = "65")]
    Tanh(Empty),
    /// y, dy → dx
    #[prost(message, tag = "66")]
    TanhBackward(Empty),

    // ---- attention ----
    /// a, b → y: one product per batch entry, y[i] = a′[i]·b′[i], with a′ = a or aᵀ and
    /// b′ = b or bᵀ over the last two axes; both operands carry the same batch axes
    #[prost(message, tag = "67")]
    BatchMatMul(MatMulT),
    /// x → y: the entries `indices` of x along `axis` (a scalar index drops the axis; the
    /// output's shape tells)
    #[prost(message, tag = "68")]
    Gather(Gather),
    /// dy → dx: zeros, with dy's entries added back at `indices` along `axis`
    #[prost(message, tag = "69")]
    GatherBackward(Gather),
    /// x → y: summed over `axes` (kept as 1 or dropped: the output's shape tells), as
    /// mean pooling over a text encoder's tokens sums
    #[prost(message, tag = "70")]
    ReduceSum(Axes),

    // ---- decoders: transposed convolution and resizing (tags 80–89) ----
    /// x, w, [b] → y: ONNX ConvTranspose, the input gradient of the conv whose geometry the
    /// attributes give (that conv reads y's shape and writes x's), plus the bias. The weight
    /// is (C_in, C_out/group, kh, kw), as ONNX stores it; output padding is in y's shape.
    #[prost(message, tag = "80")]
    ConvTranspose(Conv),
    /// dy, w → dx: the conv of dy by w (no bias)
    #[prost(message, tag = "81")]
    ConvTransposeBackwardData(Conv),
    /// dy, x → dw: the weight gradient of the conv above, whose input is dy and whose
    /// output gradient is x (`ConvBackwardWeight`'s inputs in its order, so that
    /// `ConvBackwardWeightSgd` computes the gradient as it is when fused into SGD)
    #[prost(message, tag = "82")]
    ConvTransposeBackwardWeight(Conv),
    /// x → y: ONNX Resize over the two spatial axes of an NCHW tensor (y's shape gives the
    /// output size)
    #[prost(message, tag = "83")]
    Resize(Resize),
    /// dy → dx: the adjoint of `Resize`, each dy entry added back to the inputs it was
    /// interpolated from, with the same weights
    #[prost(message, tag = "84")]
    ResizeBackward(Resize),

    // ---- int8 inference (`compile --prefix-precision int8`) ----
    /// x (…, M, K), w (N, K) int8: the weight transposed, quantized per output feature,
    /// qparams (2, N): each feature's step, then the sum of its float weights, [bias (N)]
    /// → y (…, M, N) (`kernels::qgemm`, each row of x quantized over its own values)
    #[prost(message, tag = "85")]
    MatMulInt8(Empty),
}

/// How a [`Kind::Resize`] samples: ONNX Resize's `mode` (nearest or linear).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ResizeMode {
    Nearest = 0,
    Linear = 1,
}

/// ONNX Resize's `coordinate_transformation_mode`: where output index `i` falls in the
/// input, `x = f(i)`, with `s` the axis' scale and `in`/`out` its lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ResizeCoordinates {
    /// (i + 0.5) / s − 0.5
    HalfPixel = 0,
    /// (i + 0.5) / s − 0.5, or 0 when out = 1
    PytorchHalfPixel = 1,
    /// i · (in − 1) / (out − 1), or 0 when out = 1
    AlignCorners = 2,
    /// i / s
    Asymmetric = 3,
    /// (i + 0.5) / s
    TfHalfPixelForNn = 4,
}

/// ONNX Resize's `nearest_mode`: how a nearest resize rounds `x` to an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum NearestMode {
    RoundPreferFloor = 0,
    RoundPreferCeil = 1,
    Floor = 2,
    Ceil = 3,
}

/// A 2-D resize of the last two axes (N and C unscaled).
#[derive(Clone, PartialEq, Message)]
pub struct Resize {
    #[prost(enumeration = "ResizeMode", tag = "1")]
    pub mode: i32,
    #[prost(enumeration = "ResizeCoordinates", tag = "2")]
    pub coordinates: i32,
    #[prost(enumeration = "NearestMode", tag = "3")]
    pub nearest: i32,
    /// Height and width scales the coordinate transform divides by: the model's `scales`,
    /// or output size / input size when it gives `sizes`.
    #[prost(float, repeated, tag = "4")]
    pub scales: Vec<f32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ConvSgd {
    #[prost(message, optional, tag = "1")]
    pub conv: Option<Conv>,
    #[prost(message, optional, tag = "2")]
    pub sgd: Option<Sgd>,
    /// When set, the first input is the conv input's compressed form, and the gradient
    /// comes from it as `ConvBackwardWeightCompressed` computes it.
    #[prost(message, optional, tag = "3")]
    pub compressor: Option<Compressor>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ConvClip {
    #[prost(message, optional, tag = "1")]
    pub conv: Option<Conv>,
    /// None: no clip (an int8 conv without an activation after it).
    #[prost(message, optional, tag = "2")]
    pub clip: Option<Clip>,
    /// The weight is int8 (`kernels::qgemm`), followed by its quantization (`qparams`).
    #[prost(bool, tag = "3")]
    pub int8: bool,
}

/// One conv of a [`ConvChain`].
#[derive(Clone, PartialEq, Message)]
pub struct ChainStage {
    #[prost(message, optional, tag = "1")]
    pub conv: Option<Conv>,
    /// Whether a bias input follows the stage's weight.
    #[prost(bool, tag = "2")]
    pub bias: bool,
    /// The Relu or Clip after the conv, if any.
    #[prost(message, optional, tag = "3")]
    pub clip: Option<Clip>,
    /// The weight is int8 and followed by its quantization (`qparams`); 1×1 stages only.
    #[prost(bool, tag = "4")]
    pub int8: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct ConvChain {
    #[prost(message, repeated, tag = "1")]
    pub stages: Vec<ChainStage>,
    /// The chain's input is added to its output (a residual block's Add).
    #[prost(bool, tag = "2")]
    pub residual: bool,
    /// Output rows of the last stage per band.
    #[prost(uint32, tag = "3")]
    pub rows: u32,
    /// Bands in flight at once, each with its own scratch (the threads compiled for).
    #[prost(uint32, tag = "4")]
    pub lanes: u32,
}

/// How a saved activation is kept for the backward pass.
#[derive(Clone, PartialEq, Message)]
pub struct Compressor {
    /// The activation's shape (the compressed buffer is flat). A dense layer's input is
    /// compressed as a matrix: (product of the leading axes, features).
    #[prost(uint64, repeated, tag = "1")]
    pub shape: Vec<u64>,
    #[prost(oneof = "Method", tags = "2, 3, 4")]
    pub method: Option<Method>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum Method {
    #[prost(message, tag = "2")]
    Hosvd(Hosvd),
    #[prost(message, tag = "3")]
    Svd(Svd),
    #[prost(message, tag = "4")]
    GradFilter(GradFilter),
}

/// Tucker factors and core of the activation (the paper's method).
#[derive(Clone, PartialEq, Message)]
pub struct Hosvd {
    /// Share of each unfolding's energy (Σσ²) the kept singular vectors reach.
    #[prost(float, tag = "1")]
    pub eps: f32,
    /// Rank cap per mode: sizes the compressed buffer.
    #[prost(uint32, repeated, tag = "2")]
    pub caps: Vec<u32>,
    /// Ranks fixed at the caps (chosen by `--budget`'s calibration, `eps` being the share
    /// that chose them, or by `--rank-rule auto`, `eps` 0): no ε rule per step, and each mode's factor comes from one subspace
    /// iteration started from the previous step's, kept in the step's second input.
    #[prost(bool, tag = "3")]
    pub fixed: bool,
    /// The per-feature mean kept exactly and the residual decomposed (the packed buffer
    /// starts with the mean); false is the paper's HOSVD of the activation itself.
    #[prost(bool, tag = "4")]
    pub center: bool,
}

/// Truncated SVD of the (batch, rest) unfolding (the paper's SVD baseline).
#[derive(Clone, PartialEq, Message)]
pub struct Svd {
    #[prost(float, tag = "1")]
    pub eps: f32,
    #[prost(uint32, tag = "2")]
    pub cap: u32,
}

/// Patch-pooled input (gradient filtering, Yang et al. 2023). The patches follow the conv's
/// output grid, so the compressor carries the conv's geometry.
#[derive(Clone, PartialEq, Message)]
pub struct GradFilter {
    #[prost(uint32, tag = "1")]
    pub patch: u32,
    #[prost(message, optional, tag = "2")]
    pub conv: Option<Conv>,
    #[prost(uint64, repeated, tag = "3")]
    pub weight_shape: Vec<u64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CompressedConv {
    #[prost(message, optional, tag = "1")]
    pub conv: Option<Conv>,
    #[prost(message, optional, tag = "2")]
    pub compressor: Option<Compressor>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CompressedLinear {
    /// The weight is stored (features out, features in), as Gemm's transB = 1.
    #[prost(bool, tag = "1")]
    pub trans_b: bool,
    #[prost(message, optional, tag = "2")]
    pub compressor: Option<Compressor>,
}

#[derive(Clone, PartialEq, Message)]
pub struct BroadcastGrad {
    #[prost(float, tag = "1")]
    pub scale: f32,
    /// 0: dy alone; 1: times `other`; 2: divided by `other`
    #[prost(uint32, tag = "2")]
    pub with_other: u32,
}

/// Per-axis start offsets into dy; the output buffer's shape gives the extents.
#[derive(Clone, PartialEq, Message)]
pub struct Slices {
    #[prost(uint32, repeated, tag = "1")]
    pub starts: Vec<u32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PoolBackward {
    #[prost(oneof = "PoolKind", tags = "1, 2, 3, 4, 5")]
    pub pool: Option<PoolKind>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum PoolKind {
    #[prost(message, tag = "1")]
    Global(Empty),
    #[prost(message, tag = "2")]
    Average(Pool),
    #[prost(message, tag = "3")]
    Max(Pool),
    #[prost(message, tag = "4")]
    ReduceMean(Axes),
    #[prost(message, tag = "5")]
    ReduceSum(Axes),
}
