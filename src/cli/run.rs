//! `liger run`: a loss on tensors from a safetensors file, on the CPU or the GPU, with the
//! results written to another file.

use std::time::{Duration, Instant};

use super::split_kv;
use crate::io::{self, OwnedTensor};
use crate::loss::{ChunkedLoss, ParamKind};
use crate::runtime::Error as RtError;
use crate::{Error, Head, InputSet, ParamSet, RunOptions, Runtime, Strategy};

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
            return Err(RtError::MissingInput {
                loss: loss.name().into(),
                name: p.name.into(),
                kind: p.kind.name(),
            }
            .into());
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
pub(crate) fn run(
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
        s => Some(Strategy::from_name(s).ok_or_else(|| Error::BadVariant {
            param: "--schedule".into(),
            value: s.into(),
            allowed: "auto, fused, group-aligned, deferred, two-pass".into(),
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
