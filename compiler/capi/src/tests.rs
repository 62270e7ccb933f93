//! The C functions called as C calls them, misuse above all. The integration test
//! `tests/c_example.rs` runs a real C program against the built library.

use crate::process::*;
use crate::registry;
use crate::status::*;
use crate::trainer::*;
use crate::weights::*;
use std::ffi::{CStr, CString, c_char};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("actc-capi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fn compile(model: &str, out: &str, flags: &[&str]) -> PathBuf {
    let plan = scratch().join(out);
    let model = models().join(model);
    let mut args = vec!["actc", "compile", model.to_str().unwrap()];
    args.extend(flags);
    args.extend(["-o", plan.to_str().unwrap()]);
    actc_compiler::driver::cli::run_from(args).unwrap();
    plan
}

/// tiny_mlp, every layer trained: batch 8 of 64 values, 10 classes; an lr at which a few
/// steps lower the loss clearly.
fn mlp_plan() -> &'static Path {
    static PLAN: OnceLock<PathBuf> = OnceLock::new();
    PLAN.get_or_init(|| {
        compile(
            "tiny_mlp.onnx",
            "mlp.actc",
            &["--layers", "all", "--lr", "0.1", "--momentum", "0.9"],
        )
    })
}

fn c(text: &str) -> CString {
    CString::new(text).unwrap()
}

fn last_error() -> String {
    // SAFETY: never NULL, valid until this thread's next failing call.
    unsafe { CStr::from_ptr(actc_last_error()) }
        .to_str()
        .unwrap()
        .to_string()
}

/// Asserts a call's status, and when it failed that the message names `function` and says
/// `says`.
#[track_caller]
fn expect(status: i32, want: i32, function: &str, says: &str) {
    let message = if status == ACTC_OK {
        String::new()
    } else {
        last_error()
    };
    assert_eq!(status, want, "{message}");
    if want != ACTC_OK {
        assert!(
            message.starts_with(&format!("{function}: ")) && message.contains(says),
            "{message:?} should name {function} and say {says:?}"
        );
    }
}

fn open(plan: &Path) -> ActcTrainer {
    let path = c(plan.to_str().unwrap());
    let mut h = 0;
    // SAFETY: a C string and room for the handle.
    expect(
        unsafe { actc_trainer_open(path.as_ptr(), &mut h) },
        ACTC_OK,
        "",
        "",
    );
    assert_ne!(h, 0);
    h
}

/// A fixed batch of the mlp's shape whose labels follow from the inputs, so the loss falls.
fn batch() -> (Vec<f32>, Vec<i64>) {
    let inputs: Vec<f32> = (0..8 * 64)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let labels = inputs
        .chunks(64)
        .map(|row| {
            let first = &row[..10];
            (0..10)
                .max_by(|&a, &b| first[a].total_cmp(&first[b]))
                .unwrap() as i64
        })
        .collect();
    (inputs, labels)
}

fn step(h: ActcTrainer, inputs: &[f32], labels: &[i64]) -> (i32, f32) {
    let mut loss = f32::NAN;
    // SAFETY: arrays of the lengths passed, room for the loss.
    let status = unsafe {
        actc_trainer_train_step(
            h,
            inputs.as_ptr(),
            inputs.len(),
            labels.as_ptr(),
            labels.len(),
            &mut loss,
        )
    };
    (status, loss)
}

fn updates(h: ActcTrainer) -> (i32, u64) {
    let mut n = u64::MAX;
    // SAFETY: room for the count.
    (unsafe { actc_trainer_updates(h, &mut n) }, n)
}

