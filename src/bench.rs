//! `liger bench`: measured forward+backward time of the built-in losses on the GPU, with the
//! GEMM floor measured in the same run and the peak extra memory, as a table and JSON.
//!
//! Cases (bf16 inputs, fp32 `grad W`): DPO with a reference head, ORPO, KTO with a reference
//! head, GRPO (Dapo, no reference, on-policy), FLCE, and JSD and KL distillation with a
//! teacher head at S1 (FLCE and DPO also with a frozen lm-head weight: `grad W` not asked
//! for, the floor without its GEMM; and with 12.5% or 50% of each sequence masked as a
//! prompt, those rows skipped, against the floor of the valid rows) = 8 sequences x 1024 tokens, H = 4096, V = 128256; DPO at 1 pair x
//! 4096, 8192 and 16384 tokens. Time = median over repetitions of the device time of the
//! compute (inputs already on the device); floor = the same GEMMs on the same input data with
//! bf16 output through cuBLAS, measured in the same run, with its TFLOP/s.

use half::bf16;

use crate::losses::{Dpo, Flce, Grpo, Jsd, KlDistill, Kto, Orpo};
use crate::runtime::cuda::bench::FloorHead;
use crate::{ChunkedLoss, Error, Head, InputSet, ParamSet, RunOptions, Runtime, TensorView};

/// One row of the table.
#[derive(Clone, Debug)]
pub struct BenchRow {
    /// Case name.
    pub case: String,
    /// Schedule that ran.
    pub schedule: String,
    /// Median device ms.
    pub ms: f64,
    /// GEMM floor ms.
    pub floor_ms: f64,
    /// The floor's throughput, TFLOP/s.
    pub floor_tflops: f64,
    /// Peak extra memory in bytes.
    pub peak_bytes: usize,
    /// Rows per chunk.
    pub chunk_rows: usize,
    /// Rows per gradient stage (the gradient GEMMs' depth).
    pub stage_rows: usize,
    /// Rows left out as carrying nothing (the masked cases; the floor is over the others).
    pub skipped_rows: usize,
    /// Device time per phase of one extra profiled run (when asked for).
    pub profile: Vec<crate::runtime::PhaseTime>,
}

fn rand_bf16(n: usize, sd: f32, seed: u64) -> Vec<bf16> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = ((x >> 11) as f64 / (1u64 << 53) as f64) as f32 - 0.5;
            bf16::from_f32(u * sd * 3.46)
        })
        .collect()
}

