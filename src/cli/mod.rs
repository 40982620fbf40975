//! The `liger` command line, one module per subcommand: `losses`, `run`, `ir`, `cache`,
//! `bench` (`target` resolves the loss a subcommand names).

mod bench;
mod cache;
pub mod heap;
mod ir;
mod losses;
mod run;
mod target;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::Error;

#[derive(Parser)]
#[command(
    name = "liger",
    version,
    about = "Chunked, fused post-training losses: run, inspect, benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the built-in losses (or a loss file's) with their parameters, kinds, defaults,
    /// variants and domains.
    Losses {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// List the losses of this loss file (`.rs`) instead of the built-ins.
        #[arg(long = "loss", value_name = "FILE")]
        loss_file: Option<String>,
    },
    /// Run a loss on tensors from a safetensors file.
    Run {
        /// A built-in loss (see `liger losses`); with `--loss FILE`, the fn of the file to run.
        name: Option<String>,
        /// A loss file: `#[chunked_loss]` fns and helper fns, compiled at run time.
        #[arg(long = "loss", value_name = "FILE")]
        loss_file: Option<String>,
        /// The fn of the loss file to run (when it holds several).
        #[arg(long = "fn", value_name = "NAME")]
        func: Option<String>,
        /// Input tensors: `<head>.x`, `<head>.w`, `<head>.b`, `target`, other inputs by name.
        #[arg(long)]
        inputs: String,
        /// Write loss, metrics and gradients here.
        #[arg(long)]
        out: Option<String>,
        /// A hyperparameter, `name=value` (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// A variant, `name=value` (repeatable).
        #[arg(long = "variant", value_name = "NAME=VALUE")]
        variants: Vec<String>,
        /// The device: `cpu`, `cuda`, or `auto` (the GPU when one works, else the CPU).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Dtypes of the gradients: `f32` (default), `bf16` or `f16` for all of them, or per
        /// gradient as `x=bf16,w=f32,b=f32`.
        #[arg(long, default_value = "f32")]
        grad_dtype: String,
        /// Working-memory budget of the chunk loop, e.g. `256MiB`.
        #[arg(long, default_value = "256MiB")]
        chunk_memory: String,
        /// `auto`, or a schedule to force: fused, group-aligned, deferred, two-pass.
        #[arg(long, default_value = "auto")]
        schedule: String,
        /// Target value marking invalid rows.
        #[arg(long, default_value_t = -100, allow_negative_numbers = true)]
        ignore_index: i64,
        /// Time every phase on the device (CUDA) and print the breakdown.
        #[arg(long)]
        profile: bool,
        /// A frozen head (teacher, reference) with a larger vocabulary than the first head's
        /// is used through its first rows, instead of being refused.
        #[arg(long)]
        vocab_prefix: bool,
        /// The gradients of the trained heads to compute and write: a comma-separated list of
        /// `x`, `w`, `b` (`x` with a frozen lm-head weight), or `none` (loss and metrics only).
        #[arg(long, default_value = "x,w,b")]
        grads: String,
        /// Run every row, also those that carry nothing (ignored tokens of a loss whose every
        /// reduction is masked), which are skipped by default.
        #[arg(long)]
        all_rows: bool,
        /// Where `grad W` is accumulated across gradient stages: `f32` (default; a bf16/f16
        /// `grad W` keeps an f32 working copy) or `output` (in its returned dtype, no copy;
        /// CUDA only).
        #[arg(long, default_value = "f32")]
        w_accum: String,
    },
    /// Show the IR stages of a built-in loss or a `.lir` file.
    Ir {
        #[command(subcommand)]
        what: IrCommand,
    },
    /// Benchmark the built-in losses on the GPU against the cuBLAS GEMM floor.
    Bench {
        /// Working-memory budget.
        #[arg(long, default_value = "2GiB")]
        budget: String,
        /// Timed repetitions per case (median reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<String>,
        /// Also run every case once more with device events around each phase and print
        /// where the time goes (not part of the timed runs).
        #[arg(long)]
        profile: bool,
        /// Only the cases whose name contains this text.
        #[arg(long, default_value = "")]
        only: String,
        /// Run every case over `--budgets` and draw time (a ratio to the floor) against peak
        /// memory, one curve per case, with the peers' points of `--peers`.
        #[arg(long)]
        sweep: bool,
        /// The budgets of a sweep.
        #[arg(long, default_value = "256MiB,512MiB,1GiB,2GiB,4GiB")]
        budgets: String,
        /// The peers' points of a sweep (JSON: `{"points": [{"peer", "case", "ms", "peak_gib"}]}`).
        #[arg(long, default_value = "bench/peers-h200.json")]
        peers: String,
        /// Where a sweep writes its SVG.
        #[arg(long, default_value = "sweep.svg")]
        svg: String,
        /// Points of earlier sweeps (their `--json` files) drawn with this one's (repeatable):
        /// a sweep too long for one call is measured in parts and drawn once.
        #[arg(long = "add", value_name = "JSON")]
        add: Vec<String>,
        /// Rows per chunk instead of the planner's choice (measuring plans; a case that
        /// cannot take it is skipped with the reason).
        #[arg(long)]
        chunk_rows: Option<usize>,
        /// Rows per gradient stage, a multiple of `--chunk-rows` (default: one chunk).
        #[arg(long, requires = "chunk_rows")]
        stage_rows: Option<usize>,
    },
    /// Inspect and manage the kernel cache.
    Cache {
        #[command(subcommand)]
        what: CacheCommand,
    },
}

