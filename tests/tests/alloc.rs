//! A training step allocates nothing: every buffer was planned and allocated up front.
//! Counted with a global allocator that tallies allocations on every thread (the kernels'
//! worker threads included: they run with two threads here).

mod common;

use actc::{Compression, HosvdRanks, Layers};
use actc_runtime::exec::Executor;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_training_step_allocates_nothing() {
    // The only test of this binary: nothing else allocates while it counts.
    actc_runtime::threads::set_threads(2);
    let hosvd = Compression::Hosvd {
        eps: 0.95,
        max_rank: 32,
        ranks: HosvdRanks::Auto,
    };
    for (name, layers, int8, compression, shape) in [
        ("tiny_cnn", Layers::All, false, Compression::None, None),
        ("resnet18", Layers::Last(4), false, Compression::None, None),
        (
            "mobilenetv2",
            Layers::Last(2),
            false,
            Compression::None,
            None,
        ),
        // Its int8 products pack their panels in thread-local scratch, grown once.
        (
            "mobilenetv2",
            Layers::Last(2),
            true,
            Compression::None,
            None,
        ),
        // Compressions two at a time, each on its thread with its thread's scratch.
        (
            "mobilenetv2",
            Layers::Last(4),
            false,
            hosvd,
            Some(vec![8, 3, 32, 32]),
        ),
    ] {
        let opts = actc::CompileOptions {
            prefix_int8: int8,
            compression,
            ..common::options(layers, shape)
        };
        let plan = actc::compile_file(&common::model(name), &opts)
            .unwrap()
            .plan;
        let mut exec = Executor::new(plan, 10).unwrap();
        // The planner may reuse the labels' memory once the loss has read them: fed each
        // step, as training does.
        // The frozen prefix on actc's kernels runs first, where the plan has one.
        let input = vec![0.25f32; common::input_shape(exec.plan()).iter().product()];
        let step = |exec: &mut Executor| {
            if exec.runs_prefix() {
                exec.run_prefix(&input, None);
            }
            exec.labels_mut().unwrap().fill(1);
            exec.train_step();
        };
        step(&mut exec); // first step: nothing lazy may remain after it either
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..3 {
            step(&mut exec);
        }
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        assert_eq!(
            after - before,
            0,
            "{name}: {} allocations in 3 training steps",
            after - before
        );
    }
}
