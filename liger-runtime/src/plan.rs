//! The planner: a strategy and a chunk size that fit a memory budget.
//!
//! For every applicable strategy of the schedule (or the one an option forces) the cost model
//! gives working memory as `fixed + per_row · chunk_rows`; the largest chunk that fits the
//! budget is taken (whole groups for group-aligned), and among the strategies that fit, the one
//! with the least GEMM work, then the least memory traffic. A budget nothing fits is an error
//! that says how much the smallest chunk needs.

use liger_ir::schedule::{Cost, Dims};
use liger_ir::{Schedule, Strategy};

use crate::Error;

/// Options of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunOptions {
    /// Target rows equal to this are invalid.
    pub ignore_index: i64,
    /// Working-memory budget in bytes (chunk buffers, row values, group buffers).
    pub chunk_memory: usize,
    /// A strategy to force instead of the planner's choice.
    pub schedule: Option<Strategy>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            ignore_index: -100,
            chunk_memory: 256 << 20,
            schedule: None,
        }
    }
}

/// The planner's decision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// The strategy.
    pub strategy: Strategy,
    /// Rows per chunk (per sub-chunk for deferred).
    pub chunk_rows: usize,
    /// Estimated working memory in bytes.
    pub estimate: usize,
    /// The strategy's cost at these sizes.
    pub cost: Cost,
    /// Whether the strategy was forced.
    pub forced: bool,
}

/// Parses a size such as `256MiB`, `2GiB`, `512k`, `1000000`.
pub fn parse_bytes(s: &str) -> Result<usize, Error> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let x: f64 = num
        .parse()
        .map_err(|_| Error::BadSize { value: s.into() })?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(Error::BadSize { value: s.into() }),
    };
    Ok((x * mult) as usize)
}

/// Picks a strategy and chunk size for `dims` under `budget` bytes.
pub fn plan(
    sched: &Schedule,
    dims: &Dims,
    budget: usize,
    force: Option<Strategy>,
) -> Result<Plan, Error> {
    let candidates: Vec<Strategy> = match force {
        Some(s) => {
            if !sched.candidates.contains(&s) {
                let names: Vec<&str> = sched.candidates.iter().map(|c| c.name()).collect();
                let why = match (s, sched.row_local) {
                    (Strategy::Fused, false) => format!(
                        "the loss is not row-local: a row's gradient waits for its {}",
                        sched
                            .group_level
                            .map_or("group".to_string(), |l| l.name().to_string())
                    ),
                    (Strategy::Deferred, false) => {
                        "the gradient does not factor as c_row * U".into()
                    }
                    _ => "the loss is row-local: it runs fused".into(),
                };
                return Err(Error::Schedule {
                    schedule: s.name(),
                    why: format!("{why}; applicable: {}", names.join(", ")),
                });
            }
            vec![s]
        }
        None => sched.candidates.clone(),
    };
    let rows = dims.rows.max(1);
    let mut best: Option<Plan> = None;
    let mut smallest_need = f64::INFINITY;
    for s in candidates {
        let cost = sched.cost(s, dims);
        let need_min = cost.fixed + cost.per_row * cost.min_rows as f64;
        smallest_need = smallest_need.min(need_min);
        if need_min > budget as f64 {
            continue;
        }
        let mut chunk = ((budget as f64 - cost.fixed) / cost.per_row.max(1.0)).floor() as usize;
        chunk = chunk.clamp(cost.min_rows, rows.max(cost.min_rows));
        if s == Strategy::GroupAligned {
            let g = cost.min_rows.max(1);
            chunk = (chunk / g).max(1) * g;
        }
        let estimate = (cost.fixed + cost.per_row * chunk as f64).ceil() as usize;
        let p = Plan {
            strategy: s,
            chunk_rows: chunk,
            estimate,
            cost,
            forced: force.is_some(),
        };
        let better = match &best {
            None => true,
            Some(b) => (p.cost.gemm_flops, p.cost.bytes) < (b.cost.gemm_flops, b.cost.bytes),
        };
        if better {
            best = Some(p);
        }
    }
    best.ok_or_else(|| Error::Budget {
        budget,
        needed: smallest_need.ceil() as usize,
    })
}