#[derive(clap::Args, Clone)]
pub(crate) struct Target {
    /// A built-in loss (`dpo`), a `.lir` file, or with `--loss FILE` the fn of the file.
    target: Option<String>,
    /// A loss file: `#[chunked_loss]` fns and helper fns, compiled at run time.
    #[arg(long = "loss", value_name = "FILE")]
    loss_file: Option<String>,
    /// The fn of the loss file (when it holds several).
    #[arg(long = "fn", value_name = "NAME")]
    func: Option<String>,
    /// A variant or optional-input presence, `name=value` (e.g. `loss_type=Hinge`, `reference=absent`).
    #[arg(long = "variant", value_name = "NAME=VALUE")]
    variants: Vec<String>,
    /// The schedule (default: the first applicable; `cache warm`: every applicable one).
    #[arg(long)]
    schedule: Option<String>,
    /// GEMM dtype: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
}

#[derive(Subcommand)]
pub(crate) enum IrCommand {
    /// Parse and verify; print the surface IR.
    Check(Target),
    /// The simplified gradient IR.
    Grad(Target),
    /// The schedule: stages, row-locality, group, strategies.
    Schedule(Target),
    /// The generated CUDA C (no GPU needed).
    Emit {
        #[command(flatten)]
        target: Target,
        /// Target arch (recorded in the header; the code is arch-independent).
        #[arg(long, default_value = "sm_90")]
        arch: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum CacheCommand {
    /// The cache root.
    Path,
    /// Every entry.
    Ls {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One entry (a unique key prefix is enough).
    Show {
        /// The key.
        key: String,
        /// Print the surface IR.
        #[arg(long)]
        ir: bool,
        /// Print the gradient IR.
        #[arg(long)]
        grad: bool,
        /// Print the schedule.
        #[arg(long)]
        schedule: bool,
        /// Print the CUDA source.
        #[arg(long)]
        cuda: bool,
        /// Print the PTX (entries compiled to PTX).
        #[arg(long)]
        ptx: bool,
        /// Print meta.json.
        #[arg(long)]
        meta: bool,
    },
    /// Totals.
    Stats {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The key components that differ between two entries.
    Diff {
        /// First key.
        a: String,
        /// Second key.
        b: String,
    },
    /// Remove every entry.
    Clear,
    /// Remove least recently used entries down to a size.
    Prune {
        /// The size to keep, e.g. `1GiB`.
        #[arg(long, default_value = "1GiB")]
        max_size: String,
    },
    /// Compile a loss's kernels into the cache (NVRTC needed, no GPU): exactly the entry a
    /// run of that loss, schedule and GEMM dtype on that arch reads (sizes are kernel
    /// arguments, so one entry serves every shape).
    Warm {
        #[command(flatten)]
        target: Target,
        /// Target arch (`sm_90`: CUBIN; `compute_90`: PTX).
        #[arg(long, default_value = "sm_90")]
        arch: String,
    },
}

/// Runs the command line with the process arguments.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Losses { json, loss_file } => losses::losses(json, loss_file.as_deref()),
        Command::Ir { what } => ir::ir(what),
        Command::Cache { what } => cache::cache(what),
        Command::Bench {
            budget,
            reps,
            json,
            profile,
            only,
            sweep,
            budgets,
            peers,
            svg,
            add,
            chunk_rows,
            stage_rows,
        } => {
            let forced = chunk_rows.map(|chunk| crate::ForcedRows {
                chunk,
                stage: stage_rows,
            });
            if sweep && forced.is_some() {
                Err(Error::BadVariant {
                    param: "--chunk-rows".into(),
                    value: "with --sweep".into(),
                    allowed: "a single-budget bench (a sweep lets the planner choose)".into(),
                })
            } else if sweep {
                bench::sweep(&budgets, reps, json.as_deref(), &peers, &svg, &only, &add)
            } else {
                bench::bench(&budget, reps, json.as_deref(), profile, &only, forced)
            }
        }
        Command::Run {
            name,
            loss_file,
            func,
            inputs,
            out,
            params,
            variants,
            device,
            chunk_memory,
            schedule,
            ignore_index,
            grad_dtype,
            profile,
            vocab_prefix,
            grads,
            all_rows,
            w_accum,
        } => target::resolve(name.as_deref(), loss_file.as_deref(), func.as_deref()).and_then(
            |loss| {
                run::run(
                    loss,
                    &inputs,
                    out.as_deref(),
                    &params,
                    &variants,
                    &device,
                    &chunk_memory,
                    &schedule,
                    ignore_index,
                    &grad_dtype,
                    profile,
                    vocab_prefix,
                    &grads,
                    all_rows,
                    &w_accum,
                )
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The library's budget errors name `RunOptions`; here the flags say it.
        Err(Error::Runtime(crate::runtime::Error::Budget { budget, needed })) => {
            eprintln!(
                "error: a memory budget of {budget} bytes is too small: the smallest chunk needs {needed} bytes; raise --chunk-memory"
            );
            ExitCode::from(1)
        }
        Err(Error::Runtime(crate::runtime::Error::GradBudget {
            budget,
            needed,
            copies,
        })) => {
            eprintln!(
                "error: gradients returned in bf16/f16 keep an f32 working copy of {copies} bytes during the run, and with it the smallest chunk needs {needed} bytes, more than the budget of {budget}; raise --chunk-memory or use --grad-dtype f32"
            );
            ExitCode::from(1)
        }
        Err(Error::Runtime(crate::runtime::Error::HeadVocab {
            head,
            got,
            v,
            trainable: false,
        })) => {
            eprintln!(
                "error: head `{head}` has a vocabulary of {got} rows, the loss's vocabulary (its first head's) has {v}; pass --vocab-prefix to use its first rows (its tokens beyond them are dropped), or give heads of one vocabulary"
            );
            ExitCode::from(1)
        }
        // A loss file's errors are rendered reports, each with its own `error:` line.
        Err(Error::LossSource(e)) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Writes to stdout, ignoring a closed pipe (`liger losses | head`).
pub(crate) fn out(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

pub(crate) fn split_kv(s: &str) -> Result<(&str, &str), Error> {
    s.split_once('=').ok_or_else(|| Error::BadValue {
        param: s.into(),
        value: "(expected NAME=VALUE)".into(),
    })
}