#[test]
fn closed_stale_and_made_up_handles_are_refused() {
    let a = open(mlp_plan());
    expect(actc_trainer_close(a), ACTC_OK, "", "");
    expect(
        actc_trainer_close(a),
        ACTC_ERR_HANDLE,
        "actc_trainer_close",
        "was closed",
    );
    expect(
        updates(a).0,
        ACTC_ERR_HANDLE,
        "actc_trainer_updates",
        "was closed",
    );
    // Whichever slot the next trainer takes (tests run at once), `a` stays closed.
    let b = open(mlp_plan());
    assert_ne!(a, b);
    expect(
        updates(a).0,
        ACTC_ERR_HANDLE,
        "actc_trainer_updates",
        "was closed",
    );
    assert_eq!(updates(b), (ACTC_OK, 0));
    expect(
        updates(0).0,
        ACTC_ERR_HANDLE,
        "actc_trainer_updates",
        "handle 0 is no trainer",
    );
    for made_up in [1 << 40, u64::MAX, 0xffff_ffff_0000_0000] {
        expect(
            updates(made_up).0,
            ACTC_ERR_HANDLE,
            "actc_trainer_updates",
            "is not a handle actc_trainer_open returned",
        );
    }
    expect(actc_trainer_close(0), ACTC_OK, "", "");
    expect(actc_trainer_close(b), ACTC_OK, "", "");
}

#[test]
fn a_plan_that_cannot_be_opened_says_why_and_leaves_no_handle() {
    let open_status = |path: *const c_char| {
        let mut h = 7;
        // SAFETY: `path` is NULL or a C string; room for the handle.
        let status = unsafe { actc_trainer_open(path, &mut h) };
        assert_eq!(h, 0, "a failed open leaves 0");
        status
    };
    let fn_name = "actc_trainer_open";
    expect(
        open_status(null()),
        ACTC_ERR_ARGUMENT,
        fn_name,
        "plan_path is NULL",
    );
    let latin1 = [b'p', 0xe9, b'.', b'a', 0];
    expect(
        open_status(latin1.as_ptr().cast()),
        ACTC_ERR_ARGUMENT,
        fn_name,
        "plan_path is not UTF-8",
    );
    let missing = c(scratch().join("no-such.actc").to_str().unwrap());
    expect(
        open_status(missing.as_ptr()),
        ACTC_ERR_FAILED,
        fn_name,
        "cannot read",
    );
    let onnx = c(models().join("tiny_mlp.onnx").to_str().unwrap());
    expect(
        open_status(onnx.as_ptr()),
        ACTC_ERR_FAILED,
        fn_name,
        "not an actc plan",
    );
    // The same plan as an older actc would have written it.
    let mut bytes = std::fs::read(mlp_plan()).unwrap();
    bytes[8..12].copy_from_slice(&4u32.to_le_bytes());
    let old = scratch().join("old-format.actc");
    std::fs::write(&old, bytes).unwrap();
    let old = c(old.to_str().unwrap());
    expect(
        open_status(old.as_ptr()),
        ACTC_ERR_FAILED,
        fn_name,
        "plan format version 4",
    );
    let path = c(mlp_plan().to_str().unwrap());
    // SAFETY: a C string; the NULL out is what is tested.
    expect(
        unsafe { actc_trainer_open(path.as_ptr(), null_mut()) },
        ACTC_ERR_ARGUMENT,
        fn_name,
        "out is NULL",
    );
}

