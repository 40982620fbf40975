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
        /// The device: `cpu`.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Working-memory budget of the chunk loop, e.g. `256MiB`.
        #[arg(long, default_value = "256MiB")]
        chunk_memory: String,
        /// `auto`, or a schedule to force: fused, group-aligned, deferred, two-pass.
        #[arg(long, default_value = "auto")]
        schedule: String,
        /// Target value marking invalid rows.
        #[arg(long, default_value_t = -100, allow_negative_numbers = true)]
        ignore_index: i64,
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
    let norm = |x: &[f32]| x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
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

    if let Some(path) = out {
        let first_head = loss
            .params()
            .iter()
            .find(|p| p.kind.is_head())
            .map(|p| p.name);
        let (s, t) = first_head
            .and_then(|h| tensors.get(&format!("{h}.x")))
            .map_or((0, 0), |x| (x.shape[0], x.shape[1]));
        let mut outs: Vec<(String, Vec<usize>, Vec<f32>)> =
            vec![("loss".into(), vec![], vec![r.loss])];
        for m in &r.metrics {
            let shape = match m.level {
                liger_ir::Level::Batch => vec![],
                liger_ir::Level::Row => vec![s, t],
                _ => vec![m.values.len()],
            };
            outs.push((format!("metric.{}", m.name), shape, m.values.clone()));
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
            outs.push((format!("grad.{}.x", g.head), xs, g.x.clone()));
            outs.push((format!("grad.{}.w", g.head), ws, g.w.clone()));
            if let Some(b) = &g.b {
                outs.push((format!("grad.{}.b", g.head), vec![b.len()], b.clone()));
            }
        }
        io::write_f32(path, &outs)?;
        println!("  wrote {path}");
    }
    Ok(())
}
