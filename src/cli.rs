//! The `liger` command line: `liger losses` and `liger run`.
//!
//! `liger run <loss> --inputs in.safetensors` reads tensors named after the loss's parameters
//! (a head `p`: `p.x [S,T,H]`, `p.w [V,H]`, optional `p.b [V]`; `target [S,T]` as i32/i64;
//! other inputs by their name at their level's shape), runs the loss on the chosen device and
//! prints a summary; `--out` writes `loss`, `metric.<name>`, `grad.<p>.x|w|b` (f32).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use crate::io::{self, OwnedTensor};
use crate::loss::{ChunkedLoss, ParamKind};
use crate::{Error, Head, InputSet, ParamSet, RunOptions, Runtime, Strategy};

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
    /// List the built-in losses with their parameters, kinds, defaults and variants.
    Losses {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a loss on tensors from a safetensors file.
    Run {
        /// The loss (see `liger losses`).
        loss: String,
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
    },
    /// Inspect and manage the kernel cache.
    Cache {
        #[command(subcommand)]
        what: CacheCommand,
    },
}

#[derive(clap::Args, Clone)]
struct Target {
    /// A built-in loss (`dpo`) or a `.lir` file.
    target: String,
    /// A variant or optional-input presence, `name=value` (e.g. `loss_type=Hinge`, `reference=absent`).
    #[arg(long = "variant", value_name = "NAME=VALUE")]
    variants: Vec<String>,
    /// The schedule to emit (default: the first applicable).
    #[arg(long)]
    schedule: Option<String>,
    /// GEMM dtype: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
}

