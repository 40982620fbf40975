//! The planner: a strategy and a chunk size that fit a memory budget — one planner for every
//! backend.
//!
//! For every applicable strategy of the schedule (or the one an option forces) the backend's
//! [`MemoryModel`] gives working memory as `fixed + per_row · chunk_rows` (and the smallest
//! chunk); the largest chunk that fits the budget is taken (whole groups for group-aligned),
//! and among the strategies that fit, the one with the least GEMM work (the IR's cost model,
//! [`liger_ir::Pipeline::cost`]), then the schedule's order (group-aligned before deferred:
//! measured faster on the H200 where both fit, although deferred reads the logits less — the
//! cost model's byte count is reported, not ranked, until a measured model replaces it). A
//! budget nothing fits is an error that says how much the smallest chunk needs.
//!
//! A backend whose gradient GEMMs can read the `dlogits` of several chunks at once (a
//! [`Staging`] in its footprint: CUDA) gets a gradient stage deeper than a chunk for the
//! fused and two-pass strategies: the budget is split between the chunk's logits and the
//! stage's `dlogits` by a roofline model of the GEMMs (`gemm_seconds`), because every
//! `dW` GEMM reads and writes the whole f32 accumulator and every logits or `dx` GEMM reads
//! all of `W`: few deep `dW` GEMMs, and logits chunks just large enough to stay
//! compute-bound.

use liger_ir::schedule::{Cost, Dims};
use liger_ir::{Pipeline, Strategy};

use crate::Error;
use crate::tensor::DType;

/// Options of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunOptions {
    /// Target rows equal to this are invalid.
    pub ignore_index: i64,
    /// Working-memory budget in bytes (chunk buffers, row values, group buffers).
    pub chunk_memory: usize,
    /// A strategy to force instead of the planner's choice.
    pub schedule: Option<Strategy>,
    /// The dtypes gradients are returned in (all f32 by default).
    pub grad_dtypes: GradDTypes,
    /// Time every phase of a CUDA run with device events ([`crate::Report::profile`]); off
    /// by default (the events cost a little).
    pub profile: bool,
    /// A frozen head (a distillation teacher, a reference model) whose weight has more
    /// vocabulary rows than the loss's vocabulary (set by the first head) is used through its
    /// first `V` rows and bias entries (no copy) instead of being refused with
    /// [`crate::Error::HeadVocab`]. Off by default: a vocabulary mismatch is usually a bug,
    /// and nothing is ever padded or cut silently. A trained head is never cut.
    pub vocab_prefix: bool,
    /// Which gradients of the trained heads to compute and return (all by default). A
    /// gradient not asked for costs nothing: no GEMM, no accumulator, no working copy (a
    /// frozen lm-head weight under LoRA needs only `x`; an evaluation pass needs none).
    pub grads: Wanted,
    /// Leave the rows that carry nothing out of the chunk loop (on by default): when the loss
    /// reduces every logit-derived row value under masks read from its inputs (the default
    /// `valid(target)` mask, a `RowMask`), a run of at least [`crate::MIN_DEAD_RUN`] rows
    /// where those masks are all false (an ignored prompt) gets no logits, no stream kernel
    /// and no GEMM, and its `dx` rows are 0.
    /// Results equal the full run's up to the order of floating-point sums. The host paths
    /// (CPU, and CUDA through host tensors) skip; the device API, whose masks stay on the
    /// device, runs every row.
    pub skip_dead_rows: bool,
    /// Rows per chunk and per gradient stage to use instead of the planner's choice (for
    /// measuring plans: `liger bench --chunk-rows`); still checked against the budget and
    /// the strategy (whole groups for group-aligned; a stage deeper than a chunk only where
    /// the backend stages, for fused and two passes). `None`: the planner chooses.
    pub rows: Option<ForcedRows>,
    /// Where `grad W` is accumulated across gradient stages ([`WAccum`]; f32 by default).
    pub w_accum: WAccum,
}

