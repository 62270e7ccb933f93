//! The `actc` command line on the compiler and the runtime (`actc-runtime`):
//! argument parsing and the commands ([`cli`]), training, evaluation, benchmarking and export
//! ([`run`]), `--budget`'s rank calibration ([`budget`]), the `inspect` table ([`inspect`])
//! and low-rank decomposition ([`decompose`], its fine-tuning after factoring in [`distill`]), with what several of them share: the data
//! flags ([`data`]; a CSV of text through the model's tokenizer in [`text`]) and writing files
//! ([`fs`]); and training in process for the Python and C bindings ([`trainer`]). The compiler is used through the crate's root re-exports only.
//!
//! The modules import one another in one direction only: `cli` uses `run`, `budget`,
//! `decompose`, `distill`, `inspect`, `data` and `fs`; `trainer` uses `run` and `fs`; `run` uses
//! `inspect`, `data` and `fs`; `budget`
//! uses `inspect` and `data`; `decompose` uses `data`, `distill` and `fs`; `distill` uses `run`,
//! `trainer` and `data`; `data` uses `text`;
//! `inspect`, `text` and `fs` use none.

pub mod budget;
pub mod cli;
pub mod data;
pub mod decompose;
pub mod distill;
pub mod fs;
pub mod inspect;
pub mod plrd;
pub mod run;
pub mod text;
pub mod trainer;
