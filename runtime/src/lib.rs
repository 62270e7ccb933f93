pub mod kernels;
pub mod ops;
pub mod optim;
pub mod plan;
