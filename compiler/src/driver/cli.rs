//! The `actc` command line: argument parsing and the commands, callable in-process (the
//! tests drive it this way) through [`run_from`].

use crate::driver::data::DataOptions;
use crate::driver::decompose::{self, Calibration};
use crate::driver::distill::Distill;
use crate::driver::fs::{check_output, write_atomically};
use crate::driver::run::{self, TrainOptions};
use crate::driver::text::TextOptions;
use crate::driver::{budget, inspect, plrd};
use crate::{
    CalibrationData, CompileOptions, Compression, DecomposeOptions, DistillMaps, Error, FactorLr,
    HosvdRanks, InputShape, Layers, LowRankRequest, Optimizer, PrefixRunner, RankOptimization,
    RankRule, Result, Rotate, SpeedGoal, bail, compile_file, err,
};
use actc_runtime::data::Layout;
use actc_runtime::ops;
use actc_runtime::plan::{LossKind, Plan, Schedule};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "actc",
    version,
    about = "Memory-frugal on-device fine-tuning: compile an ONNX model's last N layers into a training plan"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Threads for training and evaluation: actc's kernels and the frozen prefix's matrix
    /// products [default: all cores].
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Compile MODEL.onnx into a training plan for its last N layers.
    Compile {
        /// The ONNX model.
        model: PathBuf,
        #[command(flatten)]
        opts: CompileArgs,
        /// Where to write the plan [default: MODEL with extension .actc, in the current folder]
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Also write the training graph as text (one line per step) to this file.
        #[arg(long, value_name = "FILE")]
        dump_ir: Option<PathBuf>,
        /// How --calibration's samples become model inputs (as for train).
        #[command(flatten)]
        prep: PrepArgs,
    },
    /// Rewrite MODEL.onnx's layers as low-rank factors (truncated SVD for Gemm, MatMul and
    /// 1×1 convs, Tucker-2 for k×k convs) and write the result as ONNX.
    Decompose {
        /// The ONNX model.
        model: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Layers to decompose, counted as `compile --layers` counts them: N or all.
        #[arg(long, default_value = "all")]
        layers: Layers,
        /// Keep per weight mode the smallest rank holding this share of the squared singular
        /// values: 0 < E <= 1.
        #[arg(long, conflicts_with_all = ["ratio", "ranks"])]
        energy: Option<f64>,
        /// Ranks whose factors hold this share of each layer's parameters: 0 < R <= 1.
        #[arg(long, conflicts_with = "ranks")]
        ratio: Option<f64>,
        /// `vbmf` (the variational Bayes estimate LRD papers use) or a fixed rank per mode
        /// [default: vbmf, unless --energy or --ratio is given]
        #[arg(long, value_parser = parse_ranks)]
        ranks: Option<RankRule>,
        /// Factor a layer even when the factors cost more than it: to check the rewrite
        /// (with --energy 1 the model's outputs stay the same).
        #[arg(long)]
        even_if_larger: bool,
        /// Factor the model's head too (the layer nearest the output). Kept whole by default:
        /// its rank bounds the span of the outputs (a 10-way classifier at rank 4 has logits
        /// in 4 dimensions), it is a small share of the FLOPs, and a new task's head starts
        /// from weights with no low-rank structure.
        #[arg(long)]
        include_head: bool,
        /// Time each layer's factors alone on actc's kernels at its real shapes, at ranks
        /// around the estimate (multiples of 4 or 8, down to --rank-window below it), and
        /// keep the fastest, or the layer as it is when that measures fastest: `train` times
        /// a training step (forward, backward, update), `infer` a forward pass.
        #[arg(long, value_enum, value_name = "GOAL", num_args = 0..=1, default_missing_value = "train")]
        optimize_ranks: Option<GoalArg>,
        /// How far below the estimated rank --optimize-ranks may go, as a share of it.
        #[arg(long, default_value_t = 0.1, value_name = "SHARE")]
        rank_window: f64,
        #[command(flatten)]
        shape: ShapeArgs,
        /// Data to factor on: 1×1 convs, Gemms and MatMuls are factored to keep their
        /// outputs on it rather than their weights (the SVD of the weight seen through the
        /// second moment of its input, SVD-LLM), and its first (seeded-shuffle) batch
        /// measures the output difference [default: factors of the weights alone; seeded
        /// noise for the difference].
        #[arg(long, value_name = "DATA")]
        calibration: Option<PathBuf>,
        /// Samples of --calibration whose layer inputs the factors keep (and --distill trains on).
        #[arg(long, default_value_t = 256, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        calibration_samples: u32,
        /// Then train every layer of the decomposed model for this many epochs on
        /// --calibration's inputs (a fifth held out, the best epoch kept) to reproduce the
        /// original's features: the map the kept head reads, before pooling (the first
        /// output when the head is factored too), and the --distill-maps, each by its mean
        /// squared error relative to its mean square. The fine-tuning LRD gives a model
        /// after decomposing it, without labels; it matters most when many layers are
        /// factored, as their errors compound.
        #[arg(long, value_name = "EPOCHS")]
        distill: Option<usize>,
        /// --distill's AdamW learning rate (β 0.9/0.999, no weight decay).
        #[arg(long, default_value_t = 0.0003, value_name = "LR")]
        distill_lr: f32,
        /// Which maps --distill reproduces besides the last feature map (their mean squared
        /// errors summed): `auto`, the last of the narrowest maps at each spatial size (a
        /// CNN's stage outputs), so the first layers get a signal of their own; `last`, none;
        /// or tensor names [default: auto].
        #[arg(long, value_name = "auto|last|TENSOR[,TENSOR…]", value_delimiter = ',')]
        distill_maps: Vec<String>,
        #[command(flatten)]
        prep: PrepArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Progressive low-rank decomposition: fine-tune MODEL, then lower it step by step
    /// (decompose at each energy, fine-tune), writing one ONNX model per size and a table of
    /// their parameters, FLOPs, inference and training step times and accuracy.
    Plrd {
        /// The ONNX model.
        model: PathBuf,
        /// The energy of each step, falling, like 0.95,0.9,0.8.
        #[arg(long, value_delimiter = ',', required = true)]
        energies: Vec<f64>,
        /// Fine-tuning epochs of the original and of each size.
        #[arg(long, default_value_t = 1)]
        epochs_per_step: usize,
        /// Folder for the models (`original.onnx`, `energy_E.onnx`, …) and their trained plans.
        #[arg(short, long, default_value = "plrd")]
        output: PathBuf,
        #[command(flatten)]
        data: TrainDataArgs,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
        /// Print the table as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        opts: CompileArgs,
        #[command(flatten)]
        prep: PrepArgs,
    },
    /// Show a plan (or a model, compiled on the fly) as a per-layer table.
    Inspect {
        /// A .actc plan or an .onnx model.
        path: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Options used when PATH is a model (default --layers all).
        #[command(flatten)]
        opts: InspectArgs,
    },
    /// Fine-tune a compiled plan on a dataset; saves PLAN.best.actc and PLAN.last.actc.
    Train {
        /// A plan made by `actc compile`.
        plan: PathBuf,
        #[command(flatten)]
        args: TrainArgs,
    },
    /// Loss and top-1 accuracy of a plan (or a trained one) on a dataset.
    Eval {
        plan: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        prep: PrepArgs,
    },
    /// Time training steps of a plan on synthetic data (median, spread, peak RSS).
    Bench {
        plan: PathBuf,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[arg(long)]
        json: bool,
        /// Also time every step of the trainable part: totals per op and the slowest steps.
        #[arg(long)]
        profile: bool,
    },
    /// Write the model back to ONNX with the fine-tuned weights.
    Export {
        /// The compiled plan.
        plan: PathBuf,
        /// The trained weights (a plan saved by `actc train`) [default: PLAN's own]
        #[arg(long)]
        weights: Option<PathBuf>,
        #[arg(short, long)]
        output: PathBuf,
        /// Write the weights to OUTPUT.data beside the model, as ONNX external data (always
        /// done for a model past protobuf's 2 GiB limit) [default: inside the model]
        #[arg(long)]
        external_data: bool,
    },
}