#[derive(Subcommand)]
enum IrCommand {
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
enum CacheCommand {
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
    /// Compile a loss's kernels into the cache (NVRTC needed, no GPU).
    Warm {
        #[command(flatten)]
        target: Target,
        /// Target arch.
        #[arg(long, default_value = "sm_90")]
        arch: String,
        /// Vocabulary size of the key.
        #[arg(long, default_value_t = 128256)]
        vocab: usize,
        /// Hidden size of every head in the key.
        #[arg(long, default_value_t = 4096)]
        hidden: usize,
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
        Command::Losses { json } => losses(json),
        Command::Ir { what } => ir(what),
        Command::Cache { what } => cache(what),
        Command::Bench {
            budget,
            reps,
            json,
            profile,
            only,
        } => bench(&budget, reps, json.as_deref(), profile, &only),
        Command::Run {
            loss,
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
        } => run(
            &loss,
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
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Writes to stdout, ignoring a closed pipe (`liger losses | head`).
fn out(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

fn losses(json: bool) -> Result<(), Error> {
    let all = crate::losses::builtin();
    if json {
        let v: Vec<serde_json::Value> = all
            .iter()
            .map(|l| {
                let params: Vec<serde_json::Value> = l
                    .params()
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "name": p.name,
                            "kind": p.kind.name(),
                            "type": p.type_name,
                            "optional": p.optional,
                            "default": match p.default {
                                crate::DefaultValue::None => serde_json::Value::Null,
                                crate::DefaultValue::Float(x) => serde_json::json!(x),
                                crate::DefaultValue::Bool(b) => serde_json::json!(b),
                                crate::DefaultValue::Variant(s) => serde_json::json!(s),
                            },
                            "choices": p.choices,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": l.name(),
                    "doc": l.doc(),
                    "specializations": l.specializations().len(),
                    "params": params,
                })
            })
            .collect();
        out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        ));
        return Ok(());
    }
    let mut s = String::new();
    for l in all {
        let first = l.doc().lines().next().unwrap_or("");
        s += &format!(
            "{}  ({} specialisations)  {first}\n",
            l.name(),
            l.specializations().len()
        );
        s += &format!(
            "  {:<18} {:<16} {:<10} {:<10} choices\n",
            "parameter", "kind", "optional", "default"
        );
        for p in l.params() {
            s += &format!(
                "  {:<18} {:<16} {:<10} {:<10} {}\n",
                p.name,
                p.kind.name(),
                if p.optional { "yes" } else { "" },
                p.default.to_string(),
                p.choices.join(" | ")
            );
        }
        s += "\n";
    }
    out(&s);
    Ok(())
}

fn split_kv(s: &str) -> Result<(&str, &str), Error> {
    s.split_once('=').ok_or_else(|| Error::BadValue {
        param: s.into(),
        value: "(expected NAME=VALUE)".into(),
    })
}

/// Builds the loss's inputs from the file's tensors, checking every name.
fn build_inputs<'a>(
    loss: &dyn ChunkedLoss,
    path: &str,
    tensors: &'a std::collections::BTreeMap<String, OwnedTensor>,
) -> Result<InputSet<'a>, Error> {
    let mut set = InputSet::new();
    let mut used = std::collections::BTreeSet::new();
    for p in loss.params().iter().filter(|p| p.kind.is_input()) {
        if p.kind.is_head() {
            let (xn, wn, bn) = (
                format!("{}.x", p.name),
                format!("{}.w", p.name),
                format!("{}.b", p.name),
            );
            match (tensors.get(&xn), tensors.get(&wn)) {
                (Some(x), Some(w)) => {
                    let b = match tensors.get(&bn) {
                        Some(b) => {
                            used.insert(bn.clone());
                            Some(b.view()?)
                        }
                        None => None,
                    };
                    used.insert(xn);
                    used.insert(wn);
                    set = set.head(
                        p.name,
                        Head {
                            x: x.view()?,
                            w: w.view()?,
                            b,
                        },
                    );
                }
                (None, None) if p.optional => {}
                (x, _) => {
                    let missing = if x.is_none() { xn } else { wn };
                    return Err(Error::File {
                        path: path.into(),
                        why: format!(
                            "no tensor `{missing}` for head `{}` of `{}`",
                            p.name,
                            loss.name()
                        ),
                    });
                }
            }
        } else if let Some(t) = tensors.get(p.name) {
            used.insert(p.name.to_string());
            set = set.tensor(p.name, t.view()?);
        } else if !p.optional {
            return Err(Error::MissingInput {
                loss: loss.name().into(),
                name: p.name.into(),
                kind: p.kind.name(),
            });
        }
    }
    if let Some(extra) = tensors.keys().find(|k| !used.contains(*k)) {
        let expected: Vec<String> = loss
            .params()
            .iter()
            .filter(|p| p.kind.is_input())
            .map(|p| {
                if p.kind.is_head() {
                    format!("{0}.x, {0}.w, {0}.b", p.name)
                } else {
                    p.name.to_string()
                }
            })
            .collect();
        return Err(Error::File {
            path: path.into(),
            why: format!(
                "tensor `{extra}` is not an input of `{}` (expected: {})",
                loss.name(),
                expected.join(", ")
            ),
        });
    }
    Ok(set)
}

