//! What the fuzz targets (`tests/fuzz`) run on each input, and the corpus replay test
//! (`tests/tests/it/fuzz_corpus.rs`) runs on every committed input: the boundaries where actc
//! reads files it did not write. Each must return, never panic or crash, whatever the bytes.
//! The integration tests themselves live in `tests/`.

pub mod fuzz {
    use actc::{CompileOptions, Layers};
    use actc_runtime::data::{Dataset, Preprocess};
    use actc_runtime::exec::Executor;
    use actc_runtime::plan::{FORMAT_VERSION, MAGIC, Plan};
    use std::path::PathBuf;

    /// Bytes as an ONNX model, compiled for all its layers (import, shape rules, every
    /// pass, memory planning); a plan that compiles is also run for one step.
    pub fn onnx(bytes: &[u8]) {
        let Ok(model) = actc::decode_onnx(bytes) else {
            return;
        };
        let opts = CompileOptions {
            layers: Layers::All,
            threads: 1,
            max_memory: Some(LIMIT),
            ..CompileOptions::default()
        };
        // A folder that is never made: external data has nothing to read.
        let dir = std::env::temp_dir().join("actc-fuzz-no-such-folder");
        if let Ok(c) = actc::compile_model(model, &dir, "fuzz.onnx", &opts) {
            run(c.plan);
        }
    }

    /// Bytes as a plan file's payload, under a correct header and checksum: what someone who
    /// builds plans can hand the loader. A plan it accepts is run for a step.
    pub fn plan(payload: &[u8]) {
        let mut file = Vec::with_capacity(payload.len() + 24);
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        file.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        file.extend_from_slice(payload);
        file.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        if let Ok(plan) = Plan::from_bytes(&file) {
            run(plan);
        }
    }

    /// Memory a fuzzed plan may ask for and still be run: more would only slow the fuzzer
    /// (the loader allocates up to what the machine gives).
    const LIMIT: u64 = 64 << 20;

    fn run(plan: Plan) {
        let mem = plan.memory.clone().unwrap_or_default();
        if mem.arena.saturating_add(mem.persistent) > LIMIT {
            return;
        }
        if let Ok(mut exec) = Executor::new(plan, 2) {
            step(&mut exec);
        }
    }

    /// What a loaded plan must survive: its own prefix (when it runs one) on a batch of
    /// 0.5s, a forward pass and a training step.
    pub fn step(exec: &mut Executor) {
        if exec.runs_prefix() {
            let len = exec
                .plan()
                .source
                .as_ref()
                .map_or(0, |s| s.input_shape.iter().product::<u64>() as usize);
            exec.run_prefix(&vec![0.5; len], None);
        }
        exec.forward();
        exec.train_step();
    }

    /// Bytes as a data set of the kind the first byte picks: an IDX pair (plain or gzipped;
    /// the second byte says how many of the rest are the labels file), an `.npz`, or a PNG
    /// in a folder of classes. Loaded and, when it loads, its first sample preprocessed.
    pub fn data(bytes: &[u8]) {
        let [pick, split, rest @ ..] = bytes else {
            return;
        };
        let dir = scratch();
        let _ = std::fs::remove_dir_all(&dir);
        let (labels, images) = rest.split_at((*split as usize).min(rest.len()));
        let files: Vec<(&str, &[u8])> = match pick % 4 {
            0 => vec![
                ("train-images-idx3-ubyte", images),
                ("train-labels-idx1-ubyte", labels),
            ],
            1 => vec![
                ("train-images-idx3-ubyte.gz", images),
                ("train-labels-idx1-ubyte.gz", labels),
            ],
            2 => vec![("data.npz", rest)],
            _ => vec![("class/0.png", rest)],
        };
        for (name, bytes) in &files {
            let path = dir.join(name);
            let written = std::fs::create_dir_all(path.parent().expect("a folder"))
                .and_then(|_| std::fs::write(&path, bytes));
            if written.is_err() {
                return;
            }
        }
        // An npz is read as the file; IDX files and image classes as their folder.
        let target = match pick % 4 {
            2 => dir.join("data.npz"),
            _ => dir.clone(),
        };
        if let Ok(data) = Dataset::load(&target, None) {
            let shape = [3, 8, 8];
            if let Ok(prep) = Preprocess::for_input(&shape, &data)
                && data.check(&prep).is_ok()
                && !data.is_empty()
            {
                let mut out = vec![0.0; shape.iter().product()];
                data.write_sample(0, &prep, &mut out);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A folder of this process's own (the fuzzer runs one input at a time per process).
    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("actc-fuzz-data-{}", std::process::id()))
    }
}