#[derive(Args)]
struct PrepArgs {
    /// Layout of 4-D arrays in .npz data [default: detected]
    #[arg(long, value_parser = parse_layout)]
    layout: Option<Layout>,
    /// Multiply raw values by this [default: 1/255 for 8-bit data, 1 for float data]
    #[arg(long)]
    scale: Option<f32>,
    /// Per-channel mean subtracted after scaling [default: ImageNet's for 3-channel inputs]
    #[arg(long, value_parser = parse_floats)]
    mean: Option<Floats>,
    /// Per-channel standard deviation [default: ImageNet's for 3-channel inputs]
    #[arg(long, value_parser = parse_floats)]
    std: Option<Floats>,
    /// For text in a CSV (--data train.csv): the model's tokenizer, a Hugging Face
    /// tokenizer.json or a BERT vocab.txt; texts are truncated and padded to the compiled
    /// sequence length
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
    /// The CSV column holding the text
    #[arg(
        long,
        value_name = "NAME",
        default_value = "text",
        requires = "tokenizer"
    )]
    text_column: String,
    /// The CSV column holding the class index
    #[arg(
        long,
        value_name = "NAME",
        default_value = "label",
        requires = "tokenizer"
    )]
    label_column: String,
}

#[derive(Clone, Debug)]
struct Floats(Vec<f32>);

fn parse_floats(s: &str) -> std::result::Result<Floats, String> {
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<f32>()
                .map_err(|_| format!("'{s}' is not a list of numbers; write it like 0.5,0.5,0.5"))
        })
        .collect::<std::result::Result<_, _>>()
        .map(Floats)
}

fn parse_ranks(s: &str) -> std::result::Result<RankRule, String> {
    match s {
        "vbmf" => Ok(RankRule::Vbmf),
        _ => match s.parse::<usize>() {
            Ok(0) | Err(_) => Err(format!("`{s}`: give vbmf or a rank of at least 1")),
            Ok(r) => Ok(RankRule::Fixed(r)),
        },
    }
}

fn parse_layout(s: &str) -> std::result::Result<Layout, String> {
    s.parse::<Layout>().map_err(|e| e.to_string())
}

