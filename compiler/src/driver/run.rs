//! `actc train`, `actc eval` and `actc export`: the runtime driven from the command line.

use crate::driver::data::{DataOptions, Reads, check_labels, load_data, reads, seeded_noise};
use crate::driver::fs::{check_output, write_atomically, write_atomically_with};
use crate::driver::inspect::human;
use crate::{MAX_INLINE, Result, bail, err, export, externalize};
use actc_runtime::cache::PrefixCache;
use actc_runtime::data::{Dataset, split};
use actc_runtime::exec::Executor;
use actc_runtime::plan::{Plan, PlanFile, Progress, Run};
use actc_runtime::train::{Event, Metrics, Rows, Session, TrainRun};
use indicatif::{ProgressBar, ProgressStyle};
use prost::Message;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone)]
pub struct TrainOptions {
    pub data: PathBuf,
    pub val: Option<PathBuf>,
    pub val_fraction: f64,
    pub epochs: usize,
    pub seed: u64,
    pub log: Option<PathBuf>,
    pub save: Option<PathBuf>,
    pub quiet: bool,
    /// Bytes of memory for the prefix cache (0: none).
    pub cache_budget: usize,
    /// Bytes of disk for the prefix cache beyond its memory (0: none), in `cache_dir`.
    pub cache_disk: usize,
    pub cache_dir: PathBuf,
    pub prep: DataOptions,
    /// A step whose loss passes this stops the run: it diverges.
    pub max_loss: f32,
    /// Go on from the run's last checkpoint.
    pub resume: bool,
    /// Steps between checkpoints within an epoch (0: at each epoch's end only).
    pub checkpoint_every: usize,
    /// At the end, the session holds the best epoch's trainable weights (copied in memory
    /// whenever an epoch improves), not the last epoch's; the optimizer state stays the
    /// last's. For callers that use the weights in place (`decompose --distill`), not a file.
    pub keep_best: bool,
}

/// A plan file's structure, its weights and ONNX parts left in the file.
fn load_plan_structure(path: &Path) -> Result<Plan> {
    Plan::open(path)
        .map(|(plan, _)| plan)
        .map_err(|e| err!("{}: {e}", path.display()))
}

pub fn load_plan(path: &Path) -> Result<Plan> {
    Plan::load(path).map_err(|e| err!("{}: {e}", path.display()))
}

/// Says so when a plan's int8 prefix will run on portable code here (no 8-bit dot products
/// on this CPU): slower than the f32 prefix it replaced.
fn warn_if_int8_is_slow(plan: &Plan, path: &Path) {
    if plan.has_int8() && !actc_runtime::kernels::qgemm::accelerated() {
        eprintln!(
            "warning: {}: its frozen prefix is int8, and this CPU has no 8-bit dot products (AVX512-VNNI): it runs on portable code, slower than an f32 prefix; compile without --prefix-precision int8 for this machine",
            path.display()
        );
    }
}

/// A session over a plan file, its weights read straight into the runtime's memory and its
/// ONNX parts left in the file (see `Plan::open`).
fn open_session(path: &Path, total_updates: u64) -> Result<Session> {
    let (plan, file) = Plan::open(path).map_err(|e| err!("{}: {e}", path.display()))?;
    warn_if_int8_is_slow(&plan, path);
    Session::open(plan, file, total_updates).map_err(|e| err!("{}: {e}", path.display()))
}

/// What `--json` and the log write of a data set's metrics.
/// With several trained outputs, `mse` is the loss (their weighted sum) and `outputs` holds
/// each one's own MSE.
pub fn metrics_json(m: &Metrics) -> serde_json::Value {
    let mut v = match m.regression {
        true => json!({"loss": m.loss, "mse": m.loss, "mae": m.mae, "samples": m.samples}),
        false => json!({"loss": m.loss, "accuracy": m.accuracy, "samples": m.samples}),
    };
    if !m.outputs.is_empty() {
        let per: serde_json::Map<_, _> = m
            .outputs
            .iter()
            .map(|(name, mse)| (name.clone(), json!({ "mse": mse })))
            .collect();
        v["outputs"] = per.into();
    }
    v
}

