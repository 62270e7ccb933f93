//! `actc train --resume`: a run killed with SIGKILL at random points, during steps and
//! during saves, and resumed each time, ends with the uninterrupted run's weights, bit for
//! bit. The real binary, in processes of its own: a kill must find nothing but files.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const ACTC: &str = env!("CARGO_BIN_EXE_actc");
const MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("actc-resume-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn actc(args: &[&str]) -> Command {
    let mut c = Command::new(ACTC);
    c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn succeeds(args: &[&str]) {
    let out = actc(args).output().unwrap();
    assert!(
        out.status.success(),
        "`actc {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plan with every kind of state a run carries: Adam's moments, fixed-rank HOSVD factors
/// kept from step to step, a frozen prefix on actc's kernels (whose outputs the cache keeps
/// in one run and recomputes in the other).
fn compile(dir: &Path) -> PathBuf {
    let plan = dir.join("cnn.actc");
    let data = format!("{MODELS}/data/fashion-mnist");
    succeeds(&[
        "compile",
        &format!("{MODELS}/tiny_cnn.onnx"),
        "--layers",
        "3",
        "--input-shape",
        "16x3x16x16",
        "--optimizer",
        "adamw",
        "--lr",
        "0.003",
        "--schedule",
        "cosine",
        "--compress",
        "hosvd",
        "--budget",
        "2K",
        "--calibration",
        &data,
        "-o",
        plan.to_str().unwrap(),
    ]);
    plan
}

fn train_args<'a>(plan: &'a str, data: &'a str, save: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        plan,
        "--data",
        data,
        "--epochs",
        "30",
        "--seed",
        "5",
        "--quiet",
        "--threads",
        "2",
        "--checkpoint-every",
        "9",
        "--save",
        save,
    ]
}

#[test]
fn killed_and_resumed_runs_end_bit_identical() {
    let dir = scratch("kills");
    let plan = compile(&dir);
    let data = format!("{MODELS}/data/fashion-mnist");
    let (full, part) = (dir.join("full"), dir.join("part"));
    let p = plan.to_str().unwrap();
    succeeds(&train_args(p, &data, full.to_str().unwrap()));

    let mut resumed = train_args(p, &data, part.to_str().unwrap());
    resumed.push("--resume");
    // Delays from a fixed LCG: the same kill points on every run of the test, spread over
    // start-up, steps, evaluation and saves. Every other kill waits for a save to begin
    // (its temporary file to appear) and strikes then.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let (mut kills, mut in_saves) = (Vec::new(), 0);
    while kills.len() < 24 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let ms = 15 + (seed >> 33) % 150;
        let mut child = actc(&resumed).spawn().unwrap();
        // A save names its temporary file with its process id.
        let saving = format!(".tmp{}", child.id());
        let in_save = || temporary_files(&dir).iter().any(|n| n.ends_with(&saving));
        if kills.len() % 2 == 1 {
            let start = std::time::Instant::now();
            while !in_save() && start.elapsed() < Duration::from_secs(2) {}
        } else {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the run ended ({status}) before kill {} (after {kills:?} ms): make it longer; {}",
                kills.len() + 1,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
        in_saves += in_save() as usize;
        kills.push(ms);
    }
    eprintln!("{} kills, {in_saves} of them during a save", kills.len());
    assert!(in_saves > 0, "no kill struck during a save");
    succeeds(&resumed);

    for tag in ["last", "best"] {
        let read = |stem: &Path| std::fs::read(format!("{}.{tag}.actc", stem.display())).unwrap();
        assert!(
            read(&full) == read(&part),
            "{tag}: the resumed run differs from the uninterrupted one (kills after {kills:?} ms)"
        );
    }
    let left = temporary_files(&dir);
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What saves in progress (or killed) left in `dir`.
fn temporary_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

fn fails_with(args: &[&str], wanted: &str) {
    let out = actc(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "`actc {}`: {err}",
        args.join(" ")
    );
    assert!(err.contains(wanted), "`actc {}`: {err}", args.join(" "));
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[test]
fn resume_refuses_another_run() {
    let dir = scratch("mismatch");
    let plan = compile(&dir);
    let data = format!("{MODELS}/data/fashion-mnist");
    let stem = dir.join("run");
    let (p, s) = (plan.to_str().unwrap(), stem.to_str().unwrap());
    let mut args = train_args(p, &data, s);
    args[5] = "1";
    succeeds(&args);
    args.push("--resume");
    // Nothing left to do: the run had ended.
    succeeds(&args);
    let digits = format!("{MODELS}/data/digits.npz");
    for (flag, value, wanted) in [
        ("--seed", "6", "--seed differs"),
        ("--epochs", "2", "--epochs differs"),
        ("--scale", "0.5", "preprocessing differs"),
        ("--data", digits.as_str(), "--data differs"),
    ] {
        let mut a = args.clone();
        match a.iter().position(|x| *x == flag) {
            Some(i) => a[i + 1] = value,
            None => a.extend([flag, value]),
        }
        fails_with(&a, wanted);
    }
    // A checkpoint of another plan.
    let other = dir.join("other.actc");
    std::fs::copy(&plan, &other).unwrap();
    succeeds(&[
        "compile",
        &format!("{MODELS}/tiny_cnn.onnx"),
        "--layers",
        "2",
        "--input-shape",
        "16x3x16x16",
        "-o",
        other.to_str().unwrap(),
    ]);
    let mut a = args.clone();
    a[1] = other.to_str().unwrap();
    fails_with(&a, "the plan differs");
    // Not a checkpoint: the plan itself where the checkpoint should be.
    std::fs::copy(&plan, dir.join("run.last.actc")).unwrap();
    fails_with(&args, "not a checkpoint");
    let _ = std::fs::remove_dir_all(&dir);
}