impl PrepArgs {
    fn options(&self) -> DataOptions {
        DataOptions {
            layout: self.layout,
            scale: self.scale,
            mean: self.mean.clone().map(|f| f.0),
            std: self.std.clone().map(|f| f.0),
            text: self.tokenizer.clone().map(|tokenizer| TextOptions {
                tokenizer,
                text_column: self.text_column.clone(),
                label_column: self.label_column.clone(),
            }),
        }
    }
}

#[derive(Args)]
struct InspectArgs {
    /// Layers to train when PATH is a model.
    #[arg(long, default_value = "all")]
    layers: Layers,
    #[command(flatten)]
    shape: ShapeArgs,
}

#[derive(Args, Clone)]
struct ShapeArgs {
    /// Fix the whole input shape, e.g. 8x3x224x224.
    #[arg(long, value_parser = parse_shape, conflicts_with = "batch")]
    input_shape: Option<Dims>,
    /// Fix only the batch size; the other dimensions come from the model [default: 8 where
    /// the model leaves the batch symbolic]
    #[arg(long)]
    batch: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LossArg {
    CrossEntropy,
    Mse,
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimArg {
    Sgd,
    Adamw,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScheduleArg {
    Constant,
    Cosine,
    LinearWarmup,
}

/// `train`'s flags.
#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    data: TrainDataArgs,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Write a JSON line per step and per epoch to this file.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Save as SAVE.best.actc and SAVE.last.actc [default: next to PLAN]
    #[arg(long, value_name = "STEM")]
    save: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// Stop when a step's loss passes this: the run diverges (cross-entropy above 100
    /// means a probability below e^-100 on the right class)
    #[arg(long, value_name = "LOSS", default_value_t = 100.0)]
    max_loss: f32,
    /// Memory for the frozen prefix's outputs, kept per sample after the first epoch so
    /// later epochs run only the trainable part: bytes, with an optional K, M or G suffix.
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
    cache_budget: usize,
    /// Disk for the prefix cache's samples beyond --cache-budget (a file in --cache-dir,
    /// deleted as soon as it is made, so nothing is left behind); 0: none.
    #[arg(long, value_name = "SIZE", default_value = "4G", value_parser = parse_size)]
    cache_disk: usize,
    /// Folder for that file [default: the system's temporary folder; where that is a
    /// RAM-backed tmpfs, point this at real storage].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Run the frozen prefix on every batch of every epoch.
    #[arg(long)]
    no_cache: bool,
    /// Go on from the run's last checkpoint (SAVE.last.actc) with the same flags: its
    /// weights, optimizer state, epoch and step, so the result is the uninterrupted
    /// run's, bit for bit (with the same --threads). No checkpoint yet: start afresh.
    #[arg(long)]
    resume: bool,
    /// Also save SAVE.last.actc every N steps within an epoch [default: at each epoch's
    /// end only]
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<usize>,
    #[command(flatten)]
    prep: PrepArgs,
}

impl TrainArgs {
    fn options(self) -> Result<TrainOptions> {
        if self.epochs == 0 {
            return Err(err!("--epochs must be at least 1"));
        }
        if self.checkpoint_every == Some(0) {
            return Err(err!("--checkpoint-every must be at least 1 step"));
        }
        let cache = |bytes| if self.no_cache { 0 } else { bytes };
        Ok(TrainOptions {
            data: self.data.data,
            val: self.data.val,
            val_fraction: self.data.val_fraction,
            epochs: self.epochs,
            seed: self.data.seed,
            log: self.log,
            save: self.save,
            quiet: self.quiet,
            cache_budget: cache(self.cache_budget),
            cache_disk: cache(self.cache_disk),
            cache_dir: self.cache_dir.unwrap_or_else(std::env::temp_dir),
            prep: self.prep.options(),
            max_loss: self.max_loss,
            resume: self.resume,
            checkpoint_every: self.checkpoint_every.unwrap_or(0),
            keep_best: false,
        })
    }
}

/// The training data and the validation data (train, plrd).
#[derive(Args)]
struct TrainDataArgs {
    /// Training data: a folder of IDX files, an IDX images file, an .npz (x, y), or a
    /// folder of images with one sub-folder per class.
    #[arg(long)]
    data: PathBuf,
    /// Validation data [default: a held-out part of --data].
    #[arg(long)]
    val: Option<PathBuf>,
    /// Fraction of --data held out for validation when --val is not given.
    #[arg(long, default_value_t = 0.2)]
    val_fraction: f64,
    /// Seed of the shuffling and of the held-out split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum GoalArg {
    Train,
    Infer,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrefixArg {
    Auto,
    Actc,
    Tract,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    F32,
    /// int8 weights (per output channel) and inputs (per pixel) in the frozen prefix's convs
    /// of one group; depthwise convs and a stem over RGB stay f32
    Int8,
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressArg {
    None,
    Hosvd,
    Svd,
    Gradfilter,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum RankRuleArg {
    /// Fixed ranks (batch 8, channels --max-rank, 4 per spatial axis) for conv inputs with
    /// a spatial extent; `centered` for 1×1 maps and dense layers.
    Auto,
    /// The paper's: per mode, the smallest rank whose singular values reach --eps of the
    /// activation's energy.
    Eps,
    /// The per-channel (per-feature) mean kept exactly, the ε rule on the residual.
    Centered,
}

#[derive(Clone, Copy, ValueEnum)]
enum RecomputeArg {
    Attention,
}

#[derive(Args)]
struct CompileArgs {
    /// Train the last N layers (Conv nodes; Gemm/MatMul with a constant weight in models
    /// without convs and in transformers), or `all`.
    #[arg(long, required_unless_present = "blocks", conflicts_with = "blocks")]
    layers: Option<Layers>,
    /// Train the last N transformer blocks whole (found from the residual Adds, two per
    /// block), with every parameterized op after them: what a transformer user means.
    #[arg(long, value_name = "N")]
    blocks: Option<usize>,
    #[command(flatten)]
    shape: ShapeArgs,
    /// The model output to train on [default: the first]; with --loss mse, several
    /// (`a,b`, or the flag again): the loss sums their mean squared errors.
    #[arg(
        long = "train-output",
        value_name = "NAME[,NAME…]",
        value_delimiter = ','
    )]
    train_output: Vec<String>,
    #[arg(long, value_enum, default_value = "cross-entropy")]
    loss: LossArg,
    /// With --loss mse: each trained output's weight in the sum, in --train-output's
    /// order [default: 1 each].
    #[arg(long = "loss-weights", value_name = "W[,W…]", value_delimiter = ',')]
    loss_weights: Vec<f32>,
    #[arg(long, value_enum, default_value = "sgd")]
    optimizer: OptimArg,
    #[arg(long, default_value_t = 0.01)]
    lr: f32,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    momentum: f32,
    /// SGD dampening.
    #[arg(long, default_value_t = 0.0)]
    dampening: f32,
    /// SGD Nesterov momentum (needs --momentum > 0).
    #[arg(long)]
    nesterov: bool,
    /// L2 weight decay (SGD) or decoupled weight decay (AdamW) [default: 0 for SGD, 0.01 for AdamW]
    #[arg(long)]
    weight_decay: Option<f32>,
    #[arg(long, default_value_t = 0.9)]
    beta1: f32,
    #[arg(long, default_value_t = 0.999)]
    beta2: f32,
    #[arg(long, default_value_t = 1e-8)]
    adam_eps: f32,
    /// Learning-rate schedule over the training steps.
    #[arg(long, value_enum, default_value = "constant")]
    schedule: ScheduleArg,
    /// Steps of linear warm-up (with --schedule linear-warmup).
    #[arg(long, default_value_t = 0)]
    warmup_steps: u32,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    clip_grad_norm: Option<f32>,
    /// How the trained layers' saved inputs are stored for the backward pass: as they are,
    /// or compressed (HOSVD is the paper's method; SVD and gradient filtering its baselines).
    #[arg(long, value_enum, default_value = "none")]
    compress: CompressArg,
    /// Energy share the kept singular vectors reach, per mode (hosvd, svd): 0 < eps <= 1
    /// [default: 0.95 for HOSVD's `auto` and `centered` rules, 0.8 (the paper's) otherwise]
    #[arg(long)]
    eps: Option<f32>,
    /// How HOSVD chooses its ranks: `eps` is the paper's rule on the activation itself,
    /// which loses 12–58 accuracy points on short fine-tunes (PAPER_EXPERIMENT.md);
    /// `centered` keeps each channel's (feature's) mean exactly and applies the ε rule to
    /// the residual; `auto` fixes the ranks of conv inputs with a spatial extent and
    /// centers the rest [default: auto]
    #[arg(long, value_enum)]
    rank_rule: Option<RankRuleArg>,
    /// Rank cap per mode (hosvd, svd): sizes the planned compressed buffers; a batch whose
    /// eps needs more keeps this many and is counted as truncated in the training report.
    #[arg(long, default_value_t = 32)]
    max_rank: u32,
    /// HOSVD with ranks fixed per layer so that the compressed activations (cores and
    /// factors, and the factors kept for the next step's start) take at most this many bytes
    /// (K, M or G suffix): per layer, the ranks whose weight gradient on the --calibration
    /// batch is closest to the exact one.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    budget: Option<usize>,
    /// Data whose first (seeded-shuffle) batch calibrates --budget's ranks: any format
    /// `train --data` takes.
    #[arg(long, value_name = "DATA")]
    calibration: Option<PathBuf>,
    /// Patch size of gradient filtering: 2, 4 or 7.
    #[arg(long, default_value_t = 2)]
    patch: u32,
    /// Who runs the frozen prefix: actc's own kernels, in the planned arena (auto: when
    /// every prefix op has one), or tract.
    #[arg(long, value_enum, default_value = "auto")]
    prefix: PrefixArg,
    /// Samples per run of actc's prefix (a divisor of the batch); each thread runs such
    /// micro-batches at once, in its own copy of the prefix's arena [default: the most
    /// whose activations, in as many copies as there are threads (else fewer), fit in the
    /// arena the training part needs]
    #[arg(long)]
    prefix_batch: Option<usize>,
    /// Arithmetic of the frozen prefix on actc's kernels: `int8` runs its convs of one group
    /// as int8 products (VNNI where the CPU has it), faster and with a quarter of their weight
    /// memory, at a small change in the boundary features (BENCHMARKS.md, session 18)
    #[arg(long, value_enum, default_value = "f32")]
    prefix_precision: PrecisionArg,
    /// Refuse a plan whose planned peak (arena and persistent memory) passes SIZE, e.g.
    /// 512M [default: this machine's memory]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    max_memory: Option<usize>,
    /// Compute what is named again in backward instead of keeping it from forward:
    /// `attention`, each attention's probabilities (batch × heads × tokens², the largest
    /// tensor of a block at long sequences), at the cost of a q·kᵀ and a softmax more.
    #[arg(long, value_enum, value_name = "WHAT")]
    recompute: Option<RecomputeArg>,
    /// Freeze the selected layers and train a rank-R adapter beside each Conv (group 1),
    /// Gemm and MatMul instead (LoRA: W + A·B, B starting at zero); export merges the
    /// adapters into the weights.
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u32).range(1..))]
    lora: Option<u32>,
    /// Sequential freezing of layers `actc decompose` split into factors: one factor of
    /// each trains at a time, the others frozen, in turns of an epoch (`sequential`) or of
    /// K steps (`sequential:K`). A turn skips the frozen factors' weight gradients.
    #[arg(long, value_name = "SCHEDULE")]
    freeze_schedule: Option<Rotate>,
    /// SGD learning rate of the factors of layers `actc decompose` split: `auto` scales
    /// each down by the other factors' magnitudes, so a layer's factors together move it
    /// about as fast as --lr moved the layer (with W = A·B a step on A reaches W amplified
    /// by B's squared singular values); a number is that multiple of --lr for every factor,
    /// 1 the same rate.
    #[arg(long, value_name = "auto|X", default_value = "auto")]
    factor_lr: FactorLr,
}