/// Runs the benchmark; `budget` bytes of working memory, `reps` timed repetitions; with
/// `profile`, one more run per case with device events around every phase; only the cases
/// whose name contains `only`.
/// `forced` forces every case's chunk and stage sizes (a case that cannot take them is skipped
/// with the reason).
pub fn run(
    budget: usize,
    reps: usize,
    profile: bool,
    only: &str,
    forced: Option<crate::ForcedRows>,
) -> Result<Vec<BenchRow>, Error> {
    let rt = Runtime::cuda(0)?;
    let gpu = crate::runtime::cuda::device::Gpu::new(0)?;
    let (h, v) = (4096usize, 128256usize);
    let w = rand_bf16(v * h, 0.02, 1);
    let wr = rand_bf16(v * h, 0.02, 2);
    let mut rows = Vec::new();
    let cases: Vec<(&str, &'static dyn ChunkedLoss, usize, usize)> = vec![
        ("dpo S1 8x1024 ref head", &Dpo, 8, 1024),
        ("orpo S1 8x1024", &Orpo, 8, 1024),
        ("kto S1 8x1024 ref head", &Kto, 8, 1024),
        ("grpo S1 8x1024 dapo no ref", &Grpo, 8, 1024),
        ("flce S1 8x1024", &Flce, 8, 1024),
        ("flce S1 8x1024 frozen W", &Flce, 8, 1024),
        ("flce S1 8x1024 12.5% masked", &Flce, 8, 1024),
        ("flce S1 8x1024 50% masked", &Flce, 8, 1024),
        ("dpo S1 8x1024 ref head 50% masked", &Dpo, 8, 1024),
        ("dpo S1 8x1024 ref head frozen W", &Dpo, 8, 1024),
        ("jsd S1 8x1024 teacher head", &Jsd, 8, 1024),
        ("kl_distill S1 8x1024 teacher", &KlDistill, 8, 1024),
        ("dpo 1 pair x 4096", &Dpo, 2, 4096),
        ("dpo 1 pair x 8192", &Dpo, 2, 8192),
        ("dpo 1 pair x 16384", &Dpo, 2, 16384),
    ];
    for (name, loss, s, t) in cases.into_iter().filter(|c| c.0.contains(only)) {
        let x = rand_bf16(s * t * h, 1.0, 3);
        let xr = rand_bf16(s * t * h, 1.0, 4);
        // Every case ignores the first eighth of each sequence (a prompt); the "masked"
        // cases ignore the fraction they name and skip those rows (`skip_dead_rows`), with
        // the floor of the valid rows only; the others run every row, against the floor of
        // every row (as the peers do).
        let masked = name.ends_with("masked");
        let prompt = if name.contains("50% masked") {
            t / 2
        } else {
            t / 8
        };
        let target: Vec<i64> = (0..s * t)
            .map(|i| {
                if i % t < prompt {
                    -100
                } else {
                    ((i * 7919) % v) as i64
                }
            })
            .collect();
        fn head<'a>(
            x: &'a [bf16],
            w: &'a [bf16],
            (s, t, h, v): (usize, usize, usize, usize),
        ) -> Result<Head<'a>, Error> {
            Ok(Head::new(
                TensorView::new(x, &[s, t, h])?,
                TensorView::new(w, &[v, h])?,
            ))
        }
        let d = (s, t, h, v);
        // KTO: every other sequence desirable, and a KL estimate.
        let preference: Vec<bool> = (0..s).map(|i| i % 2 == 0).collect();
        let kl = [0.25f32];
        // GRPO: sampled tokens (every id valid), a completion mask leaving out the first
        // eighth of each sequence (the prompt), advantages of both signs.
        let tokens: Vec<i64> = (0..s * t).map(|i| ((i * 7919) % v) as i64).collect();
        let mask: Vec<bool> = (0..s * t).map(|i| i % t >= t / 8).collect();
        let advantages: Vec<f32> = (0..s).map(|i| (i as f32 - 3.5) / 2.0).collect();
        // "frozen W": the lm-head weight is not trained (LoRA), only `dx` is asked for.
        let frozen_w = name.ends_with("frozen W");
        let policy = FloorHead {
            x: &x,
            w: &w,
            h,
            dx: true,
            dw: !frozen_w,
        };
        let frozen = FloorHead {
            x: &xr,
            w: &wr,
            h,
            dx: false,
            dw: false,
        };
        let (set, heads): (InputSet<'_>, Vec<FloorHead<'_>>) = match loss.name() {
            "dpo" => (
                InputSet::new()
                    .head("policy", head(&x, &w, d)?)
                    .head("reference", head(&xr, &wr, d)?)
                    .tensor("target", TensorView::new(&target, &[s, t])?),
                vec![policy, frozen],
            ),
            "orpo" => (
                InputSet::new()
                    .head("policy", head(&x, &w, d)?)
                    .tensor("target", TensorView::new(&target, &[s, t])?),
                vec![policy],
            ),
            "kto" => (
                InputSet::new()
                    .head("policy", head(&x, &w, d)?)
                    .head("reference", head(&xr, &wr, d)?)
                    .tensor("target", TensorView::new(&target, &[s, t])?)
                    .tensor("preference", TensorView::new(&preference[..], &[s])?)
                    .tensor("kl", TensorView::new(&kl[..], &[])?),
                vec![policy, frozen],
            ),
            "grpo" => (
                InputSet::new()
                    .head("policy", head(&x, &w, d)?)
                    .tensor("target", TensorView::new(&tokens, &[s, t])?)
                    .tensor("mask", TensorView::new(&mask[..], &[s, t])?)
                    .tensor("advantages", TensorView::new(&advantages[..], &[s])?),
                vec![policy],
            ),
            "jsd" | "kl_distill" => (
                InputSet::new()
                    .head("student", head(&x, &w, d)?)
                    .head("teacher", head(&xr, &wr, d)?)
                    .tensor("target", TensorView::new(&target, &[s, t])?),
                vec![policy, frozen],
            ),
            _ => (
                InputSet::new()
                    .head("logits", head(&x, &w, d)?)
                    .tensor("target", TensorView::new(&target, &[s, t])?),
                vec![policy],
            ),
        };
        let opts = RunOptions {
            chunk_memory: budget,
            grads: if frozen_w {
                crate::Wanted::parse("x,b")?
            } else {
                crate::Wanted::ALL
            },
            skip_dead_rows: masked,
            rows: forced,
            ..RunOptions::default()
        };
        let params = ParamSet::new();
        // A budget too small for this case skips the case (the other cases still run: a
        // sweep's small budgets fit some losses and not others).
        match crate::run(loss, &rt, &set, &params, &opts) {
            Err(crate::Error::Runtime(crate::runtime::Error::Budget { needed, .. })) => {
                eprintln!("{name}: skipped, its smallest chunk needs {needed} B");
                continue;
            }
            Err(crate::Error::Runtime(e @ crate::runtime::Error::Rows { .. })) => {
                eprintln!("{name}: skipped: {e}");
                continue;
            }
            other => {
                other?;
            }
        }
        let mut ms = Vec::new();
        let mut last = None;
        // Peak extra memory is the largest over every timed run, as the allocator saw it.
        let mut peak = 0usize;
        for _ in 0..reps.max(1) {
            let out = crate::run(loss, &rt, &set, &params, &opts)?;
            ms.push(out.report.device_ms.unwrap_or(f64::NAN));
            peak = peak.max(out.report.peak_extra_bytes.ok_or_else(|| {
                crate::runtime::Error::Device {
                    device: "cuda".into(),
                    why: "the device allocator reports no peak memory (no default memory pool)"
                        .into(),
                }
            })?);
            last = Some(out.report);
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        let rep = last.ok_or_else(|| crate::runtime::Error::Internal("no timed run".into()))?;
        // The floor over the rows that ran (every row unless masked rows were skipped).
        let ran_rows = s * t - rep.skipped_rows;
        let heads: Vec<FloorHead<'_>> = heads
            .into_iter()
            .map(|hd| FloorHead {
                x: &hd.x[..ran_rows * h],
                ..hd
            })
            .collect();
        let floor = crate::runtime::cuda::bench::gemm_floor_ms(&gpu, ran_rows, v, &heads, reps)?;
        let flops = crate::runtime::cuda::bench::floor_flops(ran_rows, v, &heads);
        let phases = if profile {
            let o = RunOptions {
                profile: true,
                ..opts
            };
            crate::run(loss, &rt, &set, &params, &o)?.report.profile
        } else {
            Vec::new()
        };
        let row = BenchRow {
            case: name.into(),
            schedule: rep.strategy.name().into(),
            ms: ms[ms.len() / 2],
            floor_ms: floor,
            floor_tflops: flops / (floor * 1e-3) / 1e12,
            peak_bytes: peak,
            chunk_rows: rep.chunk_rows,
            stage_rows: rep.stage_rows,
            skipped_rows: rep.skipped_rows,
            profile: phases,
        };
        eprintln!(
            "{} {} {:.2} ms (floor {:.2} ms) peak {:.2} GiB",
            row.case,
            row.schedule,
            row.ms,
            row.floor_ms,
            row.peak_bytes as f64 / (1u64 << 30) as f64
        );
        rows.push(row);
    }
    Ok(rows)
}

