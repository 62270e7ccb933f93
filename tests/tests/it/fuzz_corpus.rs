//! Every committed fuzz input, replayed: the corpus the fuzzers grew (tests/fuzz/corpus) and
//! the inputs that once crashed or hung actc (tests/fuzz/found), each fixed since. A panic
//! here is a finding come back.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for folder in ["corpus", "found"] {
        let Ok(entries) = std::fs::read_dir(root.join(folder).join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            // Named on a panic: the hook prints the message, this line tells which input.
            eprintln!("{}", file.display());
            run(&bytes);
            count += 1;
        }
    }
    assert!(count > 0, "no committed inputs for the {target} target");
}

#[test]
fn onnx_inputs() {
    replay("onnx", actc_tests::fuzz::onnx);
}

#[test]
fn plan_inputs() {
    replay("plan", actc_tests::fuzz::plan);
}

#[test]
fn data_inputs() {
    replay("data", actc_tests::fuzz::data);
}