/// Writes the executor's plan with its current weights (with `progress`, a checkpoint to
/// resume from) to `path`, encoded straight into the file: a DINOv2 plan is 175 MB, and a
/// copy of it in memory at every save doubled `train`'s peak.
fn save_plan(
    exec: &mut Executor,
    progress: Option<Progress>,
    path: &Path,
) -> std::result::Result<(), String> {
    write_atomically_with(path, |f| {
        exec.write_checkpoint(progress, f)
            .map_err(|e| std::io::Error::other(e.0))
    })
    .map_err(|e| e.0)
}

/// A data set's metrics on the epoch line: loss and accuracy, or MSE (and each trained
/// output's) and MAE.
fn metrics_text(m: &Metrics) -> String {
    let per: Vec<String> = m
        .outputs
        .iter()
        .map(|(name, mse)| format!("{name} {mse:.4}"))
        .collect();
    match (m.regression, per.is_empty()) {
        (true, true) => format!("mse {:.4} mae {:.4}", m.loss, m.mae),
        (true, false) => format!("mse {:.4} ({}) mae {:.4}", m.loss, per.join(", "), m.mae),
        (false, _) => format!("loss {:.4} acc {:.4}", m.loss, m.accuracy),
    }
}

/// The best epoch's score (see `Metrics::score`) as the final message says it.
fn best_text(best: f64, regression: bool) -> String {
    match regression {
        true => format!("best val loss {:.4}", -best),
        false => format!("best val accuracy {best:.4}"),
    }
}

/// What the compressed layers kept since the last report, as text lines and as JSON (None
/// without compression); resets the executor's tallies.
fn compression_report(exec: &mut Executor) -> Option<(String, serde_json::Value)> {
    let stats = exec.compression_stats();
    if stats.is_empty() {
        return None;
    }
    let total = exec.paper_total();
    let vanilla: usize = stats.iter().map(|s| s.vanilla_bytes).sum();
    let planned: usize = stats.iter().map(|s| s.planned_bytes).sum();
    let mut text = format!(
        "  compressed inputs, paper's metric: mean {}, peak {} per step (vanilla {}, planned at the caps {})",
        human(total.mean() as u64),
        human(total.max),
        human(vanilla as u64),
        human(planned as u64)
    );
    let mut layers = Vec::new();
    for s in stats {
        let modes: Vec<String> = (0..s.modes)
            .map(|m| {
                format!(
                    "{:.1} ({}-{})",
                    s.rank_mean(m),
                    s.rank_min[m],
                    s.rank_max[m]
                )
            })
            .collect();
        text.push_str(&format!(
            "\n  {}: ranks {} | {} mean, {} peak | truncated at the cap in {} of {} steps",
            s.layer,
            if modes.is_empty() {
                "-".to_string()
            } else {
                modes.join(" ")
            },
            human(s.paper_bytes.mean() as u64),
            human(s.paper_bytes.max),
            s.truncated,
            s.paper_bytes.count
        ));
        layers.push(json!({
            "layer": s.layer,
            "rank_mean": (0..s.modes).map(|m| s.rank_mean(m)).collect::<Vec<_>>(),
            "rank_min": &s.rank_min[..s.modes],
            "rank_max": &s.rank_max[..s.modes],
            "truncated_steps": s.truncated,
            "steps": s.paper_bytes.count,
            "paper_bytes_mean": s.paper_bytes.mean(),
            "paper_bytes_peak": s.paper_bytes.max,
            "vanilla_bytes": s.vanilla_bytes,
            "planned_bytes": s.planned_bytes,
        }));
    }
    let value = json!({
        "paper_bytes_mean": total.mean(),
        "paper_bytes_peak": total.max,
        "vanilla_bytes": vanilla,
        "planned_bytes": planned,
        "layers": layers,
    });
    exec.reset_compression_stats();
    Some((text, value))
}

/// Where `train` saves: `<stem>.best.actc` and `<stem>.last.actc`.
pub fn save_paths(plan: &Path, save: Option<&Path>) -> (PathBuf, PathBuf) {
    let stem = match save {
        Some(s) => s.to_path_buf(),
        None => plan.with_extension(""),
    };
    let with = |tag: &str| PathBuf::from(format!("{}.{tag}.actc", stem.display()));
    (with("best"), with("last"))
}