#[test]
fn a_step_refuses_arrays_that_do_not_fit_the_plan() {
    let h = open(mlp_plan());
    let (inputs, labels) = batch();
    let f = "actc_trainer_train_step";
    // SAFETY (every call): NULL where tested, else arrays of the lengths passed.
    let status = unsafe { actc_trainer_train_step(h, null(), 0, labels.as_ptr(), 8, &mut 0.0) };
    expect(status, ACTC_ERR_ARGUMENT, f, "inputs is NULL");
    let status = unsafe { actc_trainer_train_step(h, inputs.as_ptr(), 512, null(), 8, &mut 0.0) };
    expect(status, ACTC_ERR_ARGUMENT, f, "labels is NULL");
    let status =
        unsafe { actc_trainer_train_step(h, inputs.as_ptr(), 512, labels.as_ptr(), 8, null_mut()) };
    expect(status, ACTC_ERR_ARGUMENT, f, "loss is NULL");
    let misaligned = unsafe { inputs.as_ptr().cast::<u8>().add(1).cast::<f32>() };
    let status = unsafe { actc_trainer_train_step(h, misaligned, 4, labels.as_ptr(), 8, &mut 0.0) };
    expect(
        status,
        ACTC_ERR_ARGUMENT,
        f,
        "inputs is not aligned to 4 bytes",
    );
    let status = unsafe {
        actc_trainer_train_step(h, inputs.as_ptr(), usize::MAX, labels.as_ptr(), 8, &mut 0.0)
    };
    expect(status, ACTC_ERR_ARGUMENT, f, "more than any array can");

    expect(
        step(h, &inputs[..64], &labels).0,
        ACTC_ERR_FAILED,
        f,
        "inputs hold 64 values; this plan takes a batch of shape [8, 64]",
    );
    expect(
        step(h, &inputs, &labels[..3]).0,
        ACTC_ERR_FAILED,
        f,
        "3 labels for a batch of 8",
    );
    expect(
        step(h, &inputs, &[10; 8]).0,
        ACTC_ERR_FAILED,
        f,
        "label 10 is not a class",
    );
    let mut nan = inputs.clone();
    nan[70] = f32::NAN;
    expect(
        step(h, &nan, &labels).0,
        ACTC_ERR_FAILED,
        f,
        "inputs hold NaN at index 70",
    );
    let targets = vec![0.0f32; 80];
    // SAFETY: arrays of the lengths passed.
    let status = unsafe {
        actc_trainer_train_step_targets(h, inputs.as_ptr(), 512, targets.as_ptr(), 80, &mut 0.0)
    };
    expect(
        status,
        ACTC_ERR_FAILED,
        "actc_trainer_train_step_targets",
        "this plan trains with cross-entropy",
    );
    let mut out = vec![0.0f32; 79];
    // SAFETY: arrays of the lengths passed.
    let status = unsafe { actc_trainer_predict(h, inputs.as_ptr(), 512, out.as_mut_ptr(), 79) };
    expect(
        status,
        ACTC_ERR_ARGUMENT,
        "actc_trainer_predict",
        "out holds 79 values; the output has shape [8, 10] (80 values)",
    );
    // None of the refused calls trained.
    assert_eq!(updates(h), (ACTC_OK, 0));
    expect(actc_trainer_close(h), ACTC_OK, "", "");
}

#[test]
fn shapes_come_through_a_buffer_the_caller_sizes() {
    let h = open(mlp_plan());
    let (mut dims, mut rank) = ([0usize; 4], 0usize);
    // SAFETY (every call): NULL with cap 0, or room for cap values.
    expect(
        unsafe { actc_trainer_input_shape(h, null_mut(), 0, &mut rank) },
        ACTC_OK,
        "",
        "",
    );
    assert_eq!(rank, 2);
    expect(
        unsafe { actc_trainer_input_shape(h, dims.as_mut_ptr(), 1, &mut rank) },
        ACTC_ERR_ARGUMENT,
        "actc_trainer_input_shape",
        "dims has room for 1 and this needs 2, as *rank now says",
    );
    expect(
        unsafe { actc_trainer_input_shape(h, dims.as_mut_ptr(), 4, &mut rank) },
        ACTC_OK,
        "",
        "",
    );
    assert_eq!((rank, &dims[..2]), (2, &[8, 64][..]));
    expect(
        unsafe { actc_trainer_output_shape(h, dims.as_mut_ptr(), 4, &mut rank) },
        ACTC_OK,
        "",
        "",
    );
    assert_eq!((rank, &dims[..2]), (2, &[8, 10][..]));
    let mut classes = false;
    expect(
        unsafe { actc_trainer_takes_classes(h, &mut classes) },
        ACTC_OK,
        "",
        "",
    );
    assert!(classes);
    expect(actc_trainer_close(h), ACTC_OK, "", "");
}