/// Where `grad W` is accumulated across the gradient stages of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WAccum {
    /// In f32 (the default): each stage's GEMM adds into an f32 buffer, rounded once at the
    /// end into the returned dtype; a bf16/f16 `grad W` costs a 4-byte working copy per
    /// element, counted in the budget.
    #[default]
    F32,
    /// In the dtype `grad W` is returned in: each stage's GEMM (f32 inside) adds into the
    /// bf16/f16 gradient and rounds it, so no working copy exists (Liger Kernel's default for
    /// bf16 weights; one rounding per gradient stage instead of one per run). Only where the
    /// gradient's dtype is the GEMM inputs' dtype (bf16 weights with a bf16 `grad W`, f16
    /// with f16): cuBLAS writes a 16-bit result only in its inputs' dtype, so other pairs,
    /// and an f32 `grad W`, accumulate in f32. CUDA only: the CPU executor accumulates in
    /// f32 either way (its result is at least as exact) and counts the copy.
    Output,
}

impl WAccum {
    /// `f32` or `output`.
    pub fn name(self) -> &'static str {
        match self {
            WAccum::F32 => "f32",
            WAccum::Output => "output",
        }
    }

    /// The choice called `name` (`f32` or `output`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "f32" => Some(WAccum::F32),
            "output" => Some(WAccum::Output),
            _ => None,
        }
    }
}

/// A chunk size, and optionally a gradient-stage size, forced on the planner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForcedRows {
    /// Rows per chunk.
    pub chunk: usize,
    /// Rows per gradient stage, a multiple of `chunk` (`None`: one chunk).
    pub stage: Option<usize>,
}

/// Which gradients of each trained head a run computes: `x` (`dL/dx`), `w` (`dL/dW`) and `b`
/// (`dL/db`, for a head with a bias). A gradient left out is `None` in the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// `dL/dx`.
    pub x: bool,
    /// `dL/dW`.
    pub w: bool,
    /// `dL/db`.
    pub b: bool,
}

impl Default for Wanted {
    fn default() -> Self {
        Wanted::ALL
    }
}

impl Wanted {
    /// Every gradient.
    pub const ALL: Wanted = Wanted {
        x: true,
        w: true,
        b: true,
    };
    /// No gradient: loss and metrics only.
    pub const NONE: Wanted = Wanted {
        x: false,
        w: false,
        b: false,
    };

    /// Parses a comma-separated list of `x`, `w`, `b` (`x` for a frozen lm-head weight,
    /// `x,w,b` for all), or `none`.
    pub fn parse(spec: &str) -> Result<Self, Error> {
        let mut out = Wanted::NONE;
        if spec.trim() == "none" {
            return Ok(out);
        }
        for part in spec.split(',') {
            match part.trim() {
                "x" => out.x = true,
                "w" => out.w = true,
                "b" => out.b = true,
                other => {
                    return Err(Error::BadGrads {
                        spec: spec.into(),
                        why: format!(
                            "`{other}` is not a gradient: give a comma-separated list of x, w, b, or none"
                        ),
                    });
                }
            }
        }
        Ok(out)
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            ignore_index: -100,
            chunk_memory: 256 << 20,
            schedule: None,
            grad_dtypes: GradDTypes::default(),
            profile: false,
            vocab_prefix: false,
            grads: Wanted::ALL,
            skip_dead_rows: true,
            rows: None,
            w_accum: WAccum::F32,
        }
    }
}

/// The dtypes of the returned gradients: f32 (the default), bf16 or f16 each. Gradients are
/// always computed and accumulated in f32 (`dW` across chunks included) and rounded once at
/// the end; a non-f32 choice costs an f32 working copy of that gradient during the run, which
/// the planner counts in the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GradDTypes {
    /// `grad x`, `[S,T,H]`.
    pub x: DType,
    /// `grad W`, `[V,H]`.
    pub w: DType,
    /// `grad b`, `[V]`.
    pub b: DType,
}

impl Default for GradDTypes {
    fn default() -> Self {
        GradDTypes {
            x: DType::F32,
            w: DType::F32,
            b: DType::F32,
        }
    }
}

impl GradDTypes {
    /// All three in `dtype`.
    pub fn all(dtype: DType) -> Self {
        GradDTypes {
            x: dtype,
            w: dtype,
            b: dtype,
        }
    }

