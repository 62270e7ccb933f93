//! `examples/train.c` as an app builds it: compiled by the system C compiler against the
//! committed header, linked with the libactc.so cargo built, run on a plan of tiny_mlp. It
//! trains, round-trips a weight, saves, exports and checks that a closed handle is refused.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cmd`, failing the test with its output when it fails.
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {:?}: {e}", cmd.get_program()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The folder of this build's libactc.so. Cargo builds the library (every crate type, since
/// it has an rlib) before the package's integration tests, into their own folder,
/// `target/<profile>/deps` (only `cargo build` copies it one folder up).
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().to_path_buf();
    let lib = dir.join(format!(
        "{}actc{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(
        lib.is_file(),
        "{} is missing: cargo builds it before this test (`cargo test -p actc-capi`)",
        lib.display()
    );
    dir
}

#[test]
fn the_c_example_trains_a_plan() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_example");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();

    let plan = scratch.join("mlp.actc");
    let model = crate_dir.join("../../models/tiny_mlp.onnx");
    actc_compiler::driver::cli::run_from([
        "actc".as_ref(),
        "compile".as_ref(),
        model.as_os_str(),
        "--layers".as_ref(),
        "all".as_ref(),
        // An lr at which a few steps on one batch lower the loss clearly.
        "--lr".as_ref(),
        "0.1".as_ref(),
        "--momentum".as_ref(),
        "0.9".as_ref(),
        "-o".as_ref(),
        plan.as_os_str(),
    ])
    .unwrap();

    let lib = library_dir();
    let exe = scratch.join("train");
    // Warnings are errors: the header must compile cleanly as strict C11.
    run(
        Command::new(std::env::var_os("CC").unwrap_or("cc".into()))
            .args(["-std=c11", "-Wall", "-Wextra", "-pedantic", "-Werror", "-I"])
            .arg(crate_dir.join("include"))
            .arg(crate_dir.join("examples/train.c"))
            .arg("-L")
            .arg(&lib)
            .arg("-lactc")
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-o")
            .arg(&exe),
        "compiling examples/train.c (needs a C compiler: cc, or set CC)",
    );
    // Under `cargo test` LD_LIBRARY_PATH lists target/<profile> too, which beats the rpath:
    // a libactc.so that an earlier `cargo build -p actc-capi` left there would be loaded.
    let stdout = run(
        Command::new(&exe)
            .env("LD_LIBRARY_PATH", &lib)
            .arg(&plan)
            .arg(&scratch),
        "examples/train.c",
    );
    assert!(
        stdout.contains("after close: actc_trainer_updates: trainer"),
        "{stdout}"
    );
    for file in ["trained.actc", "trained.onnx"] {
        assert!(scratch.join(file).is_file(), "{file} was not written");
    }
}
