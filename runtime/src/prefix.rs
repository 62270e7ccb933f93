//! The frozen prefix as an ONNX sub-model run by tract (inference only), where actc's own
//! kernels do not run it (the plan then has no prefix steps). Its outputs are the boundary
//! tensors the trainable suffix starts from.
//!
//! A build without the `tract` cargo feature (on by default) leaves tract out: a device that
//! trains plans whose prefix actc runs itself then carries neither its code nor its
//! start-up (176 static constructors registering kernels), and a plan whose prefix needs
//! tract is refused when it is opened.

#[cfg(not(feature = "tract"))]
mod absent;
#[cfg(feature = "tract")]
mod tract;

#[cfg(not(feature = "tract"))]
pub use absent::{Prefix, set_threads};
#[cfg(feature = "tract")]
pub use tract::{Prefix, set_threads};
