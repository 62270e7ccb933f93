//! The `actc` command line on the compiler (`actc`) and the runtime (`actc-runtime`):
//! argument parsing and the commands ([`cli`]), training, evaluation, benchmarking and export
//! ([`run`]), `--budget`'s rank calibration ([`budget`]), the `inspect` table ([`inspect`])
//! and low-rank decomposition ([`decompose`]), with what several of them share: the data
//! flags ([`data`]) and writing files ([`fs`]); and training in process for the Python and
//! C bindings ([`trainer`]). The compiler is used through its root re-exports only.
//!
//! Training in process, on a plan compiled in process:
//!
//! ```
//! use actc::{CompileOptions, Layers, compile_file};
//! use actc_driver::trainer::{Targets, Trainer};
//! # std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).unwrap();
//!
//! let opts = CompileOptions { layers: Layers::All, ..CompileOptions::default() };
//! let plan = compile_file("models/tiny_mlp.onnx".as_ref(), &opts)?.plan;
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
//!
//! The modules import one another in one direction only: `cli` uses `run`, `budget`,
//! `decompose`, `inspect`, `data` and `fs`; `trainer` uses `run` and `fs`; `run` uses
//! `inspect`, `data` and `fs`; `budget`
//! uses `inspect` and `data`; `decompose` uses `data` and `fs`; `inspect`, `data` and `fs`
//! use none.

pub mod budget;
pub mod cli;
pub mod data;
pub mod decompose;
pub mod fs;
pub mod inspect;
pub mod plrd;
pub mod run;
pub mod trainer;