/// A shape given on the command line, like `8x3x224x224`.
#[derive(Clone, Debug)]
struct Dims(Vec<usize>);

fn parse_shape(s: &str) -> std::result::Result<Dims, String> {
    s.split(['x', 'X', ','])
        .map(|d| {
            d.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{s}' is not a shape; write it like 8x3x224x224"))
        })
        .collect::<std::result::Result<_, _>>()
        .map(Dims)
}

impl ShapeArgs {
    fn input(&self) -> InputShape {
        InputShape {
            shape: self.input_shape.clone().map(|d| d.0),
            batch: self.batch,
        }
    }
}

impl CompileArgs {
    fn compression(&self) -> Result<Compression> {
        let hosvd = matches!(self.compress, CompressArg::Hosvd);
        let ranks = match self.rank_rule {
            Some(_) if !hosvd => return Err(err!("--rank-rule applies to --compress hosvd")),
            None | Some(RankRuleArg::Auto) => HosvdRanks::Auto,
            Some(RankRuleArg::Eps) => HosvdRanks::Eps,
            Some(RankRuleArg::Centered) => HosvdRanks::Centered,
        };
        let eps = match self.eps {
            Some(eps) if !(eps > 0.0 && eps <= 1.0) => {
                return Err(err!("--eps must be in (0, 1], got {eps}"));
            }
            Some(eps) => eps,
            None if hosvd && ranks != HosvdRanks::Eps => 0.95,
            None => 0.8,
        };
        if self.max_rank == 0 {
            return Err(err!("--max-rank must be at least 1"));
        }
        Ok(match self.compress {
            CompressArg::None => Compression::None,
            CompressArg::Hosvd => Compression::Hosvd {
                eps,
                max_rank: self.max_rank,
                ranks,
            },
            CompressArg::Svd => Compression::Svd {
                eps,
                max_rank: self.max_rank,
            },
            CompressArg::Gradfilter if matches!(self.patch, 2 | 4 | 7) => {
                Compression::GradFilter { patch: self.patch }
            }
            CompressArg::Gradfilter => {
                return Err(err!("--patch must be 2, 4 or 7, got {}", self.patch));
            }
        })
    }