/// The samples of a training run: `data`'s training rows, and the validation rows of `val`
/// (or of `data`, held out from it when no `--val` is given).
pub struct RunData {
    pub data: Dataset,
    pub train_rows: Vec<usize>,
    pub val: Option<Dataset>,
    pub val_rows: Vec<usize>,
}

impl RunData {
    /// Reads `--data` and `--val` as `opts` says, holding what `reads` says (class labels or
    /// regression targets, one array per input of a plan that packs several).
    pub fn load(opts: &TrainOptions, reads: &Reads) -> Result<RunData> {
        let data = load_data(&opts.data, &opts.prep, reads)?;
        let val = match &opts.val {
            Some(v) => Some(load_data(v, &opts.prep, reads)?),
            None => None,
        };
        RunData::split(data, val, opts)
    }

    /// Every row of `data` trains when `val` is given; else `--val-fraction` of them is
    /// held out, chosen by `--seed`.
    pub fn split(data: Dataset, val: Option<Dataset>, opts: &TrainOptions) -> Result<RunData> {
        let (train_rows, val_rows) = match &val {
            Some(v) => ((0..data.len()).collect(), (0..v.len()).collect()),
            None => {
                if !(0.0..1.0).contains(&opts.val_fraction) {
                    bail!(
                        "--val-fraction must be in [0, 1), got {}",
                        opts.val_fraction
                    );
                }
                split::holdout(data.len(), opts.val_fraction, opts.seed)
            }
        };
        Ok(RunData {
            data,
            train_rows,
            val,
            val_rows,
        })
    }
}

/// Trains as `opts` says; returns the best validation accuracy (`None`: the run had already
/// ended).
pub fn train(plan_path: &Path, opts: &TrainOptions) -> Result<Option<f64>> {
    let plan_crc = Plan::stored_crc(plan_path).map_err(|e| err!("{}: {e}", plan_path.display()))?;
    let what = reads(&load_plan_structure(plan_path)?);
    let data = RunData::load(opts, &what)?;
    let (best_path, last_path) = save_paths(plan_path, opts.save.as_deref());
    let run = run_key(plan_crc, opts, &data);
    let (plan, file, progress, resuming) =
        start_or_resume(plan_path, &last_path, run, opts.resume)?;
    let name = plan_path.display().to_string();
    // The lr schedule's length is set by `fit`, which knows the steps per epoch.
    let mut session = Session::open(plan, file, 1).map_err(|e| err!("{name}: {e}"))?;
    let from = resuming.then_some(last_path.as_path());
    fit(
        &mut session,
        &name,
        &data,
        opts,
        progress,
        Some((&best_path, &last_path)),
        from,
    )
}

