//! The CPU executor: a differentiated loss on host tensors, chunk by chunk, under a memory
//! budget, never holding `[S·T, V]` logits.
//!
//! It implements the primitives of the strategy driver (`crate::driver`): the lm-head GEMM
//! of a chunk (`matrixmultiply`), the stream programs in f32 on the chunk's rows (rayon across
//! rows, `eval`), `dx = dz W`, `dW += dzᵀ x` into f32 accumulators, `db += Σ dz`, and the
//! whole-batch array stages; the planner ([`crate::plan`]) sizes chunks with this backend's
//! [`MemoryModel`]. Inputs may be bf16, f16, f32 or f64; all arithmetic is f32 (reductions
//! accumulate in f64), with the scalar semantics of `liger_ir::scalar`.

pub(crate) mod eval;
mod gemm;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use liger_ir::schedule::{Dims, Factor};
use liger_ir::stream::{StreamKind, StreamPlan};
use liger_ir::{InputId, OutputKind, Pipeline, Schedule, Strategy, ValueId};

use crate::Error;
use crate::driver::{self, ArrayStage, Backend, Rows};
use crate::host::{self, Arr, HostHead};
use crate::inputs::InputSet;
use crate::output::{GradBuf, HeadGrads, LossOutput, MetricOutput, Report};
use crate::plan::{Footprint, MemoryModel, RunOptions};
use crate::tensor::TensorData;
use eval::{Eval, VBuf};

/// Extra working memory the estimates reserve for GEMM packing buffers and small arrays.
const SLACK: usize = 4 << 20;

/// A head with its f32 weight and, for a gradient head, its f32 accumulators.
struct CpuHead<'a> {
    host: HostHead<'a>,
    /// `W` in f32 (borrowed when the input is f32).
    w: Cow<'a, [f32]>,
    /// The gradient stage's `dlogits` rows (gradient heads).
    dz: Vec<f32>,
    /// The f32 accumulators of the gradients asked for (`RunOptions::grads`).
    dx: Option<Vec<f32>>,
    dw: Option<Vec<f32>>,
    db: Option<Vec<f32>>,
}

/// How the CPU executor counts working memory: the chunk's f32 logits and live vocab buffers
/// per row, whole-batch row arrays, a deferred group's units and scaled rows, f32 copies of
/// non-f32 weights and biases, and a fixed slack for GEMM packing.
struct CpuMemory<'s> {
    sched: &'s Schedule,
    rows: usize,
    vocab: usize,
    hidden: Vec<usize>,
    group_rows: usize,
    converted: usize,
    /// f32 working copies of gradients returned in bf16/f16 (the accumulators the results
    /// are rounded from at the end).
    grad_copies: usize,
}

impl MemoryModel for CpuMemory<'_> {
    fn footprint(&self, s: Strategy) -> Footprint {
        let (r, v) = (self.rows, self.vocab);
        let heads = self.sched.heads.len();
        let hsum: usize = self.hidden.iter().sum();
        let (lf, lb) = self.sched.live(s);
        let lf = lf.max(self.sched.pre_live);
        let row_arrays = r * 4 * (self.sched.row_values + 4);
        let stream_row = v * 4 * (heads + lf) + hsum * 2 * 4;
        let back_row = v * 4 * (heads + lb) + hsum * 2 * 4;
        let fixed = row_arrays + self.converted + self.grad_copies + SLACK;
        let (per_row, fixed, min_rows) = match s {
            Strategy::Fused => (stream_row, fixed, 1),
            Strategy::TwoPass => (stream_row.max(back_row), fixed, 1),
            Strategy::GroupAligned => (stream_row.max(back_row), fixed, self.group_rows),
            Strategy::Deferred => {
                let units = self.sched.factors.as_ref().map_or(0, Vec::len);
                (
                    stream_row,
                    fixed + self.group_rows * v * 4 * units + self.group_rows * hsum * 4,
                    1,
                )
            }
        };
        Footprint {
            fixed,
            per_row,
            min_rows,
            grad_copies: self.grad_copies,
            // The CPU's GEMMs gain nothing from deeper gradient stages: a stage is a chunk.
            stage: None,
        }
    }
}

/// The CPU backend of the strategy driver.
struct Cpu<'f, 'a> {
    p: &'f Pipeline,
    ev: Eval<'f>,
    heads: Vec<CpuHead<'a>>,
    v: usize,
    /// The chunk's rows, in chunk order.
    rows: Vec<usize>,
    /// The chunk's vocab buffers (logits by head node, stream values by node).
    bufs: HashMap<ValueId, VBuf>,
    /// Deferred: per factor, the current group's unit rows `[rows so far, V]`.
    units: Vec<Vec<f32>>,
    factors: Vec<Factor>,
}

