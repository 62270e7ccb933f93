//! CPU kernels of the trainable suffix, forward and backward, one op family per file.
//!
//! Conventions shared by every kernel:
//! - tensors are contiguous `f32` slices, row-major, images in NCHW;
//! - attributes and geometry come first, then inputs, then outputs, then scratch;
//! - outputs (gradients included) are overwritten, never accumulated into: summing the
//!   gradients of a tensor used twice is [`elementwise::accumulate`]'s job, so the planner
//!   decides where that happens;
//! - kernels never allocate: a kernel that needs scratch takes `ws` and its module exposes
//!   `workspace_len`, which the memory planner uses to size it;
//! - slice lengths are checked with `debug_assert!` (the plan was checked when it was built);
//!   the one exception is [`gemm::sgemm`], which guards an `unsafe` call.

pub mod activation;
pub mod conv;
mod depthwise;
pub mod elementwise;
pub mod gemm;
pub mod layout;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod pool;
pub mod shape;
pub mod window;

#[cfg(test)]
pub(crate) mod testutil;