    fn options(&self) -> Result<CompileOptions> {
        if self.nesterov && self.momentum <= 0.0 {
            return Err(err!("--nesterov needs --momentum > 0 (as in PyTorch)"));
        }
        if self.lr <= 0.0 || !self.lr.is_finite() {
            return Err(err!("--lr must be a positive number, got {}", self.lr));
        }
        if self.clip_grad_norm.is_some_and(|c| c <= 0.0) {
            return Err(err!("--clip-grad-norm must be positive"));
        }
        let optimizer = match self.optimizer {
            OptimArg::Sgd => Optimizer::Sgd(ops::Sgd {
                momentum: self.momentum,
                dampening: self.dampening,
                nesterov: self.nesterov,
                weight_decay: self.weight_decay.unwrap_or(0.0),
                lr_scale: None,
            }),
            OptimArg::Adamw => Optimizer::AdamW(ops::AdamW {
                beta1: self.beta1,
                beta2: self.beta2,
                epsilon: self.adam_eps,
                weight_decay: self.weight_decay.unwrap_or(0.01),
            }),
        };
        let layers = match (self.layers, self.blocks) {
            (_, Some(0)) => bail!("--blocks 0 trains nothing; give a count of at least 1"),
            (_, Some(b)) => Layers::Blocks(b),
            (Some(l), None) => l,
            (None, None) => bail!("give --layers N or --blocks N"),
        };
        Ok(CompileOptions {
            layers,
            input: self.shape.input(),
            outputs: self.train_output.clone(),
            loss: match self.loss {
                LossArg::CrossEntropy => LossKind::CrossEntropy,
                LossArg::Mse => LossKind::Mse,
            },
            loss_weights: self.loss_weights.clone(),
            optimizer,
            lr: self.lr,
            schedule: match self.schedule {
                ScheduleArg::Constant => Schedule::Constant,
                ScheduleArg::Cosine => Schedule::Cosine,
                ScheduleArg::LinearWarmup => Schedule::LinearWarmup,
            },
            warmup_steps: self.warmup_steps,
            clip_grad_norm: self.clip_grad_norm,
            compression: self.compression()?,
            fixed_ranks: Default::default(),
            prefix: match self.prefix {
                PrefixArg::Auto => PrefixRunner::Auto,
                PrefixArg::Actc => PrefixRunner::Actc,
                PrefixArg::Tract => PrefixRunner::Tract,
            },
            prefix_batch: self.prefix_batch,
            prefix_int8: matches!(self.prefix_precision, PrecisionArg::Int8),
            threads: actc_runtime::threads::threads(),
            keep_gradients: false,
            max_memory: self.max_memory.map(|b| b as u64).or_else(machine_memory),
            lora: self.lora.map(|r| r as usize),
            freeze: self.freeze_schedule,
            factor_lr: self.factor_lr,
            recompute_attention: matches!(self.recompute, Some(RecomputeArg::Attention)),
        })
    }
}