/// Trains `session` (the plan called `name` in messages) on `run` as `opts` says, from
/// `progress` (resumed from the checkpoint `resumed`), saving the best and the last weights
/// at `save` when given; returns the best validation accuracy (`None`: the run had already
/// ended).
pub fn fit(
    session: &mut Session,
    name: &str,
    run: &RunData,
    opts: &TrainOptions,
    progress: Progress,
    save: Option<(&Path, &Path)>,
    resumed: Option<&Path>,
) -> Result<Option<f64>> {
    let RunData {
        data,
        train_rows,
        val: val_data,
        val_rows,
    } = run;
    let val = val_data.as_ref().unwrap_or(data);
    if opts.max_loss.is_nan() || opts.max_loss <= 0.0 {
        bail!(
            "--max-loss must be a positive number, got {}",
            opts.max_loss
        );
    }
    if opts.cache_disk > 0 && !opts.cache_dir.is_dir() {
        bail!(
            "--cache-dir {}: not a folder; pass an existing folder, or --cache-disk 0 to keep the prefix cache in memory only",
            opts.cache_dir.display()
        );
    }
    let batch = session.batch();
    let regression = session.regression();
    let steps_per_epoch = train_rows.len() / batch;
    check_targets(session, data, "", &opts.data)?;
    if let (Some(v), Some(path)) = (val_data, &opts.val) {
        check_targets(session, v, "--val ", path)?;
    }
    // The run's first update: the lr schedule spans it and its epochs.
    let done = progress.epochs_done as u64 * steps_per_epoch as u64 + progress.steps_done;
    let first = progress.updates.saturating_sub(done);
    session
        .executor()
        .set_total_steps(first + (steps_per_epoch * opts.epochs) as u64);
    session
        .set_cache(PrefixCache::new(opts.cache_budget).spill_to(&opts.cache_dir, opts.cache_disk));
    let prep = opts.prep.preprocess(session.sample_shape(), data)?;
    if val_data.is_some() {
        val.check(&prep).map_err(|e| err!("{e}"))?;
    }
    // Made before training, so a path that cannot be written fails now, not after an epoch.
    if let Some(dir) = save
        .and_then(|(_, last)| last.parent())
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            err!(
                "--save {}: cannot create {}: {e}",
                save.map(|(_, l)| l.display().to_string())
                    .unwrap_or_default(),
                dir.display()
            )
        })?;
    }
    let mut log = match &opts.log {
        // A resumed run adds to its log: the steps redone since the checkpoint appear twice.
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(opts.resume)
                .truncate(!opts.resume)
                .open(p)
                .map_err(|e| err!("{}: cannot write: {e}", p.display()))?,
        ),
        None => None,
    };
    match resumed {
        Some(last) => eprintln!(
            "resuming {name} from {} at epoch {}, step {} of {steps_per_epoch}",
            last.display(),
            progress.epochs_done + 1,
            progress.steps_done
        ),
        None => eprintln!(
            "training {name} on {} ({} train / {} val samples, batch {batch}, {steps_per_epoch} steps per epoch, {} epochs)",
            data,
            train_rows.len(),
            val_rows.len(),
            opts.epochs
        ),
    }
    let bar = if opts.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(steps_per_epoch as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut best = progress.best;
    let mut kept: Option<Vec<(String, Vec<f32>)>> = None;
    let max_loss = opts.max_loss;
    let last_good = match save {
        Some((_, last)) => format!("; the last good weights are in {}", last.display()),
        None => String::new(),
    };
    let written = |r: std::io::Result<()>, what: &Path| {
        r.map_err(|e| format!("{}: cannot write: {e}", what.display()))
    };
    let spec = TrainRun {
        train: Rows {
            data,
            rows: train_rows,
        },
        val: Rows {
            data: val,
            rows: val_rows,
        },
        prep: &prep,
        epochs: opts.epochs,
        seed: opts.seed,
        checkpoint_every: opts.checkpoint_every,
    };
    session
        .train(&spec, progress, |event| match event {
            Event::Step { epoch, step, loss, score, samples_per_s, lr, .. } => {
                if bar.position() == 0 || step == 1 {
                    bar.reset();
                    bar.set_prefix(format!("{epoch}/{}", opts.epochs));
                }
                bar.set_position(step as u64);
                let score = match regression { true => format!("mae {score:.3}"), false => format!("acc {score:.3}") };
                bar.set_message(format!("loss {loss:.4} {score} {samples_per_s:.0} samples/s"));
                if let (Some(f), Some(p)) = (log.as_mut(), &opts.log) {
                    let record = json!({"event": "step", "epoch": epoch, "step": step, "loss": loss, "lr": lr});
                    written(writeln!(f, "{record}"), p)?;
                }
                if loss > max_loss {
                    bar.finish_and_clear();
                    return Err(format!(
                        "the loss reached {loss:.4e} at epoch {epoch}, step {step}, past --max-loss {max_loss}: training diverges; lower --lr (now {lr:e}){last_good}"
                    ));
                }
                Ok(())
            }
            Event::Epoch { epoch, train, val, seconds, improved, session } => {
                bar.finish_and_clear();
                let val_text = match val_rows.is_empty() {
                    true => String::new(),
                    false => format!(" | val {}", metrics_text(&val)),
                };
                eprintln!("epoch {epoch}: train {}{val_text} | {seconds:.1} s", metrics_text(&train));
                let cache = session.cache();
                let (hits, misses) = (cache.hits, cache.misses);
                let (cached, on_disk) = (cache.bytes(), cache.disk_bytes());
                (cache.hits, cache.misses) = (0, 0);
                if let Some(why) = cache.take_spill_failure() {
                    eprintln!("  warning: {why}");
                }
                if cache.enabled() {
                    let disk = if on_disk > 0 { format!(" in memory, {} on disk", human(on_disk as u64)) } else { String::new() };
                    eprintln!(
                        "  prefix: {hits} samples from the cache, {misses} computed; cache holds {}{disk}",
                        human(cached as u64)
                    );
                }
                let compression = compression_report(session.executor());
                if let Some((text, _)) = &compression {
                    eprintln!("{text}");
                }
                if let (Some(f), Some(p)) = (log.as_mut(), &opts.log) {
                    let mut record = json!({"event": "epoch", "epoch": epoch, "train": metrics_json(&train), "val": metrics_json(&val), "seconds": seconds, "prefix": {"cached_samples": hits, "computed_samples": misses, "cache_bytes": cached, "cache_disk_bytes": on_disk}});
                    if let Some((_, c)) = compression {
                        record["compression"] = c;
                    }
                    written(writeln!(f, "{record}").and_then(|_| f.flush()), p)?;
                }
                // A checkpoint that cannot be written stops the run now, not after the
                // last epoch.
                if improved {
                    if !val_rows.is_empty() {
                        best = Some(val.score());
                    }
                    if opts.keep_best {
                        let weights = session.executor().trainable();
                        kept = Some(weights.map(|(n, _, v)| (n.to_owned(), v.to_vec())).collect());
                    }
                    if let Some((best_path, _)) = save {
                        save_plan(session.executor(), None, best_path)?;
                    }
                }
                Ok(())
            }
            Event::Checkpoint { progress, session } => match save {
                Some((_, last_path)) => save_plan(session.executor(), Some(progress), last_path),
                None => Ok(()),
            },
        })
        .map_err(|e| err!("{name}: {e}"))?;
    for (name, values) in kept.unwrap_or_default() {
        if let Some(w) = session.executor().trainable_mut(&name) {
            w.copy_from_slice(&values);
        }
    }
    match (best, save) {
        (Some(best), Some((best_path, last_path))) => eprintln!(
            "{}: weights in {} (last epoch: {})",
            best_text(best, regression),
            best_path.display(),
            last_path.display()
        ),
        (Some(best), None) => eprintln!("{}", best_text(best, regression)),
        (None, Some((best_path, last_path))) if !val_rows.is_empty() => eprintln!(
            "the run had already ended; its weights are in {} (best: {})",
            last_path.display(),
            best_path.display()
        ),
        (None, Some((_, last_path))) => eprintln!(
            "no validation data: the last epoch's weights are in {}",
            last_path.display()
        ),
        (None, None) => {}
    }
    Ok(best)
}