/// The table of `rows`.
pub fn table(rows: &[BenchRow], budget: usize) -> String {
    // The case column is as wide as the longest case name.
    let w = rows.iter().map(|r| r.case.len()).max().unwrap_or(0).max(4);
    let mut s = format!(
        "budget {:.2} GiB\n{:<w$} {:<10} {:>10} {:>10} {:>8} {:>7} {:>10} {:>11}\n",
        budget as f64 / (1u64 << 30) as f64,
        "case",
        "schedule",
        "ms",
        "floor ms",
        "TFLOP/s",
        "ratio",
        "peak GiB",
        "chunk/stage"
    );
    for r in rows {
        s += &format!(
            "{:<w$} {:<10} {:>10.2} {:>10.2} {:>8.0} {:>7.2} {:>10.3} {:>11}\n",
            r.case,
            r.schedule,
            r.ms,
            r.floor_ms,
            r.floor_tflops,
            r.ms / r.floor_ms,
            r.peak_bytes as f64 / (1u64 << 30) as f64,
            format!("{}/{}", r.chunk_rows, r.stage_rows)
        );
    }
    for r in rows.iter().filter(|r| !r.profile.is_empty()) {
        s += &format!("\nprofile of {} (one extra run, device events):\n", r.case);
        s += &profile_table(&r.profile);
    }
    for r in rows.iter().filter(|r| r.peak_bytes > budget) {
        s += &format!("OVER BUDGET: {} peaked at {} B\n", r.case, r.peak_bytes);
    }
    s
}