/// This machine's memory (`MemTotal`), where Linux tells it.
fn machine_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// More threads than any device has cores: a typo, not a request.
const MAX_THREADS: usize = 1024;

/// Sets the threads of the kernels' pool and of the frozen prefix's products, for the whole
/// process (the command line's `--threads`, the bindings' setters): 1 to 1024.
pub fn set_threads(n: usize) -> Result<()> {
    if n == 0 || n > MAX_THREADS {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        return Err(err!(
            "{n} threads: give 1 to {MAX_THREADS}, at most the cores you have ({cores} here)"
        ));
    }
    actc_runtime::threads::set_threads(n);
    actc_runtime::prefix::set_threads(n);
    Ok(())
}

/// `512M`, `2G`, `64K` or plain bytes.
fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let (digits, unit) = match s.trim().char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s.trim()[..i], c.to_ascii_uppercase()),
        _ => (s.trim(), 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => return Err(format!("'{s}': the size's unit must be K, M or G")),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 512M)"))?;
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| format!("'{s}' is too large"))
}

fn run(cli: Cli) -> Result<()> {
    if matches!(
        cli.command,
        Command::Compile { .. }
            | Command::Train { .. }
            | Command::Eval { .. }
            | Command::Bench { .. }
            | Command::Decompose { .. }
            | Command::Plrd { .. }
    ) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        set_threads(cli.threads.unwrap_or(cores)).map_err(|Error(e)| err!("--threads {e}"))?;
    }
    match cli.command {
        Command::Compile {
            model,
            opts,
            output,
            dump_ir,
            prep,
        } => {
            let out = output.unwrap_or_else(|| {
                let stem = model
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into());
                PathBuf::from(format!("{stem}.actc"))
            });
            let mut inputs = vec![model.as_path()];
            inputs.extend(opts.calibration.as_deref());
            check_output(&out, &inputs)?;
            if let Some(ir) = &dump_ir {
                check_output(ir, &[&model, &out])?;
            }
            let start = std::time::Instant::now();
            let compiled = compile_model(&model, &opts, &prep)?;
            if let Some(ir) = dump_ir {
                write_atomically(&ir, compiled.ir.as_bytes())?;
            }
            write_atomically(&out, &compiled.plan.to_bytes())?;
            let mem = compiled.plan.memory.clone().unwrap_or_default();
            // A decomposed layer's factors count as the one layer.
            let layers = compiled
                .plan
                .layers
                .iter()
                .filter(|l| l.from_output > 0)
                .map(|l| l.from_output)
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            let others = compiled
                .plan
                .layers
                .iter()
                .filter(|l| l.from_output == 0)
                .count();
            let prefix = match compiled.prefix_batch {
                Some(_) => format!(
                    "; frozen prefix on actc{}, {}, arena {:.2} MB",
                    if compiled.plan.has_int8() {
                        " in int8"
                    } else {
                        ""
                    },
                    compiled.plan.prefix_runs(),
                    mem.prefix_arena as f64 / 1e6
                ),
                None => String::new(),
            };
            eprintln!(
                "compiled {} ({} of {} layers train, with {} more parameterized ops; {} steps) in {:.0} ms: planned peak {:.2} MB (arena {:.2} MB, naive {:.2} MB{prefix}) -> {}",
                model.display(),
                layers,
                compiled.selection.total_layers,
                others,
                compiled.plan.steps.len(),
                start.elapsed().as_secs_f64() * 1e3,
                (mem.arena + mem.persistent) as f64 / 1e6,
                mem.arena as f64 / 1e6,
                mem.naive as f64 / 1e6,
                out.display()
            );
            let scales: Vec<f32> = compiled
                .plan
                .steps
                .iter()
                .filter_map(|s| match s.kind()? {
                    ops::Kind::SgdUpdate(sgd) => sgd.lr_scale,
                    ops::Kind::ConvBackwardWeightSgd(c) => c.sgd.as_ref()?.lr_scale,
                    _ => None,
                })
                .collect();
            if !scales.is_empty() {
                let (lo, hi) = scales
                    .iter()
                    .fold((f32::INFINITY, 0f32), |(lo, hi), &s| (lo.min(s), hi.max(s)));
                eprintln!(
                    "  {} factor weights of decomposed layers train at {lo:.3}–{hi:.3}× --lr (--factor-lr {})",
                    scales.len(),
                    opts.factor_lr
                );
            }
            Ok(())
        }
        Command::Inspect { path, json, opts } => {
            let bytes =
                std::fs::read(&path).map_err(|e| err!("{}: cannot read: {e}", path.display()))?;
            let plan = if bytes.starts_with(actc_runtime::plan::MAGIC) {
                Plan::from_bytes(&bytes).map_err(|e| err!("{}: {e}", path.display()))?
            } else {
                let options = CompileOptions {
                    layers: opts.layers,
                    input: opts.shape.input(),
                    threads: actc_runtime::threads::threads(),
                    ..CompileOptions::default()
                };
                compile_file(&path, &options)?.plan
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&inspect::json(&plan))
                        .expect("JSON values serialize")
                );
            } else {
                print!("{}", inspect::text(&plan));
            }
            Ok(())
        }
        Command::Train { plan, args } => {
            let opts = args.options()?;
            run::train(&plan, &opts).map(|_| ())
        }
        Command::Bench {
            plan,
            steps,
            warmup,
            json,
            profile,
        } => {
            if steps == 0 {
                return Err(err!("--steps must be at least 1"));
            }
            run::bench(&plan, steps, warmup, json, profile)
        }
        Command::Eval {
            plan,
            data,
            json,
            prep,
        } => run::eval(&plan, &data, &prep.options(), json),
        Command::Decompose {
            model,
            output,
            layers,
            energy,
            ratio,
            ranks,
            even_if_larger,
            include_head,
            optimize_ranks,
            rank_window,
            shape,
            calibration,
            calibration_samples,
            distill,
            distill_lr,
            distill_maps,
            prep,
            json,
        } => {
            if distill.is_some() && calibration.is_none() {
                return Err(err!(
                    "--distill trains on --calibration's inputs: give --calibration DATA (images like the model's training data)"
                ));
            }
            if distill.is_none() && !distill_maps.is_empty() {
                return Err(err!(
                    "--distill-maps names maps for --distill to reproduce: give --distill EPOCHS too"
                ));
            }
            if distill == Some(0) || !(distill_lr > 0.0 && distill_lr.is_finite()) {
                return Err(err!(
                    "--distill takes at least 1 epoch and --distill-lr a learning rate above 0 (like --distill 10 --distill-lr 0.0003)"
                ));
            }
            if !(0.0..1.0).contains(&rank_window) {
                return Err(err!(
                    "--rank-window must be in [0, 1) (a share of the estimated rank), got {rank_window}"
                ));
            }
            let optimize = optimize_ranks.map(|goal| RankOptimization {
                goal: match goal {
                    GoalArg::Train => SpeedGoal::Train,
                    GoalArg::Infer => SpeedGoal::Infer,
                },
                window: rank_window,
                rounds: 9,
            });
            let rule = match (energy, ratio, ranks) {
                (Some(e), _, _) if !(e > 0.0 && e <= 1.0) => {
                    return Err(err!("--energy must be in (0, 1], got {e}"));
                }
                (Some(e), _, _) => RankRule::Energy(e),
                (_, Some(r), _) if !(r > 0.0 && r <= 1.0) => {
                    return Err(err!("--ratio must be in (0, 1], got {r}"));
                }
                (_, Some(r), _) => RankRule::Ratio(r),
                (_, _, rule) => rule.unwrap_or(RankRule::Vbmf),
            };
            let prep = prep.options();
            let on_data = calibration.clone().map(|path| {
                let (prep, samples) = (prep.clone(), calibration_samples as usize);
                CalibrationData(std::sync::Arc::new(move |shape: &[usize]| {
                    decompose::data_batches(shape, &path, &prep, samples)
                }))
            });
            let opts = DecomposeOptions {
                layers,
                input: shape.input(),
                outputs: Vec::new(),
                request: LowRankRequest {
                    rule,
                    even_if_larger,
                    optimize,
                    keep: None,
                    on_data: None,
                },
                include_head,
                calibration: on_data,
                distill: distill.is_some(),
                distill_maps: match distill_maps.iter().map(String::as_str).collect::<Vec<_>>()[..]
                {
                    [] | ["auto"] => DistillMaps::Stages,
                    ["last"] => DistillMaps::Named(Vec::new()),
                    _ => DistillMaps::Named(distill_maps),
                },
            };
            let calibration = match &calibration {
                Some(path) => Calibration::Data(path, &prep),
                None => Calibration::Noise,
            };
            let distill = distill.map(|epochs| Distill {
                epochs,
                lr: distill_lr,
                quiet: json,
            });
            decompose::decompose(&model, &output, &opts, calibration, distill.as_ref(), json)
        }
        Command::Plrd {
            model,
            energies,
            epochs_per_step,
            output,
            data,
            quiet,
            json,
            opts,
            prep,
        } => {
            if epochs_per_step == 0 {
                return Err(err!("--epochs-per-step must be at least 1"));
            }
            if opts.budget.is_some() || opts.calibration.is_some() {
                return Err(err!(
                    "plrd does not take --budget or --calibration; compile a size with them afterwards"
                ));
            }
            let compile = opts.options()?;
            let train = TrainOptions {
                data: data.data,
                val: data.val,
                val_fraction: data.val_fraction,
                epochs: epochs_per_step,
                seed: data.seed,
                log: None,
                save: None,
                quiet,
                cache_budget: 512 << 20,
                cache_disk: 0,
                cache_dir: std::env::temp_dir(),
                prep: prep.options(),
                max_loss: 100.0,
                resume: false,
                checkpoint_every: 0,
                keep_best: false,
            };
            let p = plrd::Plrd {
                energies: &energies,
                compile,
                train,
                out_dir: &output,
                as_json: json,
            };
            plrd::plrd(&model, &p)
        }
        Command::Export {
            plan,
            weights,
            output,
            external_data,
        } => run::export_onnx(&plan, weights.as_deref(), &output, external_data),
    }
}