/// What decides a run's result besides the plan: a resumed run must match it.
pub fn run_key(plan_crc: u32, opts: &TrainOptions, data: &RunData) -> Run {
    Run {
        plan_crc,
        seed: opts.seed,
        epochs: opts.epochs as u32,
        data: opts.data.display().to_string(),
        data_crc: data.data.checksum(),
        val: opts
            .val
            .as_ref()
            .map(|v| v.display().to_string())
            .unwrap_or_default(),
        val_crc: data.val.as_ref().map_or(0, Dataset::checksum),
        settings: match opts.val {
            Some(_) => opts.prep.to_string(),
            None => format!("{} --val-fraction {}", opts.prep, opts.val_fraction),
        },
        threads: actc_runtime::threads::threads() as u32,
    }
}

/// The plan to train and where its run stands: the plan at its start, or with `--resume`
/// the checkpoint at `last` in its place (the same plan, holding the run's weights,
/// optimizer state and progress). The flag says which.
fn start_or_resume(
    plan_path: &Path,
    last: &Path,
    run: Run,
    resume: bool,
) -> Result<(Plan, PlanFile, Progress, bool)> {
    let resuming = resume && last.exists();
    if resume && !resuming {
        eprintln!(
            "--resume: no checkpoint at {} yet; starting from the beginning",
            last.display()
        );
    }
    let opened = if resuming { last } else { plan_path };
    let (mut plan, file) = Plan::open(opened).map_err(|e| err!("{}: {e}", opened.display()))?;
    warn_if_int8_is_slow(&plan, opened);
    let progress = match resuming {
        true => resume_point(last, plan.progress.take(), &run)?,
        false => Progress {
            run: Some(run),
            ..Progress::default()
        },
    };
    Ok((plan, file, progress, resuming))
}

