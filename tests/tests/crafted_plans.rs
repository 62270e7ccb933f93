//! Plans crafted from real ones, one hostile field at a time: a plan file anyone can write
//! (its checksum proves nothing), so the loader either refuses it or runs it without a
//! panic. Ops are mutated through their wire encoding, so this file names none of them.

mod common;

use actc::{CompileOptions, Compression, HosvdRanks, Layers, Optimizer, PrefixRunner};
use actc_runtime::exec::Executor;
use actc_runtime::ops::{Op, Sgd};
use actc_runtime::plan::{DType, Plan};
use prost::Message;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Plans bigger than this are refused or skipped: running them only costs time.
const LIMIT: u64 = 64 << 20;
const MUTATIONS: usize = 20_000;

/// Knuth's MMIX LCG; the high bits are the random ones.
struct Lcg(u64);

impl Lcg {
    /// Nearby seeds start far apart (SplitMix64's finaliser).
    fn new(seed: u64) -> Lcg {
        let mut z = seed.wrapping_add(0x9e3779b97f4a7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        Lcg(z ^ (z >> 31))
    }

    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}

fn bases() -> Vec<(&'static str, Plan)> {
    let opts = |layers, shape: &[usize]| common::options(layers, Some(shape.to_vec()));
    let momentum = Optimizer::Sgd(Sgd {
        momentum: 0.9,
        ..Default::default()
    });
    let adam = Optimizer::AdamW(actc_runtime::ops::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.01,
    });
    let cnn = [2, 3, 16, 16];
    let cases: Vec<(&str, &str, CompileOptions)> = vec![
        (
            "mlp, momentum, clipped",
            "tiny_mlp",
            CompileOptions {
                optimizer: momentum.clone(),
                clip_grad_norm: Some(1.0),
                ..opts(Layers::All, &[4, 64])
            },
        ),
        (
            "cnn, hosvd",
            "tiny_cnn",
            CompileOptions {
                compression: Compression::Hosvd {
                    eps: 0.9,
                    max_rank: 4,
                    ranks: HosvdRanks::Eps,
                },
                optimizer: momentum,
                ..opts(Layers::All, &cnn)
            },
        ),
        (
            "cnn, svd, adamw",
            "tiny_cnn",
            CompileOptions {
                compression: Compression::Svd {
                    eps: 0.9,
                    max_rank: 4,
                },
                optimizer: adam.clone(),
                keep_gradients: true,
                ..opts(Layers::All, &cnn)
            },
        ),
        (
            "cnn, gradient filter",
            "tiny_cnn",
            CompileOptions {
                compression: Compression::GradFilter { patch: 2 },
                ..opts(Layers::Last(2), &cnn)
            },
        ),
        (
            "cnn, own prefix in lanes",
            "tiny_cnn",
            CompileOptions {
                prefix: PrefixRunner::Actc,
                prefix_batch: Some(1),
                ..opts(Layers::Last(1), &cnn)
            },
        ),
        (
            "layernorm, adamw",
            "tiny_layernorm",
            CompileOptions {
                optimizer: adam,
                ..opts(Layers::All, &[4, 8, 16])
            },
        ),
        (
            "layernorm decomposed",
            "tiny_layernorm_decomposed",
            opts(Layers::All, &[4, 8, 16]),
        ),
        ("matmul", "tiny_matmul", opts(Layers::All, &[4, 64])),
        (
            "multi output",
            "tiny_multi_output",
            opts(Layers::All, &[2, 3, 16, 16]),
        ),
        // ConvTranspose and Resize forward and backward, and in an own prefix
        ("decoder", "tiny_decoder", opts(Layers::All, &cnn)),
        (
            "decoder, own prefix",
            "tiny_decoder",
            CompileOptions {
                prefix: PrefixRunner::Actc,
                prefix_batch: Some(1),
                ..opts(Layers::Last(1), &cnn)
            },
        ),
    ];
    cases
        .into_iter()
        .map(|(what, model, o)| {
            let plan = actc::compile_file(&common::model(model), &o)
                .unwrap_or_else(|e| panic!("{what}: {}", e.0))
                .plan;
            (what, plan)
        })
        .collect()
}

const DIMS: [u64; 9] = [0, 1, 2, 3, 7, 1 << 20, 1 << 32, u64::MAX, u64::MAX / 4];
const WORDS: [u64; 12] = [
    0,
    1,
    2,
    3,
    5,
    17,
    255,
    1 << 31,
    u32::MAX as u64,
    1 << 32,
    u64::MAX,
    u64::MAX - 1,
];