/// A phase table: phase, launches, ms, share of the total (empty without phases).
pub fn profile_table(phases: &[crate::runtime::PhaseTime]) -> String {
    if phases.is_empty() {
        return String::new();
    }
    let total: f64 = phases.iter().map(|p| p.ms).sum();
    let mut s = format!(
        "  {:<20} {:>8} {:>10} {:>7}\n",
        "phase", "launches", "ms", "share"
    );
    for p in phases {
        s += &format!(
            "  {:<20} {:>8} {:>10.3} {:>6.1}%\n",
            p.phase,
            p.launches,
            p.ms,
            100.0 * p.ms / total.max(1e-12)
        );
    }
    s += &format!("  {:<20} {:>8} {:>10.3}\n", "total", "", total);
    s
}

/// JSON of `rows`.
pub fn json(rows: &[BenchRow], budget: usize) -> serde_json::Value {
    serde_json::json!({
        "budget_bytes": budget,
        "rows": rows.iter().map(|r| serde_json::json!({
            "case": r.case, "schedule": r.schedule, "median_ms": r.ms, "gemm_floor_ms": r.floor_ms, "floor_tflops": r.floor_tflops,
            "ratio": r.ms / r.floor_ms, "peak_extra_bytes": r.peak_bytes, "within_budget": r.peak_bytes <= budget,
            "chunk_rows": r.chunk_rows, "stage_rows": r.stage_rows, "skipped_rows": r.skipped_rows,
            "profile": r.profile.iter().map(|p| serde_json::json!({
                "phase": p.phase, "ms": p.ms, "launches": p.launches,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_columns_line_up_for_long_case_names() {
        let row = |case: &str| BenchRow {
            case: case.into(),
            schedule: "fused".into(),
            ms: 40.0,
            floor_ms: 37.0,
            floor_tflops: 690.0,
            peak_bytes: 1 << 30,
            chunk_rows: 4096,
            stage_rows: 8192,
            skipped_rows: 0,
            profile: Vec::new(),
        };
        let t = table(
            &[
                row("flce S1 8x1024"),
                row("dpo S1 8x1024 ref head 50% masked"),
            ],
            2 << 30,
        );
        let lines: Vec<&str> = t.lines().skip(1).take(3).collect();
        let at: Vec<Option<usize>> = lines
            .iter()
            .map(|l| l.find("schedule").or_else(|| l.find("fused")))
            .collect();
        assert!(at.iter().all(|a| *a == at[0] && a.is_some()), "{t}");
    }
}