fn peak_rss() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn mib(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

#[allow(clippy::too_many_arguments)]
fn run(
    name: &str,
    inputs: &str,
    out: Option<&str>,
    params: &[String],
    variants: &[String],
    device: &str,
    chunk_memory: &str,
    schedule: &str,
    ignore_index: i64,
    grad_dtype: &str,
    profile: bool,
) -> Result<(), Error> {
    let loss = crate::losses::by_name(name)?;
    let mut ps = ParamSet::new();
    for kv in params {
        let (k, v) = split_kv(kv)?;
        if loss.param(k).is_some_and(|p| p.kind.is_variant()) {
            return Err(Error::ParamKind {
                loss: loss.name().into(),
                name: k.into(),
                kind: "a variant",
                hint: "pass it with --variant",
            });
        }
        ps.set_str(loss, k, v)?;
    }
    for kv in variants {
        let (k, v) = split_kv(kv)?;
        match loss.param(k) {
            Some(p) if p.kind == ParamKind::Hyper => {
                return Err(Error::ParamKind {
                    loss: loss.name().into(),
                    name: k.into(),
                    kind: "a hyperparameter",
                    hint: "pass it with --param",
                });
            }
            _ => ps.set_str(loss, k, v)?,
        }
    }
    ps.resolve(loss)?;
    let runtime = Runtime::for_device(device)?;
    let strategy = match schedule {
        "auto" => None,
        s => Some(Strategy::from_name(s).ok_or_else(|| Error::Schedule {
            schedule: "?",
            why: format!(
                "`{s}` is not a schedule (auto, fused, group-aligned, deferred, two-pass)"
            ),
        })?),
    };
    let opts = RunOptions {
        ignore_index,
        chunk_memory: crate::runtime::plan::parse_bytes(chunk_memory)?,
        schedule: strategy,
        grad_dtypes: crate::GradDTypes::parse(grad_dtype)?,
        profile,
    };
    let tensors = io::read(inputs)?;
    let set = build_inputs(loss, inputs, &tensors)?;

    let start = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bar = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut shown = false;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if start.elapsed() < Duration::from_secs(1) {
                    continue;
                }
                let (d, t) = crate::runtime::progress::get();
                if let Some(frac) = (d * 30).checked_div(t) {
                    let filled = frac.min(30);
                    eprint!(
                        "\r[{}{}] {d}/{t} chunks",
                        "#".repeat(filled),
                        ".".repeat(30 - filled)
                    );
                    shown = true;
                }
            }
            if shown {
                eprintln!();
            }
        })
    };
    let result = crate::run(loss, &runtime, &set, &ps, &opts);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = bar.join();
    let r = result?;

    println!("loss {}: {:.6}", loss.name(), r.loss);
    for m in &r.metrics {
        if m.values.len() == 1 {
            println!("  metric {:<18} {:.6}", m.name, m.values[0]);
        } else {
            let n = m.values.len().max(1) as f32;
            let mean = m.values.iter().sum::<f32>() / n;
            println!(
                "  metric {:<18} [{} values, {}] mean {:.6}",
                m.name,
                m.values.len(),
                m.level,
                mean
            );
        }
    }
    let norm = |x: &crate::GradBuf| {
        x.to_f32()
            .iter()
            .map(|v| f64::from(*v).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    for g in &r.grads {
        print!(
            "  grad {:<10} |dx| {:.6e}  |dW| {:.6e}",
            g.head,
            norm(&g.x),
            norm(&g.w)
        );
        if let Some(b) = &g.b {
            print!("  |db| {:.6e}", norm(b));
        }
        println!();
    }
    let rep = &r.report;
    println!(
        "  schedule {}{} on {}: {} chunks of {} rows; working memory planned {} of {}; time {:.3} s; peak RSS {}",
        rep.strategy,
        if rep.forced { " (forced)" } else { "" },
        rep.device,
        rep.chunks,
        rep.chunk_rows,
        mib(rep.estimate),
        mib(rep.budget),
        rep.seconds,
        peak_rss().map_or("?".into(), mib)
    );
    for w in &rep.warnings {
        println!("  warning: {w}");
    }
    print!("{}", crate::bench::profile_table(&rep.profile));

    if let Some(path) = out {
        let first_head = loss
            .params()
            .iter()
            .find(|p| p.kind.is_head())
            .map(|p| p.name);
        let (s, t) = first_head
            .and_then(|h| tensors.get(&format!("{h}.x")))
            .map_or((0, 0), |x| (x.shape[0], x.shape[1]));
        let owned = |shape: Vec<usize>, g: &crate::GradBuf| io::OwnedTensor {
            shape,
            data: match g {
                crate::GradBuf::F32(x) => io::OwnedData::F32(x.clone()),
                crate::GradBuf::BF16(x) => io::OwnedData::BF16(x.clone()),
                crate::GradBuf::F16(x) => io::OwnedData::F16(x.clone()),
            },
        };
        let mut outs = std::collections::BTreeMap::new();
        outs.insert(
            "loss".to_string(),
            io::OwnedTensor {
                shape: vec![],
                data: io::OwnedData::F32(vec![r.loss]),
            },
        );
        for m in &r.metrics {
            let shape = match m.level {
                liger_ir::Level::Batch => vec![],
                liger_ir::Level::Row => vec![s, t],
                _ => vec![m.values.len()],
            };
            outs.insert(
                format!("metric.{}", m.name),
                io::OwnedTensor {
                    shape,
                    data: io::OwnedData::F32(m.values.clone()),
                },
            );
        }
        for g in &r.grads {
            let xs = tensors
                .get(&format!("{}.x", g.head))
                .map(|x| x.shape.clone())
                .unwrap_or_default();
            let ws = tensors
                .get(&format!("{}.w", g.head))
                .map(|w| w.shape.clone())
                .unwrap_or_default();
            outs.insert(format!("grad.{}.x", g.head), owned(xs, &g.x));
            outs.insert(format!("grad.{}.w", g.head), owned(ws, &g.w));
            if let Some(b) = &g.b {
                outs.insert(format!("grad.{}.b", g.head), owned(vec![b.len()], b));
            }
        }
        io::write(path, &outs)?;
        println!("  wrote {path}");
    }
    Ok(())
}

fn dtype_of(s: &str) -> Result<liger_ir::emit::GemmDType, Error> {
    use liger_ir::emit::GemmDType;
    Ok(match s {
        "bf16" => GemmDType::BF16,
        "f16" => GemmDType::F16,
        "f32" => GemmDType::F32,
        other => {
            return Err(Error::BadValue {
                param: "--dtype".into(),
                value: other.into(),
            });
        }
    })
}

fn strategy_of(s: &Option<String>) -> Result<Option<Strategy>, Error> {
    match s.as_deref() {
        None | Some("auto") => Ok(None),
        Some(x) => Strategy::from_name(x)
            .map(Some)
            .ok_or_else(|| Error::Schedule {
                schedule: "?",
                why: format!("`{x}` is not a schedule (fused, group-aligned, deferred, two-pass)"),
            }),
    }
}

/// The specialisation of a built-in loss the `--variant` flags select (defaults elsewhere;
/// optional inputs present unless `name=absent`).
fn select_spec(
    loss: &dyn ChunkedLoss,
    variants: &[String],
) -> Result<&'static crate::SpecInfo, Error> {
    let mut ps = ParamSet::new();
    let mut presence: Vec<(String, String)> = Vec::new();
    for kv in variants {
        let (k, v) = split_kv(kv)?;
        match loss.param(k) {
            Some(p) if p.kind.is_input() && p.optional => {
                if v != "present" && v != "absent" {
                    return Err(Error::BadVariant {
                        param: k.into(),
                        value: v.into(),
                        allowed: "present, absent".into(),
                    });
                }
                presence.push((k.into(), v.into()));
            }
            _ => ps.set_str(loss, k, v)?,
        }
    }
    let resolved = ps.resolve(loss)?;
    loss.specialization(&resolved, &|n| {
        !presence.iter().any(|(k, v)| k == n && v == "absent")
    })
}

