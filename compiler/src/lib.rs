//! actc: compiles an ONNX model into a memory-planned training plan for its last N layers.
//!
//! The library's API is what this page re-exports: [`compile_file`] (or [`compile_model`]
//! for a decoded model) with its [`CompileOptions`], the [`Compiled`] result holding the
//! runtime's [`Plan`](actc_runtime::plan::Plan), and [`export`], which writes a trained plan
//! back as ONNX. Training, evaluation and the command line live in the `actc-driver` crate.
//!
//! ```
//! use actc::{CompileOptions, Layers, compile_file};
//! # std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).unwrap();
//!
//! let opts = CompileOptions {
//!     layers: Layers::Last(4),
//!     ..CompileOptions::default()
//! };
//! let compiled = compile_file("models/mobilenetv2.onnx".as_ref(), &opts)?;
//! let memory = compiled.plan.memory.clone().unwrap_or_default();
//! assert!(memory.arena > 0);
//! std::fs::write(std::env::temp_dir().join("mnv2.actc"), compiled.plan.to_bytes()).unwrap();
//! # Ok::<(), actc::Error>(())
//! ```
//!
//! `actc_driver::trainer::Trainer` trains such a plan in process.

mod compile;
mod error;
mod ir;
mod lowrank;
mod onnx;
mod ops;
mod passes;

pub use compile::{
    CompileOptions, Compiled, DecomposeOptions, Decomposed, compile_file, compile_model,
    decompose_model,
};
pub use error::{Error, Result};
pub use lowrank::speed::{Goal as SpeedGoal, Optimize as RankOptimization, Timing};
pub use lowrank::{LayerReport, Request as LowRankRequest, Rule as RankRule};
pub use onnx::export::{MAX_INLINE, export, externalize};
pub use onnx::import::InputShape;
pub use onnx::proto::ModelProto;
pub use onnx::{decode as decode_onnx, load as load_onnx};
pub use ops::{flops, op_name};
pub use passes::compress::{Compression, FixedRanks};
pub use passes::freeze::Rotate;
pub use passes::optim::Optimizer;
pub use passes::prefix::PrefixRunner;
pub use passes::select::{Layers, Selection, TrainedLayer};