    /// Parses `f32` / `bf16` / `f16` (all three) or `x=bf16,w=f32,b=f16` (unnamed ones f32).
    pub fn parse(spec: &str) -> Result<Self, Error> {
        let one = |s: &str| -> Result<DType, Error> {
            match s.trim() {
                "f32" => Ok(DType::F32),
                "bf16" => Ok(DType::BF16),
                "f16" => Ok(DType::F16),
                other => Err(Error::BadGradDType {
                    spec: spec.into(),
                    why: format!("`{other}` is not f32, bf16 or f16"),
                }),
            }
        };
        if !spec.contains('=') {
            return Ok(GradDTypes::all(one(spec)?));
        }
        let mut out = GradDTypes::default();
        for part in spec.split(',') {
            let (k, v) = part.split_once('=').ok_or_else(|| Error::BadGradDType {
                spec: spec.into(),
                why: format!("`{part}` is not NAME=DTYPE"),
            })?;
            let d = one(v)?;
            match k.trim() {
                "x" => out.x = d,
                "w" => out.w = d,
                "b" => out.b = d,
                other => {
                    return Err(Error::BadGradDType {
                        spec: spec.into(),
                        why: format!("`{other}` is not a gradient (x, w, b)"),
                    });
                }
            }
        }
        Ok(out)
    }

    /// An error naming the first choice that is not f32, bf16 or f16.
    pub fn check(&self) -> Result<(), Error> {
        for (grad, d) in [("x", self.x), ("w", self.w), ("b", self.b)] {
            if !matches!(d, DType::F32 | DType::BF16 | DType::F16) {
                return Err(Error::GradDType { grad, got: d });
            }
        }
        Ok(())
    }

    /// Bytes of f32 working copies these choices add for a head of `rows` x `h` with `v`
    /// vocabulary entries (and a bias when `bias`), counting only the gradients `wanted`.
    pub fn working_bytes(
        &self,
        rows: usize,
        h: usize,
        v: usize,
        bias: bool,
        wanted: Wanted,
    ) -> usize {
        let f = |on: bool, d: DType, n: usize| {
            if !on || d == DType::F32 { 0 } else { n * 4 }
        };
        f(wanted.x, self.x, rows * h) + f(wanted.w, self.w, v * h) + f(wanted.b && bias, self.b, v)
    }
}

/// The planner's decision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// The strategy.
    pub strategy: Strategy,
    /// Rows per chunk (per sub-chunk for deferred).
    pub chunk_rows: usize,
    /// Rows per gradient stage: the gradient GEMMs run once per stage of whole chunks (a
    /// multiple of `chunk_rows`; equal to it where the stage is the chunk).
    pub stage_rows: usize,
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

/// Working memory of a strategy at the sizes of a run, as a backend counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Bytes independent of the chunk size.
    pub fixed: usize,
    /// Bytes per row of a chunk.
    pub per_row: usize,
    /// The smallest chunk (rows) the strategy can run with.
    pub min_rows: usize,
    /// Bytes of `fixed` that are f32 working copies of gradients returned in bf16/f16.
    pub grad_copies: usize,
    /// Where the gradient GEMMs can run over a stage of several chunks: the stage's bytes
    /// per row (not in `per_row`). `None`: the stage is the chunk.
    pub stage: Option<Staging>,
}

/// The gradient stage of a backend whose gradient GEMMs read the `dlogits` of several chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Staging {
    /// Bytes per stage row (`dlogits` in the GEMM dtype, gathered rows).
    pub per_row: usize,
    /// Bytes of one GEMM operand element (2 for bf16/f16, 4 for f32).
    pub gemm_bytes: usize,
}

impl Footprint {
    /// Bytes of the smallest chunk.
    pub fn least(&self) -> usize {
        let per_row = self.per_row + self.stage.map_or(0, |s| s.per_row);
        self.fixed
            .saturating_add(per_row.saturating_mul(self.min_rows))
    }
}

/// How a backend counts working memory.
pub trait MemoryModel {
    /// The footprint of strategy `s`.
    fn footprint(&self, s: Strategy) -> Footprint;
}