/// Sets a buffer's bytes from its shape and type (so the size check passes), and at times
/// moves it to the end of its region, grown to hold it, so it overlaps nothing.
fn resize(plan: &mut Plan, b: usize, rng: &mut Lcg) {
    let buf = &mut plan.buffers[b];
    let size = buf.dtype().size() as u64;
    buf.bytes = buf
        .shape
        .iter()
        .try_fold(size, |n, &d| n.checked_mul(d))
        .unwrap_or(u64::MAX);
    let region_end = |m: &actc_runtime::plan::Memory| m.arena.max(m.persistent);
    if rng.below(2) == 0
        && buf.bytes < LIMIT
        && plan.memory.as_ref().is_none_or(|m| region_end(m) < LIMIT)
    {
        let persistent = buf.kind().is_persistent();
        let m = plan.memory.get_or_insert_with(Default::default);
        let region = if persistent {
            &mut m.persistent
        } else {
            &mut m.arena
        };
        buf.offset = region.next_multiple_of(64);
        *region = buf.offset + buf.bytes;
    }
}

/// One field of a protobuf message, enough of the wire format to mutate ops blindly.
#[derive(Clone)]
enum Field {
    Varint(u64, u64),
    Fixed32(u64, [u8; 4]),
    Fixed64(u64, [u8; 8]),
    /// Length-delimited: a nested message when its bytes parse as one, else packed varints
    /// when they parse as those, else raw bytes.
    Message(u64, Vec<Field>),
    Packed(u64, Vec<u64>),
    Bytes(u64, Vec<u8>),
}

fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn parse(b: &[u8]) -> Option<Vec<Field>> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < b.len() {
        let key = varint(b, &mut at)?;
        let tag = key >> 3;
        if tag == 0 {
            return None;
        }
        out.push(match key & 7 {
            0 => Field::Varint(tag, varint(b, &mut at)?),
            1 => {
                let v = b.get(at..at + 8)?.try_into().ok()?;
                at += 8;
                Field::Fixed64(tag, v)
            }
            2 => {
                let len = varint(b, &mut at)? as usize;
                let body = b.get(at..at.checked_add(len)?)?;
                at += len;
                if let Some(m) = parse(body).filter(|m| !m.is_empty()) {
                    Field::Message(tag, m)
                } else if let Some(p) = packed(body) {
                    Field::Packed(tag, p)
                } else {
                    Field::Bytes(tag, body.to_vec())
                }
            }
            5 => {
                let v = b.get(at..at + 4)?.try_into().ok()?;
                at += 4;
                Field::Fixed32(tag, v)
            }
            _ => return None,
        });
    }
    Some(out)
}

