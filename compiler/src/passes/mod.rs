//! The passes over the IR, in pipeline order.

pub mod autodiff;
pub mod compress;
pub mod decompose;
pub mod emit;
pub mod freeze;
pub mod lora;
pub mod loss;
pub mod memplan;
pub mod optim;
pub mod prefix;
pub mod recompute;
pub mod schedule;
pub mod select;
pub mod split;