/// Where the run saved at `last` stands (`progress`, from that checkpoint), checked against
/// the run asked for now.
fn resume_point(last: &Path, progress: Option<Progress>, run: &Run) -> Result<Progress> {
    let Some(progress) = progress else {
        bail!(
            "--resume {}: not a checkpoint of `actc train` (or one from an actc that could not resume); train again without --resume",
            last.display()
        );
    };
    let was = progress.run.clone().unwrap_or_default();
    let differs = |what: &str, now: String, then: String| {
        err!(
            "--resume {}: {what} differs from the run being resumed ({now} now, {then} then); pass the run's own, or train again without --resume",
            last.display()
        )
    };
    if was.plan_crc != run.plan_crc {
        return Err(differs(
            "the plan",
            format!("CRC {:08x}", run.plan_crc),
            format!("CRC {:08x}", was.plan_crc),
        ));
    }
    let pairs = [
        ("--seed", run.seed.to_string(), was.seed.to_string()),
        ("--epochs", run.epochs.to_string(), was.epochs.to_string()),
        (
            "--data",
            format!("{} (CRC {:08x})", run.data, run.data_crc),
            format!("{} (CRC {:08x})", was.data, was.data_crc),
        ),
        (
            "--val",
            format!("{} (CRC {:08x})", run.val, run.val_crc),
            format!("{} (CRC {:08x})", was.val, was.val_crc),
        ),
        ("preprocessing", run.settings.clone(), was.settings.clone()),
    ];
    for (what, now, then) in pairs {
        // Data is the same data when its contents are, wherever it now lies.
        let same = match what {
            "--data" => run.data_crc == was.data_crc,
            "--val" => run.val_crc == was.val_crc,
            _ => now == then,
        };
        if !same {
            return Err(differs(what, now, then));
        }
    }
    if was.threads != run.threads {
        eprintln!(
            "warning: --resume with {} threads, the run had {}: its results may differ in the last bits from an uninterrupted run",
            run.threads, was.threads
        );
    }
    Ok(progress)
}

pub fn eval(plan_path: &Path, data_path: &Path, prep: &DataOptions, as_json: bool) -> Result<()> {
    let mut session = open_session(plan_path, 1)?;
    let what = reads(session.executor().plan());
    let data = load_data(data_path, prep, &what)?;
    let name = plan_path.display().to_string();
    let m = evaluate(&mut session, &name, &data, data_path, prep)?;
    if as_json {
        println!("{}", metrics_json(&m));
    } else if m.regression {
        println!(
            "{}: {} samples, mse {:.4}, mae {:.4}",
            data_path.display(),
            m.samples,
            m.loss,
            m.mae
        );
    } else {
        println!(
            "{}: {} samples, loss {:.4}, top-1 accuracy {:.4}",
            data_path.display(),
            m.samples,
            m.loss,
            m.accuracy
        );
    }
    Ok(())
}

/// Refuses `data` (read from `path`, called `what` in messages) when the plan does not take
/// its kind of target, or has no class for one of its labels.
fn check_targets(session: &mut Session, data: &Dataset, what: &str, path: &Path) -> Result<()> {
    session.check_data(data).map_err(|e| err!("{e}"))?;
    let classes = session
        .executor()
        .output_shape()
        .last()
        .copied()
        .unwrap_or(0);
    check_labels(classes, data, what, path)
}

/// Loss and top-1 accuracy of `session` (the plan called `name` in messages) on every
/// sample of `data` (read from `path`).
pub fn evaluate(
    session: &mut Session,
    name: &str,
    data: &Dataset,
    path: &Path,
    prep: &DataOptions,
) -> Result<Metrics> {
    check_targets(session, data, "", path)?;
    let p = prep.preprocess(session.sample_shape(), data)?;
    let rows: Vec<usize> = (0..data.len()).collect();
    session
        .evaluate(data, &p, &rows)
        .map_err(|e| err!("{name}: {e}"))
}

