//! The kernels' planning facts: the compiler's one window into them. A plan is only good if
//! the compiler sizes and shapes it by the same rules the kernels run by: a conv's geometry
//! from its attributes, the scratch each step needs, which convs a fused chain can take and
//! at what band height, how many lanes the executor runs, how large a compressed activation
//! and its state are, when max-pool taps fit in a byte, how a frozen BN folds into its conv.
//! Those rules live with the kernels; this module re-exports what the compiler reads, under
//! names that say what they are about, so the kernel modules can be rearranged without the
//! compiler reaching into them.

/// A 2-D convolution's shapes and window; the compiler builds one for each conv it plans.
pub use crate::kernels::geometry::Conv2dGeom;

/// A conv's [`Conv2dGeom`] from its op's attributes and its input's and weight's shapes.
pub use crate::exec::geom::conv as conv_geom;

/// f32s of scratch a step needs, from its op and its inputs' and outputs' shapes: the
/// size of the step's workspace buffer.
pub use crate::exec::workspace_len as step_workspace_len;

/// Whether a conv can be a stage of a fused chain (`first`: the chain's first stage).
pub use crate::kernels::chain::stage_fits as chain_stage_fits;

/// The band height to fuse a chain's stages with, or `None` where fusing does not pay.
pub use crate::kernels::chain::bands as chain_bands;

/// Most stages a fused chain takes.
pub use crate::kernels::chain::MAX_STAGES as MAX_CHAIN_STAGES;

/// Most lanes (bands in flight) a fused chain runs with.
pub use crate::kernels::chain::MAX_LANES as MAX_CHAIN_LANES;

/// Most prefix lanes (micro-batches run at once, one per thread) a plan may have.
pub use crate::exec::lanes::MAX_LANES as MAX_PREFIX_LANES;

/// Whether a max pool over windows of this many taps keeps its winners' taps in bytes
/// (else in `u32`s): the dtype of the taps buffer.
pub use crate::kernels::pool::byte_taps as pool_byte_taps;

/// Floats of a HOSVD-compressed activation (its ranks, factors and core) at given per-mode
/// ranks.
pub use crate::compress::hosvd::packed_len as hosvd_packed_len;

/// Floats of a fixed-rank HOSVD compression's state (its factors) at given ranks.
pub use crate::compress::hosvd::state_len as hosvd_state_len;

/// A frozen BatchNormalization's per-channel parameters.
pub use crate::kernels::norm::BatchNormParams;

/// A frozen BN folded into the conv before it: the conv's new weight and bias.
pub use crate::kernels::norm::fold_into_conv;

/// Whether a conv of the frozen prefix runs with int8 weights under
/// `--prefix-precision int8`.
pub use crate::kernels::qconv::fits as int8_conv_fits;

/// A weight matrix quantized per row to int8: the values, each row's step and the sum of its
/// float weights (what an int8 conv reads).
pub use crate::kernels::qgemm::quantize_rows as quantize_weight_rows;