enum Loaded {
    Builtin(&'static dyn ChunkedLoss, &'static crate::SpecInfo),
    File(liger_ir::LossFn),
}

fn load_target(t: &Target) -> Result<Loaded, Error> {
    if t.target.ends_with(".lir") {
        let text = std::fs::read_to_string(&t.target).map_err(|e| Error::File {
            path: t.target.clone(),
            why: e.to_string(),
        })?;
        let (f, map) = liger_ir::text::parse_mapped(&text).map_err(|d| Error::File {
            path: t.target.clone(),
            why: format!(
                "does not parse:\n{}",
                liger_ir::text::render_diagnostics(&text, &Default::default(), &d.0)
            ),
        })?;
        liger_ir::verify(&f).map_err(|d| Error::File {
            path: t.target.clone(),
            why: format!(
                "does not verify:\n{}",
                liger_ir::text::render_diagnostics(&text, &map, &d.0)
            ),
        })?;
        return Ok(Loaded::File(f));
    }
    let loss = crate::losses::by_name(&t.target)?;
    Ok(Loaded::Builtin(loss, select_spec(loss, &t.variants)?))
}

fn stages_for(t: &Target) -> Result<crate::kernels::Stages, Error> {
    let dtype = dtype_of(&t.dtype)?;
    let strategy = strategy_of(&t.schedule)?;
    match load_target(t)? {
        Loaded::Builtin(loss, spec) => crate::kernels::stages(loss, spec, strategy, dtype),
        Loaded::File(f) => {
            let g = liger_ir::differentiate(&f).map_err(|d| Error::File {
                path: t.target.clone(),
                why: d.to_string(),
            })?;
            crate::kernels::stages_of(f, liger_ir::simplify(&g), strategy, dtype)
        }
    }
}

