//! Data or vocab parallel over NCCL, one process per GPU (feature `nccl`): the launcher for
//! several GPUs of one host.
//!
//! ```text
//! cargo run --release --features nccl --example nccl_ranks -- \
//!     --ranks 2 --loss flce --seqs 8 --seq-len 1024 --hidden 4096 --vocab 128256 \
//!     --budget 2GiB --reps 5 [--mode data|vocab] [--json out.json]
//! ```
//!
//! Without `LIGER_RANK` in its environment the program is the launcher: it makes an NCCL unique
//! id, starts one copy of itself per rank (`LIGER_RANK`, `LIGER_WORLD`, `LIGER_NCCL_ID`; rank
//! `r` on GPU `r`), and prints what each rank reports. Every rank builds the same whole batch
//! (`--seqs` sequences per rank, bf16, random, the first eighth of each sequence a masked
//! prompt) from one seed and keeps its own sequences (pairs for DPO, chosen first); each
//! runs the loss data-parallel `--reps` times with `dW` summed over the ranks and reports the
//! median time of a run (device events around it: the GPU work, the host's whole-batch stages
//! and the waits for the other ranks; not the summing of `dW` after it), the peak memory above
//! its inputs and the loss. Rank 0 then runs the whole batch alone and reports the relative
//! differences of the loss and of `dW`.
//!
//! `--mode vocab`: every rank holds the whole batch of `--seqs` sequences and its shard of
//! each head's vocabulary rows (rank `r` rows `r·V/ranks .. (r+1)·V/ranks`); each runs the
//! loss vocab-parallel (the streams' reductions and `dx` combined with NCCL all-reduces on
//! the device, inside the timed part), and rank 0 compares the loss, `dx` and its shard's
//! `dW` with one GPU on the same batch at the same budget.
//!
//! Gradients: `dx` in bf16, `dW` returned in f32 (its accumulator is the returned buffer, so
//! it is not working memory), as `liger bench` does.
//!
//! `--loss`: `flce` (one head) or `dpo` (policy and reference heads).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use half::bf16;
use liger::runtime::comm::GradShare;
use liger::runtime::nccl::{NcclGroup, unique_id};
use liger::{ChunkedLoss, Head, InputSet, LossOutput, ParamSet, RunOptions, Runtime, TensorView};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// `--key value` arguments with defaults.
fn args() -> Res<BTreeMap<String, String>> {
    let mut a: BTreeMap<String, String> = [
        ("ranks", "2"),
        ("loss", "flce"),
        ("seqs", "8"),
        ("seq-len", "1024"),
        ("hidden", "4096"),
        ("vocab", "128256"),
        ("budget", "2GiB"),
        ("reps", "5"),
        ("mode", "data"),
        ("json", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let key = k
            .strip_prefix("--")
            .filter(|k| a.contains_key(*k))
            .ok_or_else(|| format!("unknown argument {k}; known: {:?}", a.keys()))?
            .to_string();
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        a.insert(key, v);
    }
    Ok(a)
}

fn num(a: &BTreeMap<String, String>, k: &str) -> Res<usize> {
    Ok(a[k]
        .parse()
        .map_err(|_| format!("--{k} takes a whole number, got {}", a[k]))?)
}

fn main() -> Res<()> {
    let a = args()?;
    match std::env::var("LIGER_RANK") {
        Ok(r) => rank(&a, r.parse()?),
        Err(_) => launch(&a),
    }
}

/// Starts one process per rank and prints their reports.
fn launch(a: &BTreeMap<String, String>) -> Res<()> {
    let world = num(a, "ranks")?;
    let id: String = unique_id()?.iter().map(|b| format!("{b:02x}")).collect();
    let exe = std::env::current_exe()?;
    let mut children: Vec<_> = (0..world)
        .map(|r| {
            Command::new(&exe)
                .args(std::env::args().skip(1))
                .env("LIGER_RANK", r.to_string())
                .env("LIGER_WORLD", world.to_string())
                .env("LIGER_LOCAL_DEVICE", r.to_string())
                .env("LIGER_NCCL_ID", &id)
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    // A rank that fails leaves its peers waiting in NCCL (until their timeout): stop them.
    let mut failed = false;
    loop {
        let mut running = 0;
        for c in &mut children {
            match c.try_wait()? {
                Some(st) => failed |= !st.success(),
                None => running += 1,
            }
        }
        if running == 0 {
            break;
        }
        if failed {
            for c in &mut children {
                let _ = c.kill();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut reports = Vec::new();
    for (r, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) => reports.push(v),
                Err(_) => println!("rank {r}: {line}"),
            }
        }
    }
    println!(
        "{} ranks, {} parallel, {}: {} sequences x {}{}, H {}, V {}{}, bf16, budget {} per rank",
        world,
        a["mode"],
        a["loss"],
        a["seqs"],
        a["seq-len"],
        if a["mode"] == "vocab" {
            ""
        } else {
            " per rank"
        },
        a["hidden"],
        a["vocab"],
        if a["mode"] == "vocab" {
            " split between the ranks"
        } else {
            ""
        },
        a["budget"]
    );
    println!("rank  strategy     chunk   fwd+bwd ms   peak GiB   loss");
    for v in &reports {
        println!(
            "{:>4}  {:<11} {:>6} {:>12.2} {:>10.3}   {}",
            v["rank"],
            v["strategy"],
            v["chunk_rows"],
            v["ms"].as_f64().unwrap_or(f64::NAN),
            v["peak_gib"].as_f64().unwrap_or(f64::NAN),
            v["loss"]
        );
        if let Some(d) = v.get("vs_single") {
            println!("      rank 0 against one GPU on the whole batch: {d}");
        }
    }
    if !a["json"].is_empty() {
        std::fs::write(&a["json"], serde_json::to_string_pretty(&reports)?)?;
    }
    if failed {
        return Err("a rank failed (its output is above)".into());
    }
    Ok(())
}

/// The whole batch, the same on every rank: heads `(name, x [S,T,H], W [V,H])` and targets.
struct Batch {
    s: usize,
    heads: Vec<(&'static str, Vec<bf16>, Vec<bf16>)>,
    target: Vec<i64>,
}

fn batch(loss: &str, s: usize, t: usize, h: usize, v: usize) -> Batch {
    let mut rng = fastrand::Rng::with_seed(17);
    let mut normal =
        |sd: f32| bf16::from_f32(((0..4).map(|_| rng.f32()).sum::<f32>() - 2.0) * sd * 1.73);
    let mut head = |name| {
        let x: Vec<bf16> = (0..s * t * h).map(|_| normal(1.0)).collect();
        let w: Vec<bf16> = (0..v * h).map(|_| normal((h as f32).powf(-0.5))).collect();
        (name, x, w)
    };
    let heads = if loss == "dpo" {
        vec![head("policy"), head("reference")]
    } else {
        vec![head("logits")]
    };
    let mut rng = fastrand::Rng::with_seed(18);
    let target = (0..s * t)
        .map(|i| {
            if i % t < t / 8 {
                -100
            } else {
                rng.usize(0..v) as i64
            }
        })
        .collect();
    Batch { s, heads, target }
}

/// The sequences of `seqs` (in that order).
fn select(b: &Batch, seqs: &[usize], t: usize, h: usize) -> Batch {
    let pick = |x: &[bf16], block: usize| -> Vec<bf16> {
        seqs.iter()
            .flat_map(|&q| x[q * block..(q + 1) * block].iter().copied())
            .collect()
    };
    Batch {
        s: seqs.len(),
        heads: b
            .heads
            .iter()
            .map(|(n, x, w)| (*n, pick(x, t * h), w.clone()))
            .collect(),
        target: seqs
            .iter()
            .flat_map(|&q| b.target[q * t..(q + 1) * t].iter().copied())
            .collect(),
    }
}

/// How a run relates to the other ranks.
#[derive(Clone, Copy)]
enum Mode<'g> {
    Single,
    Data(&'g NcclGroup),
    Vocab(&'g NcclGroup),
}

/// `b` with each head's vocabulary rows `a..e` of `h` entries.
fn shard(b: &Batch, a: usize, e: usize, h: usize) -> Batch {
    Batch {
        s: b.s,
        heads: b
            .heads
            .iter()
            .map(|(n, x, w)| (*n, x.clone(), w[a * h..e * h].to_vec()))
            .collect(),
        target: b.target.clone(),
    }
}

fn run(
    loss: &dyn ChunkedLoss,
    rt: &Runtime,
    b: &Batch,
    (t, h, v): (usize, usize, usize),
    opts: &RunOptions,
    mode: Mode<'_>,
) -> Result<LossOutput, liger::Error> {
    let (xs, ws, ts) = ([b.s, t, h], [v, h], [b.s, t]);
    let mut set = InputSet::new();
    for (name, x, w) in &b.heads {
        set = set.head(
            name,
            Head::new(TensorView::new(x, &xs)?, TensorView::new(w, &ws)?),
        );
    }
    let set = set.tensor("target", TensorView::new(&b.target, &ts)?);
    let params = ParamSet::new();
    match mode {
        Mode::Data(g) => {
            liger::run_data_parallel(loss, rt, &set, &params, opts, g, GradShare::Summed)
        }
        Mode::Vocab(g) => liger::run_vocab_parallel(loss, rt, &set, &params, opts, g),
        Mode::Single => liger::run(loss, rt, &set, &params, opts),
    }
}

/// One rank: its part of the batch (data) or of the vocabulary (vocab) over the NCCL group.
fn rank(a: &BTreeMap<String, String>, r: usize) -> Res<()> {
    let world: usize = std::env::var("LIGER_WORLD")?.parse()?;
    let hex = std::env::var("LIGER_NCCL_ID")?;
    let mut id = [0u8; 128];
    for (k, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * k..2 * k + 2).ok_or("a short NCCL id")?, 16)?;
    }
    let (per, t, h, v) = (
        num(a, "seqs")?,
        num(a, "seq-len")?,
        num(a, "hidden")?,
        num(a, "vocab")?,
    );
    let loss: &dyn ChunkedLoss = match a["loss"].as_str() {
        "flce" => &liger::losses::Flce,
        "dpo" => &liger::losses::Dpo,
        other => return Err(format!("--loss {other}: flce or dpo").into()),
    };
    let pairs = a["loss"] == "dpo";
    if pairs && per % 2 != 0 {
        return Err("DPO needs an even --seqs (pairs, chosen first)".into());
    }
    let vocab = match a["mode"].as_str() {
        "data" => false,
        "vocab" => true,
        other => return Err(format!("--mode {other}: data or vocab").into()),
    };
    let whole = batch(&a["loss"], if vocab { per } else { per * world }, t, h, v);
    // This rank's sequences: contiguous, or its pairs' chosen then rejected sequences.
    let seqs: Vec<usize> = if pairs {
        let (n, k) = (per * world / 2, per / 2);
        (r * k..(r + 1) * k)
            .chain((r * k..(r + 1) * k).map(|i| i + n))
            .collect()
    } else {
        (r * per..(r + 1) * per).collect()
    };
    // Vocab parallel: the whole batch, this rank's vocabulary rows.
    let (va, ve) = (r * v / world, (r + 1) * v / world);
    let mine = if vocab {
        shard(&whole, va, ve, h)
    } else {
        select(&whole, &seqs, t, h)
    };
    // The GPU: the launcher's LIGER_LOCAL_DEVICE (another launcher that gives each process
    // one visible GPU leaves it unset: device 0).
    let device = match std::env::var("LIGER_LOCAL_DEVICE") {
        Ok(d) => d.parse()?,
        Err(_) => 0,
    };
    let rt = Runtime::cuda(device)?;
    let stream = rt
        .cuda_context()
        .ok_or("a CUDA runtime has a context")?
        .new_stream()?;
    let group = NcclGroup::new(stream, r, world, &id)?;
    let opts = RunOptions {
        chunk_memory: liger::runtime::plan::parse_bytes(&a["budget"])?,
        grad_dtypes: liger::runtime::plan::GradDTypes {
            x: liger::runtime::tensor::DType::BF16,
            w: liger::runtime::tensor::DType::F32,
            b: liger::runtime::tensor::DType::F32,
        },
        ..RunOptions::default()
    };
    let reps = num(a, "reps")?.max(1);
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..reps + 1 {
        let (vr, mode) = if vocab {
            (ve - va, Mode::Vocab(&group))
        } else {
            (v, Mode::Data(&group))
        };
        let out = run(loss, &rt, &mine, (t, h, vr), &opts, mode)?;
        times.push(out.report.device_ms.unwrap_or(f64::NAN));
        last = Some(out);
    }
    times.remove(0); // the first call compiles and warms up
    times.sort_by(f64::total_cmp);
    let out = last.ok_or("no run")?;
    let mut report = serde_json::json!({
        "rank": r,
        "world": world,
        "mode": a["mode"],
        "vocab_rows": if vocab { ve - va } else { v },
        "loss": out.loss,
        "ms": times[times.len() / 2],
        "peak_gib": out.report.peak_extra_bytes.map(|b| b as f64 / 2f64.powi(30)),
        "strategy": out.report.strategy.name(),
        "chunk_rows": out.report.chunk_rows,
    });
    if r == 0 {
        let single = run(loss, &rt, &whole, (t, h, v), &opts, Mode::Single)?;
        let grad = |o: &LossOutput, part: char| {
            let g = &o.grads[0];
            match part {
                'x' => g.x.as_ref(),
                _ => g.w.as_ref(),
            }
            .map(|g| g.to_f32())
            .unwrap_or_default()
        };
        // Relative L2 difference of `got` from `want`.
        let rel = |got: &[f32], want: &[f32]| {
            let num: f64 = got
                .iter()
                .zip(want)
                .map(|(x, y)| f64::from(x - y).powi(2))
                .sum();
            let den: f64 = want.iter().map(|y| f64::from(*y).powi(2)).sum();
            (num / den.max(1e-300)).sqrt()
        };
        let (dw, dw1) = (grad(&out, 'w'), grad(&single, 'w'));
        // Vocab parallel: this rank's rows of the single run's dW.
        let dw1 = if vocab {
            dw1[va * h..ve * h].to_vec()
        } else {
            dw1
        };
        report["vs_single"] = serde_json::json!({
            "loss_rel": ((out.loss - single.loss) / single.loss).abs(),
            "dw_rel": rel(&dw, &dw1),
            "dx_rel": if vocab { Some(rel(&grad(&out, 'x'), &grad(&single, 'x'))) } else { None },
            "single_ms": single.report.device_ms,
            "single_strategy": single.report.strategy.name(),
        });
    }
    println!("{report}");
    Ok(())
}
