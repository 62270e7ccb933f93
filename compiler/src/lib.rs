//! actc: compiles an ONNX model into a memory-planned training plan for its last N layers.

pub mod budget;
pub mod cli;
pub mod compile;
pub mod error;
pub mod inspect;
pub mod ir;
pub mod onnx;
pub mod passes;
pub mod run;