fn ir(what: IrCommand) -> Result<(), Error> {
    match what {
        IrCommand::Check(t) => {
            let st = stages_for(&t)?;
            let f = &st.surface;
            out(&liger_ir::print(f));
            out(&format!(
                "; ok: {} nodes, {} inputs, {} outputs; differentiable; {}\n",
                f.nodes.len(),
                f.inputs.len(),
                f.outputs.len(),
                if st.schedule.row_local {
                    "row-local"
                } else {
                    "not row-local"
                }
            ));
        }
        IrCommand::Grad(t) => out(&liger_ir::print(&stages_for(&t)?.grad)),
        IrCommand::Schedule(t) => {
            let st = stages_for(&t)?;
            out(&st.schedule.render(&st.grad));
        }
        IrCommand::Emit { target, arch } => {
            let st = stages_for(&target)?;
            out(&format!(
                "// target {arch}, schedule {}\n{}",
                st.strategy, st.module.source
            ));
        }
    }
    Ok(())
}

fn cache(what: CacheCommand) -> Result<(), Error> {
    use crate::runtime::cache::Cache;
    let c = Cache::from_env();
    let root = || {
        c.root()
            .map(|r| r.display().to_string())
            .unwrap_or_else(|| "(off)".into())
    };
    match what {
        CacheCommand::Path => out(&format!("{}\n", root())),
        CacheCommand::Ls { json } => {
            let es = c.entries();
            if json {
                let v: Vec<serde_json::Value> = es
                    .iter()
                    .map(|e| {
                        let comps: serde_json::Map<String, serde_json::Value> =
                            e.components.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect();
                        serde_json::json!({"key": e.key, "arch": e.arch, "bytes": e.bytes, "hits": e.hits, "compile_ms": e.compile_ms, "components": comps})
                    })
                    .collect();
                out(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                ));
            } else {
                let mut s = format!(
                    "{:<14} {:<7} {:<14} {:<7} {:>8} {:>6} {:>10}\n",
                    "key", "arch", "schedule", "dtype", "vocab", "hits", "compile"
                );
                for e in &es {
                    let get = |n: &str| {
                        e.components
                            .iter()
                            .find(|(k, _)| k == n)
                            .map_or("?", |(_, v)| v.as_str())
                            .to_string()
                    };
                    s += &format!(
                        "{:<14} {:<7} {:<14} {:<7} {:>8} {:>6} {:>8.0}ms\n",
                        &e.key[..12.min(e.key.len())],
                        e.arch,
                        get("schedule"),
                        get("dtype"),
                        get("vocab"),
                        e.hits,
                        e.compile_ms
                    );
                }
                s += &format!("{} entries in {}\n", es.len(), root());
                out(&s);
            }
        }
        CacheCommand::Show {
            key,
            ir,
            grad,
            schedule,
            cuda,
            ptx,
            meta,
        } => {
            let e = c.get(&key).ok_or_else(|| Error::File {
                path: root(),
                why: format!("no single entry with key prefix `{key}`"),
            })?;
            let pick = [
                (ir, "surface.lir"),
                (grad, "grad.lir"),
                (schedule, "schedule.txt"),
                (cuda, "kernel.cu"),
                (ptx, "kernel.ptx"),
                (meta, "meta.json"),
            ];
            let mut any = false;
            for (on, file) in pick {
                if on {
                    any = true;
                    out(&e
                        .file(file)
                        .unwrap_or_else(|| format!("(no {file} in this entry)\n")));
                }
            }
            if !any {
                let mut s = format!("entry {}\n  dir {}\n", e.info.key, e.dir.display());
                for (k, v) in &e.info.components {
                    s += &format!("  {k:<15} {v}\n");
                }
                s += &format!(
                    "  hits {}, {} bytes, compiled in {:.0} ms\n",
                    e.info.hits, e.info.bytes, e.info.compile_ms
                );
                out(&s);
            }
        }
        CacheCommand::Stats { json } => {
            let st = c.stats();
            if json {
                out(&format!(
                    "{}\n",
                    serde_json::json!({"root": root(), "entries": st.entries, "bytes": st.bytes, "hits": st.hits})
                ));
            } else {
                out(&format!(
                    "{}: {} entries, {} bytes, {} disk hits\n",
                    root(),
                    st.entries,
                    st.bytes,
                    st.hits
                ));
            }
        }
        CacheCommand::Diff { a, b } => {
            let ea = c.get(&a).ok_or_else(|| Error::File {
                path: root(),
                why: format!("no single entry `{a}`"),
            })?;
            let eb = c.get(&b).ok_or_else(|| Error::File {
                path: root(),
                why: format!("no single entry `{b}`"),
            })?;
            let mut s = String::new();
            for (k, va) in &ea.info.components {
                let vb = eb
                    .info
                    .components
                    .iter()
                    .find(|(n, _)| n == k)
                    .map_or("(absent)", |(_, v)| v.as_str());
                if va != vb {
                    s += &format!("{k}: {va} -> {vb}\n");
                }
            }
            if s.is_empty() {
                s = "no component differs\n".into();
            }
            out(&s);
        }
        CacheCommand::Clear => out(&format!("removed {} entries\n", c.clear()?)),
        CacheCommand::Prune { max_size } => {
            let max = crate::runtime::plan::parse_bytes(&max_size)? as u64;
            out(&format!("removed {} entries\n", c.prune(max)?));
        }
        CacheCommand::Warm {
            target,
            arch,
            vocab,
            hidden,
        } => {
            let Loaded::Builtin(loss, spec) = load_target(&target)? else {
                return Err(Error::File {
                    path: target.target.clone(),
                    why: "warm takes a built-in loss".into(),
                });
            };
            let heads = loss.params().iter().filter(|p| p.kind.is_head()).count();
            let req = crate::kernels::KernelRequest {
                strategy: strategy_of(&target.schedule)?,
                gemm_dtype: dtype_of(&target.dtype)?,
                vocab,
                hidden: vec![hidden; heads],
                arch,
                ..Default::default()
            };
            let start = Instant::now();
            let k = crate::kernels::compile(loss, spec, &req, &c)?;
            let origin = match &k.origin {
                crate::runtime::cache::Origin::Memory => "memory".to_string(),
                crate::runtime::cache::Origin::Disk => "disk".to_string(),
                crate::runtime::cache::Origin::Compiled { why } => format!("compiled ({why})"),
            };
            out(&format!(
                "{} [{}] {}: key {} from {origin} in {:.0} ms\n",
                loss.name(),
                spec.describe(),
                k.stages.strategy,
                k.key.key(),
                start.elapsed().as_secs_f64() * 1e3
            ));
        }
    }
    Ok(())
}

fn bench(
    budget: &str,
    reps: usize,
    json: Option<&str>,
    profile: bool,
    only: &str,
) -> Result<(), Error> {
    let budget = crate::runtime::plan::parse_bytes(budget)?;
    let rows = crate::bench::run(budget, reps, profile, only)?;
    out(&crate::bench::table(&rows, budget));
    if let Some(path) = json {
        let text =
            serde_json::to_string_pretty(&crate::bench::json(&rows, budget)).unwrap_or_default();
        std::fs::write(path, text).map_err(|e| Error::File {
            path: path.into(),
            why: e.to_string(),
        })?;
    }
    Ok(())
}
