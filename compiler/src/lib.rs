//! actc: compiles an ONNX model into a memory-planned training plan for its last N layers,
//! and trains it.
//!
//! The compiler's API is what this page re-exports: [`compile_file`] (or [`compile_model`]
//! for a decoded model) with its [`CompileOptions`], the [`Compiled`] result holding the
//! runtime's [`Plan`](actc_runtime::plan::Plan), and [`export`], which writes a trained plan
//! back as ONNX. [`driver`] holds the `actc` command line and
//! [`Trainer`](driver::trainer::Trainer), training in process (what the Python and C
//! bindings use):
//!
//! ```
//! use actc::driver::trainer::{Targets, Trainer};
//! use actc::{CompileOptions, Layers, compile_file};
//! # std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).unwrap();
//!
//! let opts = CompileOptions { layers: Layers::All, ..CompileOptions::default() };
//! let plan = compile_file("models/tiny_mlp.onnx".as_ref(), &opts)?.plan;
//! assert!(plan.memory.clone().unwrap_or_default().arena > 0);
//!
//! let mut trainer = Trainer::new(&plan.to_bytes(), "tiny_mlp")?;
//! let n: usize = trainer.input_shape().iter().product(); // 8 samples of 64 features
//! let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
//! let y: Vec<i64> = (0..8).map(|r| r % 10).collect();
//! let first = trainer.train_step(&x, Targets::Classes(&y))?;
//! for _ in 0..20 {
//!     trainer.train_step(&x, Targets::Classes(&y))?;
//! }
//! assert!(trainer.eval_step(&x, Targets::Classes(&y))?.loss < first as f64);
//! let weights = trainer.weights(); // (ONNX initializer name, shape, values)
//! assert_eq!(weights[0].0, "fc1.weight");
//! trainer.export(&std::env::temp_dir().join("tiny_mlp_trained.onnx"), false)?;
//! # Ok::<(), actc::Error>(())
//! ```

mod compile;
pub mod driver;
mod error;
mod ir;
mod lowrank;
mod onnx;
mod ops;
mod passes;

pub use compile::{
    CompileOptions, Compiled, DecomposeOptions, Decomposed, DistillMaps, compile_file,
    compile_model, decompose_model,
};
pub use error::{Error, Result};
pub use lowrank::data::Calibration as CalibrationData;
pub use lowrank::rate::FactorLr;
pub use lowrank::speed::{Goal as SpeedGoal, Optimize as RankOptimization, Timing};
pub use lowrank::{LayerReport, Request as LowRankRequest, Rule as RankRule};
pub use onnx::export::{MAX_INLINE, export, externalize};
pub use onnx::import::InputShape;
pub use onnx::proto::ModelProto;
pub use onnx::{decode as decode_onnx, load as load_onnx};
pub use ops::{flops, op_name};
pub use passes::compress::{Compression, FixedRanks, HosvdRanks};
pub use passes::freeze::Rotate;
pub use passes::optim::Optimizer;
pub use passes::prefix::PrefixRunner;
pub use passes::select::{Layers, Selection, TrainedLayer};
