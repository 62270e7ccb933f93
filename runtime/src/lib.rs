pub mod data;
pub mod exec;
pub mod kernels;
pub mod ops;
pub mod optim;
pub mod plan;
pub mod prefix;
pub mod train;