/// The H200's dense bf16 GEMM rate through cuBLAS on random data (measured: 690-710 TFLOP/s),
/// its f32 rate, the bandwidth a GEMM's memory traffic sees (HBM3e, 4.8 TB/s peak) and a
/// GEMM's fixed cost (launch, ramp and tail): the roofline [`gemm_seconds`] ranks splits of
/// the budget with. Only their ratios matter (the model picks, it does not report), and the
/// ridge of other recent GPUs is close.
const RATE_16: f64 = 7.0e14;
const RATE_32: f64 = 5.0e13;
const BANDWIDTH: f64 = 4.0e12;
const GEMM_FIXED: f64 = 2.0e-5;
/// The GEMM tile along the chunk's rows: a chunk is computed in whole tiles.
const ROW_TILE: usize = 128;

/// A GEMM of `2·m·n·k` operations (`m` the chunk's or stage's rows, counted in whole tiles)
/// reading `operands` bytes, overlapped with the compute, and writing (or reading and
/// writing) `epilogue` bytes of f32 output after it: the H200 measured a `dW` GEMM of a
/// shallow stage slower than its compute by about the accumulator's traffic.
fn gemm_seconds(m: usize, n: usize, k: usize, operands: usize, epilogue: usize, e: usize) -> f64 {
    let rate = if e <= 2 { RATE_16 } else { RATE_32 };
    let m = m.next_multiple_of(ROW_TILE) as f64;
    (2.0 * m * n as f64 * k as f64 / rate).max(operands as f64 / BANDWIDTH)
        + epilogue as f64 / BANDWIDTH
        + GEMM_FIXED
}

/// `f(size)` summed over the pieces of `rows` rows cut `size` at a time (the last one shorter).
fn over_pieces(rows: usize, size: usize, f: impl Fn(usize) -> f64) -> f64 {
    let size = size.max(1);
    let (full, rest) = (rows / size, rows % size);
    full as f64 * f(size) + if rest > 0 { f(rest) } else { 0.0 }
}

/// The modelled GEMM time of a chunk loop with chunks of `c` rows and gradient stages of `k`
/// rows: per chunk, every head's logits GEMM (reading all of `W`, writing f32 logits); per
/// stage, a trained head's `dx` GEMM (reading all of `W`) and `dW` GEMM (reading and writing
/// the f32 accumulator).
fn loop_seconds(p: &Pipeline, dims: &Dims, c: usize, k: usize, e: usize) -> f64 {
    let (r, v) = (dims.loop_rows().max(1), dims.vocab);
    let mut t = 0.0;
    for (hp, &h) in p.schedule().heads.iter().zip(&dims.hidden) {
        t += over_pieces(r, c, |c| {
            gemm_seconds(c, v, h, (h * v + c * h) * e, c * v * 4, e)
        });
        if hp.grad.is_none() {
            continue;
        }
        if dims.dx {
            t += over_pieces(r, k, |k| {
                gemm_seconds(k, h, v, (h * v + k * v) * e, k * h * 4, e)
            });
        }
        if dims.dw {
            t += over_pieces(r, k, |k| {
                gemm_seconds(k, v, h, k * (v + h) * e, 8 * h * v, e)
            });
        }
    }
    t
}

/// Splits what `budget` leaves after `fp.fixed` between a chunk's logits (`fp.per_row` a row)
/// and a gradient stage of `n` whole chunks (`st.per_row` a row), `n` from 1 (the chunk
/// without staging, `widest` rows) to 16: the split of least modelled GEMM time
/// ([`loop_seconds`]) by a margin of 1% over larger chunks. Chunks under one row tile are
/// considered only where the widest chunk is one. Returns `(chunk rows, stage rows)`.
fn staged(
    p: &Pipeline,
    dims: &Dims,
    budget: usize,
    fp: &Footprint,
    st: Staging,
    widest: usize,
) -> (usize, usize) {
    let rows = dims.loop_rows().max(1);
    let room = budget.saturating_sub(fp.fixed);
    let mut best = (
        widest,
        widest,
        loop_seconds(p, dims, widest, widest, st.gemm_bytes),
    );
    for n in 2..=16usize {
        let c = (room / (fp.per_row + n * st.per_row).max(1)).min(widest);
        if c == 0 || (c < ROW_TILE && widest >= ROW_TILE) {
            break;
        }
        let k = (n * c).min(rows.next_multiple_of(c));
        let t = loop_seconds(p, dims, c, k, st.gemm_bytes);
        // A deeper stage of smaller chunks must gain 1% (more, smaller GEMMs cost more
        // than the model counts).
        if t < best.2 * 0.99 {
            best = (c, k, t);
        }
    }
    (best.0, best.1)
}

