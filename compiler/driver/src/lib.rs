//! The `actc` command line on the compiler (`actc`) and the runtime (`actc-runtime`):
//! argument parsing and the commands ([`cli`]), training, evaluation, benchmarking and export
//! ([`run`]), `--budget`'s rank calibration ([`budget`]) and the `inspect` table
//! ([`inspect`]). The compiler is used through its root re-exports only.

pub mod budget;
pub mod cli;
pub mod inspect;
pub mod run;