#[test]
fn training_lowers_the_loss_and_a_checkpoint_goes_on_from_it() {
    let h = open(mlp_plan());
    let (inputs, labels) = batch();
    let (mut first, mut loss) = (0.0, 0.0);
    for i in 0..30 {
        let (status, l) = step(h, &inputs, &labels);
        expect(status, ACTC_OK, "", "");
        if i == 0 {
            first = l;
        }
        loss = l;
    }
    assert!(loss < first * 0.8, "the loss went from {first} to {loss}");
    let (mut eval_loss, mut accuracy) = (0.0, -1.0);
    // SAFETY (every call): arrays of the lengths passed, room for the results.
    let status = unsafe {
        actc_trainer_eval_step(
            h,
            inputs.as_ptr(),
            512,
            labels.as_ptr(),
            8,
            &mut eval_loss,
            &mut accuracy,
        )
    };
    expect(status, ACTC_OK, "", "");
    assert!(eval_loss < first && (0.0..=1.0).contains(&accuracy));
    let mut out = vec![f32::NAN; 80];
    let status = unsafe { actc_trainer_predict(h, inputs.as_ptr(), 512, out.as_mut_ptr(), 80) };
    expect(status, ACTC_OK, "", "");
    assert!(out.iter().all(|v| v.is_finite()));

    let saved = scratch().join("trained.actc");
    let saved_c = c(saved.to_str().unwrap());
    expect(
        unsafe { actc_trainer_save(h, saved_c.as_ptr()) },
        ACTC_OK,
        "",
        "",
    );
    let onnx = scratch().join("trained.onnx");
    let onnx_c = c(onnx.to_str().unwrap());
    expect(
        unsafe { actc_trainer_export(h, onnx_c.as_ptr()) },
        ACTC_OK,
        "",
        "",
    );
    assert!(std::fs::metadata(&onnx).unwrap().len() > 0);
    let folder = c(scratch().to_str().unwrap());
    expect(
        unsafe { actc_trainer_save(h, folder.as_ptr()) },
        ACTC_ERR_FAILED,
        "actc_trainer_save",
        "exists and is not a regular file",
    );

    let again = open(&saved);
    assert_eq!(updates(again), (ACTC_OK, 30));
    let mut reopened = [0.0f32; 80];
    let status =
        unsafe { actc_trainer_predict(again, inputs.as_ptr(), 512, reopened.as_mut_ptr(), 80) };
    expect(status, ACTC_OK, "", "");
    assert_eq!(out, reopened);
    for t in [h, again] {
        expect(actc_trainer_close(t), ACTC_OK, "", "");
    }
}