/// Picks a strategy and chunk size for `dims` under `budget` bytes, with the backend's memory
/// model `mem`.
pub fn plan(
    p: &Pipeline,
    dims: &Dims,
    budget: usize,
    force: Option<Strategy>,
    rows_forced: Option<ForcedRows>,
    mem: &dyn MemoryModel,
) -> Result<Plan, Error> {
    let sched = p.schedule();
    if dims.hidden.len() != sched.heads.len() {
        return Err(Error::Internal(format!(
            "the planner got {} hidden sizes for {} heads",
            dims.hidden.len(),
            sched.heads.len()
        )));
    }
    let candidates: Vec<Strategy> = match force {
        Some(s) => vec![p.strategy(Some(s)).map_err(|why| Error::Schedule {
            schedule: s.name(),
            why,
        })?],
        None => sched.candidates.clone(),
    };
    let rows = dims.loop_rows().max(1);
    let mut best: Option<Plan> = None;
    let mut smallest: Option<Footprint> = None;
    // The least a forced chunk and stage need where they do not fit.
    let mut forced_need: Option<usize> = None;
    // Why the first candidate refused them.
    let mut forced_why: Option<String> = None;
    for s in candidates {
        let fp = mem.footprint(s);
        if smallest.is_none_or(|m| fp.least() < m.least()) {
            smallest = Some(fp);
        }
        if fp.least() > budget {
            continue;
        }
        let min = fp.min_rows.max(1);
        let unstaged = fp.per_row + fp.stage.map_or(0, |st| st.per_row);
        // Group-aligned packs whole groups' live rows: a chunk of the live rows rounded up to
        // whole groups holds them all whenever the budget allows.
        let upper = if s == Strategy::GroupAligned {
            rows.next_multiple_of(min)
        } else {
            rows.max(min)
        };
        let mut chunk = ((budget - fp.fixed) / unstaged.max(1)).clamp(min, upper);
        if s == Strategy::GroupAligned {
            chunk = (chunk / min).max(1) * min;
        }
        let mut stage_rows = chunk;
        if let (Some(st), Strategy::Fused | Strategy::TwoPass) = (fp.stage, s) {
            (chunk, stage_rows) = staged(p, dims, budget, &fp, st, chunk);
        }
        if let Some(f) = rows_forced {
            let stage = f.stage.unwrap_or(f.chunk);
            let stages = fp.stage.is_some() && matches!(s, Strategy::Fused | Strategy::TwoPass);
            let why = if f.chunk == 0 {
                Some("a chunk of 0 rows".to_string())
            } else if f.chunk < min || (s == Strategy::GroupAligned && f.chunk % min != 0) {
                Some(format!(
                    "{} needs whole groups of {min} rows per chunk",
                    s.name()
                ))
            } else if stage < f.chunk || stage % f.chunk != 0 {
                Some(format!(
                    "a stage of {stage} rows is not a whole number of {}-row chunks",
                    f.chunk
                ))
            } else if stage != f.chunk && !stages {
                Some(format!(
                    "{} runs its gradient GEMMs per chunk (no deeper stage here)",
                    s.name()
                ))
            } else {
                None
            };
            if let Some(why) = why {
                if force.is_some() {
                    return Err(Error::Rows {
                        chunk: f.chunk,
                        stage,
                        why,
                    });
                }
                forced_why.get_or_insert(why);
                continue;
            }
            (chunk, stage_rows) = (f.chunk, stage);
            let need =
                fp.fixed + fp.per_row * chunk + fp.stage.map_or(0, |st| st.per_row * stage_rows);
            if need > budget {
                forced_need = Some(forced_need.map_or(need, |n: usize| n.min(need)));
                continue;
            }
        }
        let cost = p.cost(s, dims);
        let plan = Plan {
            strategy: s,
            chunk_rows: chunk,
            stage_rows,
            estimate: fp.fixed
                + fp.per_row * chunk
                + fp.stage.map_or(0, |st| st.per_row * stage_rows),
            cost,
            forced: force.is_some(),
        };
        let better = match &best {
            None => true,
            Some(b) => cost.gemm_flops < b.cost.gemm_flops,
        };
        if better {
            best = Some(plan);
        }
    }
    match (best, smallest) {
        (Some(b), _) => Ok(b),
        (None, _) if forced_need.is_some() => Err(Error::Budget {
            budget,
            needed: forced_need.unwrap_or(0),
        }),
        (None, _) if rows_forced.is_some() && force.is_none() => Err(Error::Rows {
            chunk: rows_forced.map_or(0, |f| f.chunk),
            stage: rows_forced.map_or(0, |f| f.stage.unwrap_or(f.chunk)),
            why: forced_why.unwrap_or_else(|| "no applicable schedule takes these sizes".into()),
        }),
        (None, Some(fp)) if fp.grad_copies > 0 && fp.least() - fp.grad_copies <= budget => {
            Err(Error::GradBudget {
                budget,
                needed: fp.least(),
                copies: fp.grad_copies,
            })
        }
        (None, fp) => Err(Error::Budget {
            budget,
            needed: fp.map_or(0, |f| f.least()),
        }),
    }
}