/// `compile` without its output: the options, then `--budget`'s calibration when asked.
fn compile_model(
    model: &std::path::Path,
    opts: &CompileArgs,
    prep: &PrepArgs,
) -> Result<crate::Compiled> {
    let mut options = opts.options()?;
    match (opts.budget, &opts.calibration) {
        (Some(budget), Some(data)) => {
            let choices = budget::calibrate(model, &options, budget, data, &prep.options())?;
            eprint!("{}", budget::report(&choices, budget));
            options.fixed_ranks = budget::fixed_ranks(&choices);
        }
        (Some(_), None) => {
            return Err(err!(
                "--budget needs --calibration DATA: a batch of training data to choose the ranks on"
            ));
        }
        (None, Some(_)) => {
            return Err(err!("--calibration is only read with --budget SIZE"));
        }
        (None, None) => {}
    }
    compile_file(model, &options)
}

/// The command `args` (the program name first) names, parsed as the command line parses
/// it, for the bindings: the message of a rejected flag is the CLI's first line, without
/// its `error: `.
fn parse_for_binding(args: &[String]) -> std::result::Result<Cli, String> {
    Cli::try_parse_from(args).map_err(|e| {
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or_default();
        first.strip_prefix("error: ").unwrap_or(first).to_string()
    })
}