#[test]
fn weights_are_read_and_written_by_onnx_name() {
    let h = open(mlp_plan());
    let mut count = 0;
    // SAFETY (every call): C strings, NULL with cap 0 or room for cap values.
    expect(
        unsafe { actc_trainer_weight_count(h, &mut count) },
        ACTC_OK,
        "",
        "",
    );
    assert_eq!(count, 6, "three Gemms' weights and biases");
    let mut needed = 0;
    expect(
        unsafe { actc_trainer_weight_name(h, 0, null_mut(), 0, &mut needed) },
        ACTC_OK,
        "",
        "",
    );
    let mut buf = vec![0 as c_char; needed];
    expect(
        unsafe { actc_trainer_weight_name(h, 0, buf.as_mut_ptr(), needed - 1, &mut needed) },
        ACTC_ERR_ARGUMENT,
        "actc_trainer_weight_name",
        "and this needs 11, as *needed now says",
    );
    assert_eq!(needed, buf.len(), "a small buffer still learns the size");
    expect(
        unsafe { actc_trainer_weight_name(h, 0, buf.as_mut_ptr(), needed, &mut needed) },
        ACTC_OK,
        "",
        "",
    );
    // SAFETY: NUL-terminated by the call.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_owned();
    assert_eq!(name.to_bytes().len() + 1, needed);
    expect(
        unsafe { actc_trainer_weight_name(h, 6, buf.as_mut_ptr(), needed, &mut needed) },
        ACTC_ERR_ARGUMENT,
        "actc_trainer_weight_name",
        "weight 6: this plan trains 6 weights",
    );

    let (mut len, mut dims, mut rank) = (0, [0usize; 4], 0);
    expect(
        unsafe { actc_trainer_weight_len(h, name.as_ptr(), &mut len) },
        ACTC_OK,
        "",
        "",
    );
    expect(
        unsafe { actc_trainer_weight_shape(h, name.as_ptr(), dims.as_mut_ptr(), 4, &mut rank) },
        ACTC_OK,
        "",
        "",
    );
    assert_eq!(dims[..rank].iter().product::<usize>(), len);
    let mut values = vec![0.0f32; len];
    expect(
        unsafe { actc_trainer_get_weight(h, name.as_ptr(), values.as_mut_ptr(), len) },
        ACTC_OK,
        "",
        "",
    );
    assert!(values.iter().any(|&v| v != 0.0));
    let doubled: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
    expect(
        unsafe { actc_trainer_set_weight(h, name.as_ptr(), doubled.as_ptr(), len) },
        ACTC_OK,
        "",
        "",
    );
    expect(
        unsafe { actc_trainer_get_weight(h, name.as_ptr(), values.as_mut_ptr(), len) },
        ACTC_OK,
        "",
        "",
    );
    assert_eq!(values, doubled);

    expect(
        unsafe { actc_trainer_set_weight(h, name.as_ptr(), doubled.as_ptr(), len - 1) },
        ACTC_ERR_ARGUMENT,
        "actc_trainer_set_weight",
        &format!("src holds {} values; weight", len - 1),
    );
    let mut inf = doubled.clone();
    inf[1] = f32::INFINITY;
    expect(
        unsafe { actc_trainer_set_weight(h, name.as_ptr(), inf.as_ptr(), len) },
        ACTC_ERR_FAILED,
        "actc_trainer_set_weight",
        "holds inf at index 1",
    );
    let unknown = c("fc9.weight");
    expect(
        unsafe { actc_trainer_get_weight(h, unknown.as_ptr(), values.as_mut_ptr(), len) },
        ACTC_ERR_ARGUMENT,
        "actc_trainer_get_weight",
        &format!(
            "'fc9.weight' is not a trainable weight of this plan; it trains {}",
            name.to_str().unwrap()
        ),
    );
    expect(actc_trainer_close(h), ACTC_OK, "", "");
}

#[test]
fn a_plan_compiled_with_mse_trains_on_float_targets() {
    let plan = compile(
        "tiny_multi_output.onnx",
        "mse.actc",
        &[
            "--layers",
            "1",
            "--train-output",
            "embedding",
            "--loss",
            "mse",
        ],
    );
    let h = open(&plan);
    let mut classes = true;
    // SAFETY (every call): arrays of the lengths passed, room for each result.
    expect(
        unsafe { actc_trainer_takes_classes(h, &mut classes) },
        ACTC_OK,
        "",
        "",
    );
    assert!(!classes);
    let shape = |f: unsafe extern "C" fn(u64, *mut usize, usize, *mut usize) -> i32| {
        let (mut dims, mut rank) = ([0usize; 8], 0);
        expect(
            unsafe { f(h, dims.as_mut_ptr(), 8, &mut rank) },
            ACTC_OK,
            "",
            "",
        );
        dims[..rank].iter().product::<usize>()
    };
    let (n_in, n_out) = (
        shape(actc_trainer_input_shape),
        shape(actc_trainer_output_shape),
    );
    let inputs: Vec<f32> = (0..n_in).map(|i| (i % 13) as f32 / 13.0).collect();
    let targets: Vec<f32> = (0..n_out).map(|i| (i % 5) as f32 / 5.0).collect();
    let mut losses = Vec::new();
    for _ in 0..10 {
        let mut loss = 0.0;
        let status = unsafe {
            actc_trainer_train_step_targets(
                h,
                inputs.as_ptr(),
                n_in,
                targets.as_ptr(),
                n_out,
                &mut loss,
            )
        };
        expect(status, ACTC_OK, "", "");
        losses.push(loss);
    }
    assert!(losses[9] < losses[0], "{losses:?}");
    let mut loss = 0.0;
    let status = unsafe {
        actc_trainer_eval_step_targets(h, inputs.as_ptr(), n_in, targets.as_ptr(), n_out, &mut loss)
    };
    expect(status, ACTC_OK, "", "");
    assert!(loss.is_finite());
    let labels = vec![0i64; 8];
    expect(
        step(h, &inputs, &labels).0,
        ACTC_ERR_FAILED,
        "actc_trainer_train_step",
        "this plan trains with --loss mse",
    );
    expect(actc_trainer_close(h), ACTC_OK, "", "");
}