/// How a rank's plan must agree with the others' ([`crate::comm`]).
#[derive(Clone, Copy)]
pub(crate) enum Ranks<'c> {
    /// Data parallel: the same strategy on every rank, fused or two passes.
    Data(&'c dyn crate::comm::Communicator),
    /// Vocab parallel: the same strategy and the same chunks on every rank.
    Vocab(&'c dyn crate::comm::Communicator),
}

/// [`plan`] with `opts`, and for a rank of a group the plan every rank runs (its stages hold
/// the collectives, so every rank must reach them in the same order): data parallel runs fused
/// or two passes (group-aligned and deferred evaluate the group stage once per pack or group,
/// a count that differs between ranks holding different sequences); every rank takes the
/// last strategy in `Strategy::ALL` that any rank picked, and vocab parallel also the smallest
/// chunk any rank planned under it (its reductions combine chunk by chunk).
pub(crate) fn plan_ranked(
    p: &Pipeline,
    dims: &Dims,
    opts: &RunOptions,
    mem: &dyn MemoryModel,
    ranks: Option<Ranks<'_>>,
) -> Result<Plan, Error> {
    let per_group = |s: Strategy| matches!(s, Strategy::GroupAligned | Strategy::Deferred);
    let data = matches!(ranks, Some(Ranks::Data(_)));
    if let (true, Some(s)) = (data, opts.schedule.filter(|s| per_group(*s))) {
        return Err(Error::Schedule {
            schedule: s.name(),
            why: "data-parallel runs use fused or two passes (the group stage of this one \
                  runs once per group, a number that differs between ranks)"
                .into(),
        });
    }
    let budget = opts.chunk_memory;
    let mut pl = plan(p, dims, budget, opts.schedule, opts.rows, mem)?;
    if data && per_group(pl.strategy) {
        pl = plan(p, dims, budget, Some(Strategy::TwoPass), opts.rows, mem)?;
    }
    let Some(rk) = ranks else {
        return Ok(pl);
    };
    let comm = match rk {
        Ranks::Data(c) | Ranks::Vocab(c) => c,
    };
    let ord = |s: Strategy| Strategy::ALL.iter().position(|x| *x == s).unwrap_or(0);
    let mut v = [ord(pl.strategy) as f64];
    comm.all_reduce_max(&mut v)?;
    let agreed = Strategy::ALL[(v[0] as usize).min(Strategy::ALL.len() - 1)];
    if agreed != pl.strategy {
        pl = plan(p, dims, budget, Some(agreed), opts.rows, mem)?;
    }
    if matches!(rk, Ranks::Vocab(_)) {
        let mut c = [-(pl.chunk_rows as f64)];
        comm.all_reduce_max(&mut c)?;
        let chunk = (-c[0]) as usize;
        if chunk != pl.chunk_rows {
            let rows = Some(ForcedRows { chunk, stage: None });
            pl = plan(p, dims, budget, Some(agreed), rows, mem)?;
        }
    }
    Ok(pl)
}
