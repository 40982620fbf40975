//! `liger run`: a loss on tensors from a safetensors file, on the CPU or the GPU, with the
//! results written to another file.

use std::time::{Duration, Instant};

use super::split_kv;
use crate::io::{self, TensorFile};
use crate::loss::ChunkedLoss;
use crate::{Error, InputSet, ParamSet, RunOptions, Runtime, Strategy};

/// Builds the loss's inputs from the file's tensors (viewed in place), checking every name
/// ([`crate::named::inputs_by_name`]).
fn build_inputs<'a>(loss: &dyn ChunkedLoss, file: &'a TensorFile) -> Result<InputSet<'a>, Error> {
    crate::named::inputs_by_name(loss, file.names(), |n| file.view(n))?.map_err(|why| Error::File {
        path: file.path().into(),
        why,
    })
}

/// Refuses an output path that is the input file (the run would overwrite its own batch).
fn check_output(out: &str, inputs: &str) -> Result<(), Error> {
    let same = out == inputs
        || matches!(
            (std::fs::canonicalize(out), std::fs::canonicalize(inputs)),
            (Ok(a), Ok(b)) if a == b
        );
    if same {
        return Err(Error::File {
            path: out.into(),
            why: "`--out` is the `--inputs` file: the results would overwrite the batch; write \
                  them to another file"
                .into(),
        });
    }
    Ok(())
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
    loss: &'static dyn ChunkedLoss,
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
    vocab_prefix: bool,
    grads: &str,
    all_rows: bool,
    w_accum: &str,
) -> Result<(), Error> {
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
    // One rule with `cache warm`: an optional input's presence may be stated, and must then
    // agree with the file.
    let (vs, presence) = super::target::split_variants(loss, variants)?;
    ps.extend(vs);
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
        vocab_prefix,
        grads: crate::Wanted::parse(grads)?,
        skip_dead_rows: !all_rows,
        rows: None,
        w_accum: crate::WAccum::from_name(w_accum).ok_or_else(|| Error::BadVariant {
            param: "--w-accum".into(),
            value: w_accum.into(),
            allowed: "f32, output".into(),
        })?,
    };
    if let Some(o) = out {
        check_output(o, inputs)?;
    }
    let heap_before = super::heap::current();
    super::heap::reset_peak();
    let file = TensorFile::open(inputs)?;
    let set = build_inputs(loss, &file)?;
    for (k, want) in &presence {
        let has = set.get(k).is_some();
        if has != (want == "present") {
            return Err(Error::File {
                path: inputs.into(),
                why: format!(
                    "`--variant {k}={want}` but the file {} input `{k}`",
                    if has { "holds" } else { "has no" }
                ),
            });
        }
    }

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
    let norm = |x: &crate::GradBuf| -> f64 {
        let sq = |v: f32| f64::from(v).powi(2);
        match x {
            crate::GradBuf::F32(v) => v.iter().map(|a| sq(*a)).sum::<f64>(),
            crate::GradBuf::BF16(v) => v.iter().map(|a| sq(a.to_f32())).sum::<f64>(),
            crate::GradBuf::F16(v) => v.iter().map(|a| sq(a.to_f32())).sum::<f64>(),
        }
        .sqrt()
    };
    for g in &r.grads {
        print!("  grad {:<10}", g.head);
        for (part, buf) in [("dx", &g.x), ("dW", &g.w), ("db", &g.b)] {
            if let Some(b) = buf {
                print!("  |{part}| {:.6e}", norm(b));
            }
        }
        println!();
    }
    let rep = &r.report;
    let heap_peak = super::heap::peak().saturating_sub(heap_before);
    println!(
        "  schedule {}{} on {}: {} chunks of {} rows; working memory planned {} of {}; time {:.3} s",
        rep.strategy,
        if rep.forced { " (forced)" } else { "" },
        rep.device,
        rep.chunks,
        rep.chunk_rows,
        mib(rep.estimate),
        mib(rep.budget),
        rep.seconds,
    );
    if rep.stage_rows > rep.chunk_rows {
        println!(
            "  gradient GEMMs over stages of {} rows ({} chunks each)",
            rep.stage_rows,
            rep.stage_rows / rep.chunk_rows.max(1)
        );
    }
    if rep.skipped_rows > 0 {
        println!(
            "  {} rows skipped: they carry nothing (ignored tokens; --all-rows runs them)",
            rep.skipped_rows
        );
    }
    println!(
        "  host heap peak {} (returned gradients {}, inputs copied out of the file {}); peak RSS {} (file pages included)",
        mib(heap_peak),
        mib(r
            .grads
            .iter()
            .flat_map(|g| [&g.x, &g.w, &g.b])
            .flatten()
            .map(|b| b.len() * b.dtype().size())
            .sum()),
        mib(file.copied_bytes()),
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
            .and_then(|h| file.shape(&format!("{h}.x")))
            .map_or((0, 0), |x| (x[0], x[1]));
        let mut outs = std::collections::BTreeMap::new();
        for t in crate::named::named_outputs(r, (s, t), |n| file.shape(n).map(<[usize]>::to_vec)) {
            let data = match t.data {
                crate::GradBuf::F32(x) => io::OwnedData::F32(x),
                crate::GradBuf::BF16(x) => io::OwnedData::BF16(x),
                crate::GradBuf::F16(x) => io::OwnedData::F16(x),
            };
            outs.insert(
                t.name,
                io::OwnedTensor {
                    shape: t.shape,
                    data,
                },
            );
        }
        io::write(path, &outs)?;
        println!("  wrote {path}");
    }
    Ok(())
}