fn packed(b: &[u8]) -> Option<Vec<u64>> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < b.len() {
        out.push(varint(b, &mut at)?);
    }
    Some(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn encode(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    let delimited = |out: &mut Vec<u8>, tag: u64, body: Vec<u8>| {
        put_varint(out, tag << 3 | 2);
        put_varint(out, body.len() as u64);
        out.extend(body);
    };
    for f in fields {
        match f {
            Field::Varint(t, v) => {
                put_varint(&mut out, t << 3);
                put_varint(&mut out, *v);
            }
            Field::Fixed32(t, v) => {
                put_varint(&mut out, t << 3 | 5);
                out.extend(v);
            }
            Field::Fixed64(t, v) => {
                put_varint(&mut out, t << 3 | 1);
                out.extend(v);
            }
            Field::Message(t, m) => delimited(&mut out, *t, encode(m)),
            Field::Packed(t, p) => {
                let mut body = Vec::new();
                p.iter().for_each(|&v| put_varint(&mut body, v));
                delimited(&mut out, *t, body);
            }
            Field::Bytes(t, b) => delimited(&mut out, *t, b.clone()),
        }
    }
    out
}

/// Every field of a message tree, depth first, as paths of indices.
fn paths(fields: &[Field], prefix: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    for (i, f) in fields.iter().enumerate() {
        prefix.push(i);
        out.push(prefix.clone());
        if let Field::Message(_, m) = f {
            paths(m, prefix, out);
        }
        prefix.pop();
    }
}

fn mutate_fields(fields: &mut Vec<Field>, path: &[usize], rng: &mut Lcg) {
    let (&i, rest) = path.split_first().expect("a path");
    if !rest.is_empty()
        && let Field::Message(_, m) = &mut fields[i]
    {
        return mutate_fields(m, rest, rng);
    }
    match rng.below(8) {
        0 => {
            fields.remove(i);
        }
        1 => {
            let f = fields[i].clone();
            fields.insert(i, f);
        }
        _ => match &mut fields[i] {
            Field::Varint(_, v) => *v = rng.pick(&WORDS),
            Field::Fixed32(_, v) => {
                *v = rng
                    .pick(&[0.0f32, -1.0, 1e30, f32::NAN, f32::INFINITY, 0.5])
                    .to_le_bytes()
            }
            Field::Fixed64(_, v) => *v = rng.pick(&[0.0f64, -1.0, f64::NAN]).to_le_bytes(),
            Field::Packed(_, p) => match rng.below(3) {
                0 if !p.is_empty() => {
                    p.pop();
                }
                1 => p.push(rng.pick(&WORDS)),
                _ if !p.is_empty() => {
                    let k = rng.below(p.len());
                    p[k] = rng.pick(&WORDS);
                }
                _ => p.push(0),
            },
            Field::Message(t, _) | Field::Bytes(t, _) => {
                // Another field of the same message: at the top, another op.
                *t = if rest.is_empty() && path.len() == 1 {
                    1 + rng.below(62) as u64
                } else {
                    1 + rng.below(5) as u64
                };
            }
        },
    }
}

/// An op with one field of its encoding changed; `None` when that no longer decodes.
fn mutate_op(op: &Op, rng: &mut Lcg) -> Option<Op> {
    let mut fields = parse(&op.encode_to_vec())?;
    let mut all = Vec::new();
    paths(&fields, &mut Vec::new(), &mut all);
    if all.is_empty() {
        return None;
    }
    let path = all[rng.below(all.len())].clone();
    mutate_fields(&mut fields, &path, rng);
    Op::decode(&encode(&fields)[..]).ok()
}

fn ids(rng: &mut Lcg, list: &mut Vec<u32>, buffers: usize) {
    let any = |rng: &mut Lcg| match rng.below(8) {
        0 => buffers as u32,
        1 => u32::MAX,
        _ => rng.below(buffers) as u32,
    };
    match rng.below(5) {
        0 => {
            list.pop();
        }
        1 => list.push(any(rng)),
        2 if list.len() >= 2 => {
            let (a, b) = (rng.below(list.len()), rng.below(list.len()));
            list.swap(a, b);
        }
        _ if !list.is_empty() => {
            let k = rng.below(list.len());
            list[k] = any(rng);
        }
        _ => list.push(any(rng)),
    }
}

/// One hostile change; a word saying what kind of field it hit.
fn mutate(plan: &mut Plan, rng: &mut Lcg) -> &'static str {
    let nb = plan.buffers.len();
    let ns = plan.steps.len();
    match rng.below(16) {
        0..=2 => {
            let b = rng.below(nb);
            let shape = &mut plan.buffers[b].shape;
            match rng.below(6) {
                0 if !shape.is_empty() => {
                    shape.pop();
                }
                1 => shape.insert(rng.below(shape.len() + 1), rng.pick(&[1, 2, 3])),
                _ if !shape.is_empty() => {
                    let d = rng.below(shape.len());
                    shape[d] = match rng.below(3) {
                        0 => shape[d].wrapping_mul(2),
                        1 => shape[d] / 2,
                        _ => rng.pick(&DIMS),
                    };
                }
                _ => shape.push(2),
            }
            resize(plan, b, rng);
            "buffer shape"
        }
        3 => {
            let b = rng.below(nb);
            let m = plan.memory.clone().unwrap_or_default();
            let buf = &mut plan.buffers[b];
            let region = if buf.kind().is_persistent() {
                m.persistent
            } else {
                m.arena
            };
            buf.offset = match rng.below(4) {
                0 => region.saturating_sub(buf.bytes).saturating_add(64),
                1 => u64::MAX - rng.below(128) as u64,
                2 => region.saturating_sub(buf.bytes) / 128 * 64,
                _ => 0,
            };
            "buffer offset"
        }
        4 => {
            let b = rng.below(nb);
            plan.buffers[b].dtype =
                rng.pick(&[DType::F32, DType::I64, DType::U32, DType::U8]) as i32;
            resize(plan, b, rng);
            "buffer dtype"
        }
        5 => {
            let b = rng.below(nb);
            plan.buffers[b].kind = rng.below(13) as i32;
            resize(plan, b, rng);
            "buffer kind"
        }
        6 | 7 => {
            let s = rng.below(ns);
            ids(rng, &mut plan.steps[s].inputs, nb);
            "step inputs"
        }
        8 => {
            let s = rng.below(ns);
            ids(rng, &mut plan.steps[s].outputs, nb);
            "step outputs"
        }
        9 => {
            let s = rng.below(ns);
            if rng.below(4) == 0 {
                plan.steps[s].beside_next ^= true;
                return "step beside the next";
            }
            plan.steps[s].workspace = match rng.below(3) {
                0 => None,
                _ => Some(rng.below(nb) as u32),
            };
            "step workspace"
        }
        10..=12 => {
            let s = rng.below(ns);
            let Some(op) = plan.steps[s].op.as_ref().and_then(|op| mutate_op(op, rng)) else {
                return "op (not decodable)";
            };
            plan.steps[s].op = Some(op);
            "op attributes"
        }
        13 => {
            let m = plan.memory.get_or_insert_with(Default::default);
            let field = if rng.below(2) == 0 {
                &mut m.arena
            } else {
                &mut m.persistent
            };
            *field = match rng.below(4) {
                0 => 0,
                1 => *field / 2,
                2 => field.saturating_sub(64),
                _ => u64::MAX,
            };
            "memory size"
        }
        14 => {
            match rng.below(6) {
                0 => plan.prefix_batch = rng.pick(&[0, 1, 2, 3, u32::MAX]),
                1 => plan.prefix_steps = plan.prefix_steps.saturating_add(1),
                2 => plan.prefix_steps = plan.prefix_steps.saturating_sub(1),
                3 => {
                    let at = rng.pick(&[0, 64, 4096, u64::MAX - 63]);
                    plan.prefix_lanes.push(at)
                }
                4 => {
                    plan.prefix_lanes.pop();
                }
                _ => ids(rng, &mut plan.prefix_outputs, nb),
            }
            "prefix"
        }
        _ => {
            match rng.below(5) {
                0 if !plan.weights.is_empty() => {
                    let w = rng.below(plan.weights.len());
                    plan.weights[w].buffer = rng.below(nb + 1) as u32;
                }
                1 => ids(rng, &mut plan.feeds, nb),
                2 => plan.loss = rng.below(nb + 1) as u32,
                3 => plan.output = rng.below(nb + 1) as u32,
                _ => plan.input = rng.below(nb + 1) as u32,
            }
            "plan fields"
        }
    }
}

