//! The integration tests, linked as one binary: each test binary of a debug build carries
//! ~170 MB of tract and the rest, so one per file filled a CI machine's disk. Two stay on
//! their own because they change the whole process: `alloc.rs` (a counting global
//! allocator) and `crafted_plans.rs` (a panic hook).

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod compress;
mod decompose;
mod errors;
mod freeze;
mod fuzz_corpus;
mod lora;
mod parity;
mod planner;
mod runtime;
mod select;
mod snapshots;