impl Cpu<'_, '_> {
    fn head_index(&self, input: InputId) -> Result<usize, Error> {
        self.heads
            .iter()
            .position(|h| h.host.input == input)
            .ok_or_else(|| Error::Internal(format!("no head for input #{}", input.0)))
    }

    fn flat(rows: &Rows) -> Vec<usize> {
        rows.iter().flat_map(|&(a, l)| a..a + l).collect()
    }
}

impl Backend for Cpu<'_, '_> {
    fn array(&mut self, stage: ArrayStage) -> Result<(), Error> {
        for id in stage.nodes(self.p.schedule()) {
            self.ev.eval_array(*id)?;
        }
        Ok(())
    }

    fn logits(&mut self, heads: &[InputId], rows: &Rows) -> Result<(), Error> {
        self.rows = Self::flat(rows);
        self.bufs.clear();
        let (c, v) = (self.rows.len(), self.v);
        for h in &mut self.heads {
            let wanted = heads.contains(&h.host.input);
            if !wanted {
                continue;
            }
            if wanted {
                let xc = host::gather_rows(&h.host.x, self.rows.iter().copied(), h.host.h);
                let mut z = vec![0f32; c * v];
                gemm::logits(&xc, &h.w, h.host.b.as_deref(), c, h.host.h, v, &mut z);
                self.bufs.insert(h.host.node, VBuf::F(z));
            }
        }
        Ok(())
    }

    fn stream(&mut self, plan: &StreamPlan, _rows: &Rows, out_offset: usize) -> Result<(), Error> {
        let keep: Vec<ValueId> = plan.outputs.iter().map(|(_, o)| *o).collect();
        self.ev
            .run_stream(&plan.program, &self.rows, &mut self.bufs, &keep)?;
        // Only the logits and this stream's outputs outlive it.
        let heads: Vec<ValueId> = self.heads.iter().map(|h| h.host.node).collect();
        self.bufs
            .retain(|k, _| heads.contains(k) || keep.contains(k));
        if plan.kind == StreamKind::Unit {
            let v = self.v;
            let c = self.rows.len();
            for (fi, fac) in self.factors.iter().enumerate() {
                let Some(VBuf::F(u)) = self.bufs.get(&fac.unit) else {
                    return Err(Error::Internal("a deferred unit was not computed".into()));
                };
                let buf = &mut self.units[fi];
                buf.resize((out_offset + c) * v, 0.0);
                buf[out_offset * v..(out_offset + c) * v].copy_from_slice(u);
            }
        }
        if matches!(plan.kind, StreamKind::Fused | StreamKind::Backward) {
            // The chunk's dlogits join the gradient stage at row `out_offset`.
            let v = self.v;
            for h in &mut self.heads {
                let Some(gid) = h.host.grad else { continue };
                let Some(VBuf::F(dz)) = self.bufs.remove(&gid) else {
                    return Err(Error::Internal(format!(
                        "the gradient of `{}` was not computed",
                        h.host.name
                    )));
                };
                if out_offset == 0 {
                    h.dz = dz;
                } else {
                    h.dz.truncate(out_offset * v);
                    h.dz.extend_from_slice(&dz);
                }
            }
        }
        Ok(())
    }

    fn grads(&mut self, rows: &Rows) -> Result<(), Error> {
        let stage = Self::flat(rows);
        let (c, v) = (stage.len(), self.v);
        for h in &mut self.heads {
            if h.host.grad.is_none() {
                continue;
            }
            let dz = &h.dz;
            if dz.len() != c * v {
                return Err(Error::Internal(format!(
                    "a gradient stage of {c} rows holds {} dlogits rows of `{}`",
                    dz.len() / v.max(1),
                    h.host.name
                )));
            }
            let hh = h.host.h;
            if let Some(dx) = h.dx.as_mut() {
                let mut dxc = vec![0f32; c * hh];
                gemm::grad_x(dz, &h.w, c, hh, v, &mut dxc);
                for (i, &row) in stage.iter().enumerate() {
                    dx[row * hh..(row + 1) * hh].copy_from_slice(&dxc[i * hh..(i + 1) * hh]);
                }
            }
            if let Some(dw) = h.dw.as_mut() {
                let xs = host::gather_rows(&h.host.x, stage.iter().copied(), hh);
                gemm::grad_w(dz, &xs, c, hh, v, dw);
            }
            if let Some(db) = h.db.as_mut() {
                for row in dz.chunks(v) {
                    for (a, b) in db.iter_mut().zip(row) {
                        *a += b;
                    }
                }
            }
        }
        Ok(())
    }