/// Writes the fine-tuned model to `out`; its weights go to `out.data` beside it with
/// `external_data`, or when the model would pass protobuf's 2 GiB limit.
pub fn export_onnx(
    plan_path: &Path,
    weights: Option<&Path>,
    out: &Path,
    external_data: bool,
) -> Result<()> {
    let inputs: Vec<&Path> = [plan_path].into_iter().chain(weights).collect();
    check_output(out, &inputs)?;
    let plan = load_plan(plan_path)?;
    let trained = match weights {
        Some(w) => load_plan(w)?,
        None => plan.clone(),
    };
    let model = export(&plan, &trained).map_err(|e| err!("{}: {}", plan_path.display(), e.0))?;
    write_onnx(model, out, &inputs, external_data)?;
    eprintln!("exported {} -> {}", plan_path.display(), out.display());
    Ok(())
}

/// Writes `model` to `out` (never over one of `inputs`); its weights go to `out.data`
/// beside it with `external_data`, or when the model would pass protobuf's 2 GiB limit.
pub fn write_onnx(
    mut model: crate::ModelProto,
    out: &Path,
    inputs: &[&Path],
    external_data: bool,
) -> Result<()> {
    check_output(out, inputs)?;
    if external_data || model.encoded_len() > MAX_INLINE {
        let data = PathBuf::from(format!("{}.data", out.display()));
        check_output(&data, inputs)?;
        let location = data.file_name().expect("a file name").to_string_lossy();
        let blob = externalize(&mut model, &location);
        if model.encoded_len() > MAX_INLINE {
            bail!(
                "{}: the model's graph passes protobuf's 2 GiB limit even with its weights in {}",
                out.display(),
                data.display()
            );
        }
        // The data first: a model never names a file that is not there yet.
        write_atomically(&data, &blob)?;
        eprintln!(
            "weights ({}) -> {}",
            human(blob.len() as u64),
            data.display()
        );
    }
    write_atomically(out, &model.encode_to_vec())
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Training steps of a plan timed on synthetic data (the prefix included, as in training
/// without a cache): each step's whole and trainable-suffix milliseconds, sorted, and the
/// session (for its plan and, with `per_step`, each plan step's summed seconds).
pub fn time_steps(
    plan_path: &Path,
    steps: usize,
    warmup: usize,
    mut per_step: Option<&mut Vec<f64>>,
) -> Result<(Vec<f64>, Vec<f64>, Session)> {
    let mut session = open_session(plan_path, (steps + warmup) as u64)?;
    // Synthetic samples: windows of one pool of noise at scattered offsets, distinct (as
    // compression should see them) yet only copied each step, as a real batch's would be.
    let per: usize = session.sample_shape().iter().product();
    let pool = seeded_noise(2 * per);
    let sample = |r: usize, dst: &mut [f32]| {
        let at = r * 7919 % per;
        dst.copy_from_slice(&pool[at..][..per]);
    };
    let (mut total, mut suffix) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
    if let Some(p) = per_step.as_deref_mut() {
        *p = vec![0.0; session.executor().plan().steps.len()];
    }
    // A plan that freezes factors in turns of an epoch takes them step by step here: the
    // median then covers every turn.
    session.executor().set_epoch_steps(1);
    for i in 0..warmup + steps {
        let start = std::time::Instant::now();
        let profiled = i >= warmup;
        let timed = per_step.as_deref_mut().filter(|_| profiled);
        session
            .feed(
                &sample,
                |r| (r % 10) as u32,
                timed.map(|p| p.as_mut_slice()),
            )
            .map_err(|e| err!("{e}"))?;
        let fed = start.elapsed();
        match per_step.as_deref_mut().filter(|_| profiled) {
            Some(p) => session.executor().train_step_timed(p),
            None => session.executor().train_step(),
        };
        let all = start.elapsed();
        if i >= warmup {
            total.push(all.as_secs_f64() * 1e3);
            suffix.push((all - fed).as_secs_f64() * 1e3);
        }
    }
    total.sort_by(f64::total_cmp);
    suffix.sort_by(f64::total_cmp);
    Ok((total, suffix, session))
}

/// Times training steps of a plan on synthetic data (the prefix included, as in training
/// without a cache), reporting median and spread in ms and the process's peak RSS.
pub fn bench(
    plan_path: &Path,
    steps: usize,
    warmup: usize,
    as_json: bool,
    profile: bool,
) -> Result<()> {
    let mut per_step = Vec::new();
    let (total, suffix, mut session) =
        time_steps(plan_path, steps, warmup, profile.then_some(&mut per_step))?;
    let mem = session.executor().plan().memory.clone().unwrap_or_default();
    let rss = peak_rss().unwrap_or(0);
    let report = json!({
        "plan": plan_path.display().to_string(),
        "steps": steps,
        "step_ms": {"median": percentile(&total, 0.5), "p10": percentile(&total, 0.1), "p90": percentile(&total, 0.9)},
        "suffix_ms": {"median": percentile(&suffix, 0.5), "p10": percentile(&suffix, 0.1), "p90": percentile(&suffix, 0.9)},
        "peak_rss_bytes": rss,
        "planned_bytes": mem.arena + mem.persistent,
        "gemm": actc_runtime::kernels::gemm_isa(),
    });
    let profile_rows = profile.then(|| profile_table(session.executor().plan(), &per_step, steps));
    if as_json {
        let mut report = report;
        if let Some((_, rows)) = profile_rows {
            report["profile"] = rows;
        }
        println!("{report}");
    } else {
        println!(
            "{}: step {:.1} ms (p10 {:.1}, p90 {:.1}), of which trainable suffix {:.1} ms; peak RSS {:.1} MB; planned {:.2} MB; {} GEMM",
            plan_path.display(),
            percentile(&total, 0.5),
            percentile(&total, 0.1),
            percentile(&total, 0.9),
            percentile(&suffix, 0.5),
            rss as f64 / 1e6,
            (mem.arena + mem.persistent) as f64 / 1e6,
            actc_runtime::kernels::gemm_isa()
        );
        if let Some((text, _)) = profile_rows {
            print!("{text}");
        }
    }
    Ok(())
}

/// The plan's time per op kind and its slowest steps (mean ms per training step): the
/// training steps, and the prefix steps when actc runs the prefix.
fn profile_table(plan: &Plan, seconds: &[f64], steps: usize) -> (String, serde_json::Value) {
    let ms = |s: f64| s * 1e3 / steps.max(1) as f64;
    let total: f64 = seconds.iter().sum();
    let op = |i: usize| plan.steps[i].kind().map(crate::op_name).unwrap_or_default();
    let mut by_op: Vec<(String, f64)> = Vec::new();
    for (i, &t) in seconds.iter().enumerate() {
        match by_op.iter_mut().find(|(o, _)| *o == op(i)) {
            Some((_, sum)) => *sum += t,
            None => by_op.push((op(i), t)),
        }
    }
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut order: Vec<usize> = (0..seconds.len()).collect();
    order.sort_by(|&a, &b| seconds[b].total_cmp(&seconds[a]));
    let prefix: f64 = seconds[..plan.prefix_steps as usize].iter().sum();
    let mut text = format!(
        "profile: {:.1} ms per step (frozen prefix on actc {:.1} ms, training {:.1} ms)\n  by op:\n",
        ms(total),
        ms(prefix),
        ms(total - prefix)
    );
    for (o, t) in &by_op {
        text.push_str(&format!(
            "    {:>7.2} ms {:>5.1} %  {o}\n",
            ms(*t),
            100.0 * t / total
        ));
    }
    text.push_str("  slowest steps:\n");
    for &i in order.iter().take(10) {
        text.push_str(&format!(
            "    {:>7.2} ms  {} ({})\n",
            ms(seconds[i]),
            plan.steps[i].name,
            op(i)
        ));
    }
    let json = json!({
        "total_ms": ms(total),
        "prefix_ms": ms(prefix),
        "suffix_ms": ms(total - prefix),
        "by_op_ms": by_op.iter().map(|(o, t)| json!({"op": o, "ms": ms(*t)})).collect::<Vec<_>>(),
        "steps_ms": order.iter().map(|&i| json!({"step": plan.steps[i].name, "op": op(i), "ms": ms(seconds[i])})).collect::<Vec<_>>(),
    });
    (text, json)
}