enum Outcome {
    Refused(String),
    Ran,
    Skipped,
}

fn run(plan: Plan) -> Outcome {
    let mem = plan.memory.clone().unwrap_or_default();
    if mem.arena.saturating_add(mem.persistent) > LIMIT {
        return Outcome::Skipped;
    }
    let mut exec = match Executor::new(plan, 2) {
        Ok(exec) => exec,
        Err(e) => return Outcome::Refused(e.0),
    };
    actc_tests::fuzz::step(&mut exec);
    Outcome::Ran
}

static PANIC: Mutex<Option<String>> = Mutex::new(None);
/// Whether a crafted plan is running: a panic elsewhere is the test's own, shown as usual.
static RUNNING: AtomicBool = AtomicBool::new(false);

#[test]
fn crafted_plans_are_refused_or_run() {
    let bases = bases();
    for (what, plan) in &bases {
        if let Outcome::Refused(e) = run(plan.clone()) {
            panic!("{what}: the unmutated plan: {e}");
        }
    }
    let trace = std::env::var_os("ACTC_TRACE_CRAFTED").is_some();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !RUNNING.load(Ordering::Relaxed) {
            return default(info);
        }
        let at = info.location().map(|l| l.to_string()).unwrap_or_default();
        if trace {
            eprintln!("{info}\n{}", std::backtrace::Backtrace::force_capture());
        }
        PANIC
            .lock()
            .unwrap()
            .get_or_insert_with(|| format!("{info} at {at}"));
    }));
    let start = std::time::Instant::now();
    let (mut refused, mut ran, mut skipped, mut undecodable) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    // ACTC_CRAFTED_SEED=0x5eed… replays one mutation.
    let only = std::env::var("ACTC_CRAFTED_SEED")
        .ok()
        .map(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("a hex seed"));
    for i in 0..MUTATIONS {
        let seed = 0x5eed_0000 + i as u64;
        if only.is_some_and(|o| o != seed) {
            continue;
        }
        let mut rng = Lcg::new(seed);
        let (what, base) = &bases[rng.below(bases.len())];
        let mut plan = base.clone();
        let mut fields = vec![mutate(&mut plan, &mut rng)];
        if rng.below(4) == 0 {
            fields.push(mutate(&mut plan, &mut rng));
        }
        if fields.contains(&"op (not decodable)") {
            undecodable += 1;
            continue;
        }
        let plan = Plan::from_bytes(&plan.to_bytes()).expect("a plan re-encoded");
        // What a crash that no hook sees (memory corrupted, an abort) leaves to go by.
        if trace {
            eprintln!("seed {seed:#x} ({what}; {fields:?})");
        }
        RUNNING.store(true, Ordering::Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| run(plan)));
        RUNNING.store(false, Ordering::Relaxed);
        match outcome {
            Ok(Outcome::Refused(_)) => refused += 1,
            Ok(Outcome::Ran) => ran += 1,
            Ok(Outcome::Skipped) => skipped += 1,
            Err(_) => {
                let msg = PANIC.lock().unwrap().take().unwrap_or_default();
                failures.push(format!("seed {seed:#x} ({what}; {fields:?}): {msg}"));
            }
        }
    }
    eprintln!(
        "{MUTATIONS} mutations: {refused} refused, {ran} accepted and ran, {skipped} too large \
         to run, {undecodable} ops that no longer decoded; {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} crafted plans panicked:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