    fn unit_dx(&mut self, _rows: &Rows, unit_offset: usize) -> Result<(), Error> {
        let (c, v) = (self.rows.len(), self.v);
        for (fi, fac) in self.factors.clone().iter().enumerate() {
            let k = self.head_index(fac.head)?;
            let u = &self.units[fi][unit_offset * v..(unit_offset + c) * v];
            let h = &mut self.heads[k];
            let hh = h.host.h;
            let Some(dx) = h.dx.as_mut() else { continue };
            let mut dxc = vec![0f32; c * hh];
            gemm::grad_x(u, &h.w, c, hh, v, &mut dxc);
            for (i, &row) in self.rows.iter().enumerate() {
                dx[row * hh..(row + 1) * hh].copy_from_slice(&dxc[i * hh..(i + 1) * hh]);
            }
        }
        Ok(())
    }

    fn finish_group(&mut self, group: &Rows) -> Result<(), Error> {
        let rows = Self::flat(group);
        let (gr, v) = (rows.len(), self.v);
        for (fi, fac) in self.factors.clone().iter().enumerate() {
            let coef: Vec<f32> = rows
                .iter()
                .map(|&row| self.ev.row_value(fac.coef, row))
                .collect();
            let k = self.head_index(fac.head)?;
            let units = std::mem::take(&mut self.units[fi]);
            if units.len() != gr * v {
                return Err(Error::Internal(format!(
                    "a deferred group of {gr} rows holds {} unit rows",
                    units.len() / v.max(1)
                )));
            }
            let h = &mut self.heads[k];
            let hh = h.host.h;
            if let Some(dx) = h.dx.as_mut() {
                for (i, &row) in rows.iter().enumerate() {
                    for x in &mut dx[row * hh..(row + 1) * hh] {
                        *x *= coef[i];
                    }
                }
            }
            if let Some(dw) = h.dw.as_mut() {
                let mut xs = host::gather_rows(&h.host.x, rows.iter().copied(), hh);
                for (i, c) in coef.iter().enumerate() {
                    for x in &mut xs[i * hh..(i + 1) * hh] {
                        *x *= c;
                    }
                }
                gemm::grad_w(&units, &xs, gr, hh, v, dw);
            }
            if let Some(db) = h.db.as_mut() {
                for (i, row) in units.chunks(v).enumerate() {
                    for (a, b) in db.iter_mut().zip(row) {
                        *a += coef[i] * b;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Runs the gradient IR of `p` on the CPU.
pub fn run(
    p: &Pipeline,
    inputs: &InputSet<'_>,
    hyper: &BTreeMap<String, f32>,
    opts: &RunOptions,
) -> Result<LossOutput, Error> {
    run_ranked(p, inputs, hyper, opts, None)
}

/// How a rank's run relates to the others' ([`crate::comm`]).
#[derive(Clone, Copy)]
pub(crate) enum Ranked<'c> {
    /// Data parallel: this rank's sequences; whole-batch values combined.
    Data(&'c dyn crate::comm::Communicator),
    /// Vocab parallel: every row, the heads' vocabulary entries `offset..offset + V_r` of
    /// `vocab`; Vocab → Row reductions combined.
    Vocab {
        comm: &'c dyn crate::comm::Communicator,
        offset: usize,
        vocab: usize,
    },
}

/// [`run`] as one rank of a group when `ranked` is given: the strategy (and for vocab parallel
/// the chunk size) is agreed between the ranks, and whole-batch values (data parallel) or
/// Vocab → Row reductions (vocab parallel) combine the ranks' parts ([`crate::comm`]).
pub(crate) fn run_ranked(
    p: &Pipeline,
    inputs: &InputSet<'_>,
    hyper: &BTreeMap<String, f32>,
    opts: &RunOptions,
    ranked: Option<Ranked<'_>>,
) -> Result<LossOutput, Error> {
    let start = Instant::now();
    opts.grad_dtypes.check()?;
    let g = p.grad();
    let sched = p.schedule();
    let ids = match ranked {
        Some(Ranked::Vocab { vocab, .. }) => Some(vocab),
        _ => None,
    };
    let loaded = host::load_ids(g, sched, inputs, hyper, opts, ids)?;
    let (s, t, v) = loaded.dims;
    let r = s * t;
    let mut converted = 0;
    let mut heads = Vec::new();
    for hh in loaded.heads {
        let w: Cow<'_, [f32]> = match hh.w.data() {
            TensorData::F32(x) => Cow::Borrowed(x),
            _ => {
                let w = host::to_f32(&format!("{}.w", hh.name), &hh.w)?;
                converted += w.len() * 4;
                Cow::Owned(w)
            }
        };
        converted += hh.b.as_ref().map_or(0, |b| b.len() * 4);
        let grad = hh.grad.is_some();
        let want = opts.grads;
        heads.push(CpuHead {
            dx: (grad && want.x).then(|| vec![0.0; r * hh.h]),
            dw: (grad && want.w).then(|| vec![0.0; v * hh.h]),
            db: (grad && want.b && hh.b.is_some()).then(|| vec![0.0; v]),
            dz: Vec::new(),
            w,
            host: hh,
        });
    }
    let live = host::live_rows(sched, &loaded.values, r, opts)?;
    let dims = Dims {
        num_seqs: s,
        seq_len: t,
        vocab: v,
        hidden: heads.iter().map(|h| h.host.h).collect(),
        dx: opts.grads.x,
        dw: opts.grads.w,
        live_rows: live.as_ref().map(|l| l.iter().filter(|&&x| x).count()),
    };
    let mem = CpuMemory {
        sched,
        rows: r,
        vocab: v,
        hidden: dims.hidden.clone(),
        group_rows: sched.group_rows(r, t),
        converted,
        grad_copies: heads
            .iter()
            .filter(|h| h.host.grad.is_some())
            .map(|h| {
                opts.grad_dtypes
                    .working_bytes(r, h.host.h, v, h.host.b.is_some(), opts.grads)
            })
            .sum(),
    };
    let ranks = ranked.map(|rk| match rk {
        Ranked::Data(c) => crate::plan::Ranks::Data(c),
        Ranked::Vocab { comm, .. } => crate::plan::Ranks::Vocab(comm),
    });
    let pl = crate::plan::plan_ranked(p, &dims, opts, &mem, ranks)?;

    let skipped_rows = live
        .as_ref()
        .map_or(0, |l| l.iter().filter(|&&x| !x).count());
    let mut ev = Eval::new(g, s, t, v);
    match ranked {
        Some(Ranked::Data(c)) => ev.comm = Some(c),
        Some(Ranked::Vocab {
            comm,
            offset,
            vocab,
        }) => {
            ev.shard = Some(eval::Shard {
                comm,
                offset,
                vocab,
            })
        }
        None => {}
    }
    for (node, arr) in loaded.values {
        ev.load(node, arr);
    }
    let factors = sched.factors.clone().unwrap_or_default();
    let mut cpu = Cpu {
        p,
        ev,
        heads,
        v,
        rows: Vec::new(),
        bufs: HashMap::new(),
        units: vec![Vec::new(); factors.len()],
        factors,
    };
    let streams = sched.streams(g, pl.strategy);
    let groups = sched.groups(s, t);
    let pre = sched.pre_stream_plan(g);
    // Every row value a stream computes exists for the whole batch before the chunk loop:
    // rows the loop skips (and a batch whose every row is skipped) keep zeros there, which
    // only masked reductions read, with those rows masked out.
    for plan in &streams {
        for &id in &plan.program {
            if g.ty(id).level != liger_ir::Level::Vocab {
                cpu.ev.ensure_row_array(id);
            }
        }
    }
    let driven = driver::drive(
        &mut cpu,
        &pl,
        pre.as_ref(),
        &streams,
        &groups,
        r,
        live.as_deref(),
    )?;

    let Cpu { mut ev, heads, .. } = cpu;
    let value = |ev: &Eval<'_>, id: ValueId| -> Vec<f32> {
        match &ev.vals[id.index()] {
            Some(Arr::F(x)) => x.clone(),
            _ => Vec::new(),
        }
    };
    let mut loss = f32::NAN;
    let mut metrics = Vec::new();
    for o in &g.outputs {
        if ev.vals[o.value.index()].is_none() && !matches!(o.kind, OutputKind::Grad(_)) {
            ev.eval_array(o.value)?;
        }
        match &o.kind {
            OutputKind::Loss => loss = value(&ev, o.value).first().copied().unwrap_or(f32::NAN),
            OutputKind::Metric(name) => metrics.push(MetricOutput {
                name: name.clone(),
                level: g.ty(o.value).level,
                values: value(&ev, o.value),
            }),
            OutputKind::Grad(_) => {}
        }
    }
    let report = Report {
        device: "cpu",
        strategy: pl.strategy,
        forced: pl.forced,
        chunk_rows: pl.chunk_rows,
        stage_rows: pl.stage_rows,
        chunks: driven.chunks,
        skipped_rows,
        budget: opts.chunk_memory,
        estimate: pl.estimate,
        gemm_flops: pl.cost.gemm_flops,
        seconds: start.elapsed().as_secs_f64(),
        warnings: ev.findings.outcome()?,
        device_ms: None,
        peak_extra_bytes: None,
        profile: Vec::new(),
    };
    let grads = heads
        .into_iter()
        .filter(|h| h.host.grad.is_some())
        .map(|h| HeadGrads {
            head: h.host.name,
            x: h.dx.map(|x| GradBuf::from_f32(x, opts.grad_dtypes.x)),
            w: h.dw.map(|w| GradBuf::from_f32(w, opts.grad_dtypes.w)),
            b: h.db.map(|b| GradBuf::from_f32(b, opts.grad_dtypes.b)),
        })
        .collect();
    let out = LossOutput {
        loss,
        metrics,
        grads,
        report,
    };
    out.check_finite()?;
    Ok(out)
}

/// Row values and vocab outputs of the vocab streams, for comparing executors.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamsOut {
    /// Row-level stream values, by node, `[S·T]`.
    pub rows: BTreeMap<ValueId, Vec<f32>>,
    /// Vocab outputs (gradients, or deferred units) by head, `[S·T, V]`.
    pub outs: BTreeMap<InputId, Vec<f32>>,
    /// Every non-head input as loaded, by node, for uploading to another executor.
    pub inputs: Vec<(ValueId, Arr)>,
}

/// Runs the vocab streams of `strategy` on given logits (one chunk holding every row, no
/// GEMMs): the CPU side of kernel tests. `logits` maps a head to `[S·T, V]`.
pub fn streams_on_logits(
    p: &Pipeline,
    inputs: &InputSet<'_>,
    hyper: &BTreeMap<String, f32>,
    opts: &RunOptions,
    logits: &BTreeMap<InputId, Vec<f32>>,
    (s, t, v): (usize, usize, usize),
    strategy: Strategy,
) -> Result<StreamsOut, Error> {
    let g = p.grad();
    let sched = p.schedule();
    let mut ev = Eval::new(g, s, t, v);
    let mut out = StreamsOut::default();
    for (node, arr) in host::side_inputs(g, inputs, hyper, opts, (s, t, v))? {
        out.inputs.push((node, arr.clone()));
        ev.load(node, arr);
    }
    for id in &sched.pre {
        ev.eval_array(*id)?;
    }
    let rows: Vec<usize> = (0..s * t).collect();
    if let Some(pp) = sched.pre_stream_plan(g) {
        ev.run_stream(&pp.program, &rows, &mut HashMap::new(), &[])?;
        for id in &sched.pre_late {
            ev.eval_array(*id)?;
        }
    }
    let mut bufs = HashMap::new();
    for h in &sched.heads {
        if let Some(z) = logits.get(&h.input) {
            bufs.insert(h.node, VBuf::F(z.clone()));
        }
    }
    let streams = sched.streams(g, strategy);
    for (k, plan) in streams.iter().enumerate() {
        if k > 0 {
            for id in &sched.group_needed {
                ev.eval_array(*id)?;
            }
            if strategy == Strategy::TwoPass {
                for id in &sched.group {
                    ev.eval_array(*id)?;
                }
            }
        }
        let keep: Vec<ValueId> = plan.outputs.iter().map(|(_, o)| *o).collect();
        ev.run_stream(&plan.program, &rows, &mut bufs, &keep)?;
        for (head, o) in &plan.outputs {
            if let Some(VBuf::F(x)) = bufs.get(o) {
                out.outs.insert(*head, x.clone());
            }
        }
        for id in plan.row_nodes(g) {
            if g.ty(id).dtype == liger_ir::DType::F32
                && let Some(Arr::F(x)) = &ev.vals[id.index()]
            {
                out.rows.insert(id, x.clone());
            }
        }
    }
    Ok(out)
}