/// `actc compile MODEL FLAGS…` (`args`, the program name first) in process, for the
/// bindings: the plan it would write, as the bytes of a plan file.
pub fn compile_in_process(args: &[String]) -> std::result::Result<Vec<u8>, String> {
    let cli = parse_for_binding(args)?;
    let Command::Compile {
        model, opts, prep, ..
    } = cli.command
    else {
        return Err("expected `actc compile` flags".into());
    };
    compile_model(&model, &opts, &prep)
        .map(|c| c.plan.to_bytes())
        .map_err(|Error(msg)| one_line(&msg))
}

/// What `actc train PLAN FLAGS…` (`args`, the program name first) would train with, for
/// the bindings' `fit` (the plan is theirs).
pub fn train_options_in_process(args: &[String]) -> std::result::Result<TrainOptions, String> {
    let cli = parse_for_binding(args)?;
    let Command::Train { args, .. } = cli.command else {
        return Err("expected `actc train` flags".into());
    };
    args.options().map_err(|Error(msg)| one_line(&msg))
}

/// The data and its preprocessing that `actc eval PLAN FLAGS…` (`args`, the program name
/// first) would read, for the bindings' `evaluate` (the plan is theirs).
pub fn eval_options_in_process(
    args: &[String],
) -> std::result::Result<(PathBuf, DataOptions), String> {
    let cli = parse_for_binding(args)?;
    let Command::Eval { data, prep, .. } = cli.command else {
        return Err("expected `actc eval` flags".into());
    };
    Ok((data, prep.options()))
}

/// Exit code for every rejected input (bad flags, bad files, models actc cannot train).
pub const EXIT_BAD_INPUT: u8 = 2;

/// Parses `args` (the first is the program name) and runs the command. On failure, the
/// exit code and the one-line message for stderr (clap's usage text for flag errors).
pub fn run_from<I, T>(args: I) -> std::result::Result<(), (u8, String)>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return Ok(());
        }
        // clap's first line names the flag and the problem; the rest is usage boilerplate.
        Err(e) => {
            let text = e.render().to_string();
            return Err((
                e.exit_code() as u8,
                text.lines().next().unwrap_or_default().to_string(),
            ));
        }
    };
    run(cli).map_err(|Error(msg)| (EXIT_BAD_INPUT, format!("error: {}", one_line(&msg))))
}

/// A message as one line of plain text: names from a model may hold newlines (which would
/// forge a second `error:` line) or terminal escapes; control characters are escaped.
fn one_line(msg: &str) -> String {
    msg.trim_end()
        .chars()
        .flat_map(|c| match c.is_control() {
            true => c.escape_default().collect::<Vec<_>>(),
            false => vec![c],
        })
        .collect()
}

pub fn main() -> ExitCode {
    match run_from(std::env::args_os()) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("{}", msg.trim_end());
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("5X").unwrap_err().contains("K, M or G"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