#[test]
fn threads_share_a_trainer_in_turns_and_a_close_stops_them() {
    let h = open(mlp_plan());
    let (inputs, labels) = batch();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..5 {
                    expect(step(h, &inputs, &labels).0, ACTC_OK, "", "");
                }
            });
        }
    });
    assert_eq!(updates(h), (ACTC_OK, 20));
    std::thread::scope(|s| {
        let stepper = s.spawn(|| {
            loop {
                match step(h, &inputs, &labels).0 {
                    ACTC_OK => {}
                    status => return status,
                }
            }
        });
        while updates(h).1 < 25 {
            std::thread::yield_now();
        }
        expect(actc_trainer_close(h), ACTC_OK, "", "");
        assert_eq!(stepper.join().unwrap(), ACTC_ERR_HANDLE);
    });
}

#[test]
fn the_last_error_is_kept_per_thread_until_the_next_failure() {
    expect(
        actc_set_threads(0),
        ACTC_ERR_ARGUMENT,
        "actc_set_threads",
        "0 threads: give 1 to 1024",
    );
    std::thread::spawn(|| assert_eq!(last_error(), ""))
        .join()
        .unwrap();
    expect(
        updates(u64::MAX).0,
        ACTC_ERR_HANDLE,
        "actc_trainer_updates",
        "",
    );
    let message = last_error();
    // SAFETY: a static C string.
    let version = unsafe { CStr::from_ptr(actc_version()) };
    assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    assert_eq!(last_error(), message, "a success leaves the message");
    expect(
        actc_set_threads(5000),
        ACTC_ERR_ARGUMENT,
        "actc_set_threads",
        "5000 threads",
    );
}

#[test]
fn a_panic_becomes_an_internal_error_and_retires_its_trainer() {
    let status = guard("actc_test", || panic!("a broken invariant"));
    expect(
        status,
        ACTC_ERR_INTERNAL,
        "actc_test",
        "a bug in actc (please report it): a broken invariant",
    );
    let h = open(mlp_plan());
    let status = guard("actc_test", || {
        registry::with(h, |_| -> Result<()> { panic!("mid-step") })
    });
    assert_eq!(status, ACTC_ERR_INTERNAL);
    expect(
        updates(h).0,
        ACTC_ERR_INTERNAL,
        "actc_trainer_updates",
        "close it and open the plan again",
    );
    expect(actc_trainer_close(h), ACTC_OK, "", "");
}

#[test]
fn a_schedule_spans_the_steps_it_is_given() {
    let plan = compile(
        "tiny_mlp.onnx",
        "mlp_cosine.actc",
        &["--layers", "all", "--lr", "0.1", "--schedule", "cosine"],
    );
    let (inputs, labels) = batch();
    let losses = |h: ActcTrainer| -> Vec<f32> {
        (0..4)
            .map(|_| {
                let (status, loss) = step(h, &inputs, &labels);
                assert_eq!(status, ACTC_OK, "{}", last_error());
                loss
            })
            .collect()
    };
    // Over 2 updates the cosine reaches 0 at the third: the third update changes nothing.
    let spanned = open(&plan);
    assert_eq!(actc_trainer_set_total_steps(spanned, 2), ACTC_OK);
    let l = losses(spanned);
    assert_eq!(l[3], l[2]);
    // Without a length the lr stays at its start, and every step moves the weights.
    let open_ended = open(&plan);
    let l = losses(open_ended);
    assert!(l[3] < l[2], "{l:?}");
    for h in [spanned, open_ended] {
        assert_eq!(actc_trainer_close(h), ACTC_OK);
    }
    expect(
        actc_trainer_set_total_steps(spanned, 10),
        ACTC_ERR_HANDLE,
        "actc_trainer_set_total_steps",
        "",
    );
}
