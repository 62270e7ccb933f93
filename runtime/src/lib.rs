//! actc's runtime: the plan format ([`plan`]), the CPU kernels ([`kernels`]), the executor
//! that runs a plan's training steps in memory allocated once ([`exec`]), data loading
//! ([`data`]) and the training loop over a data set ([`train`]). Plans come from the `actc`
//! compiler crate (`actc compile`); `actc::driver::trainer::Trainer` wraps a session for
//! training in process.
//!
//! ```no_run
//! use actc_runtime::data::{Dataset, Preprocess};
//! use actc_runtime::plan::Plan;
//! use actc_runtime::train::Session;
//!
//! let (plan, file) = Plan::open("mnv2.actc".as_ref())?; // written by `actc compile`
//! let mut session = Session::open(plan, file, 1)?;
//! let data = Dataset::load("models/data/fashion-mnist".as_ref(), None)?;
//! let prep = Preprocess::for_input(session.sample_shape(), &data)?;
//! let rows: Vec<usize> = (0..data.len()).collect();
//! let m = session.evaluate(&data, &prep, &rows)?;
//! println!("loss {:.4}, top-1 accuracy {:.4}", m.loss, m.accuracy);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cache;
pub mod compress;
pub mod data;
pub mod exec;
pub mod kernels;
pub mod ops;
pub mod optim;
pub mod pacer;
pub mod plan;
pub mod planning;
pub mod prefix;
pub mod threads;
pub mod train;
