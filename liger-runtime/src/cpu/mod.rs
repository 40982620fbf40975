//! The CPU executor: a differentiated loss on host tensors, chunk by chunk, under a memory
//! budget, never holding `[S·T, V]` logits.
//!
//! Order of work: check and load the inputs (shapes, dtypes, token ranges, non-finite values);
//! derive the schedule and plan a strategy and chunk size; compute the pre stage (whole-batch
//! values that need no logits: masks, counts, denominators); run the strategy's vocab streams
//! (lm-head GEMM per chunk, f32 stream programs, `dx = dz W`, `dW += dzᵀ x` into f32
//! accumulators, `db += Σ dz`); compute the group stage; return loss, metrics, gradients and a
//! report. Inputs may be bf16, f16, f32 or f64; all arithmetic is f32 (reductions accumulate in
//! f64).

pub(crate) mod eval;
mod gemm;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use liger_ir::schedule::Dims;
use liger_ir::{InputKind, Level, LossFn, OutputKind, Schedule, Strategy, ValueId};

use crate::Error;
use crate::check;
use crate::inputs::{InputSet, InputValue};
use crate::output::{GradBuf, HeadGrads, LossOutput, MetricOutput, Report};
use crate::plan::{RunOptions, plan};
use crate::tensor::{TensorData, TensorView};
use eval::{Arr, Eval, VBuf};

/// Extra working memory the estimates reserve for GEMM packing buffers and small arrays.
const SLACK: usize = 4 << 20;

pub(crate) struct HeadRt<'a> {
    pub(crate) name: String,
    pub(crate) node: ValueId,
    pub(crate) x: TensorView<'a>,
    pub(crate) w_view: TensorView<'a>,
    w: Cow<'a, [f32]>,
    pub(crate) b: Option<Vec<f32>>,
    pub(crate) h: usize,
    pub(crate) grad: Option<ValueId>,
    dx: Vec<f32>,
    dw: Vec<f32>,
    db: Option<Vec<f32>>,
}

fn check_finite(name: &str, data: TensorData<'_>) -> Result<(), Error> {
    let bad = |index: usize, value: f64| {
        Err(Error::NonFinite {
            input: name.into(),
            index,
            value,
        })
    };
    match data {
        TensorData::F32(x) => {
            if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                return bad(i, f64::from(x[i]));
            }
        }
        TensorData::F64(x) => {
            if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                return bad(i, x[i]);
            }
        }
        TensorData::BF16(x) => {
            if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                return bad(i, x[i].to_f64());
            }
        }
        TensorData::F16(x) => {
            if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                return bad(i, x[i].to_f64());
            }
        }
        _ => {}
    }
    Ok(())
}

fn to_f32(name: &str, t: &TensorView<'_>) -> Result<Vec<f32>, Error> {
    Ok(match t.data() {
        TensorData::F32(x) => x.to_vec(),
        TensorData::F64(x) => x.iter().map(|&v| v as f32).collect(),
        TensorData::BF16(x) => x.iter().map(|v| v.to_f32()).collect(),
        TensorData::F16(x) => x.iter().map(|v| v.to_f32()).collect(),
        _ => {
            return Err(Error::InputDType {
                input: name.into(),
                expected: "a float type (bf16, f16, f32, f64)",
                got: t.dtype(),
            });
        }
    })
}

/// Rows `rows` of `x [R,H]` as f32 `[c,H]`.
fn gather_rows(x: &TensorView<'_>, rows: &[usize], h: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * h);
    for &r in rows {
        let range = r * h..(r + 1) * h;
        match x.data() {
            TensorData::F32(d) => out.extend_from_slice(&d[range]),
            TensorData::F64(d) => out.extend(d[range].iter().map(|&v| v as f32)),
            TensorData::BF16(d) => out.extend(d[range].iter().map(|v| v.to_f32())),
            TensorData::F16(d) => out.extend(d[range].iter().map(|v| v.to_f32())),
            _ => out.extend(std::iter::repeat_n(0.0, h)),
        }
    }
    out
}

/// Loads every input that is not a head into `ev` (checking shapes, dtypes, token ranges and
/// finite values).
fn load_side_inputs(
    ev: &mut Eval<'_>,
    g: &LossFn,
    inputs: &InputSet<'_>,
    hyper: &BTreeMap<String, f32>,
    opts: &RunOptions,
    (s, t, v): (usize, usize, usize),
) -> Result<(), Error> {
    let r = s * t;
    for (k, input) in g.inputs.iter().enumerate() {
        if input.kind.is_head() {
            continue;
        }
        let name = input.name.as_str();
        let Some(node) = g.input_node(liger_ir::InputId(k as u32)) else {
            continue;
        };
        if input.kind == InputKind::Param {
            let x = hyper
                .get(name)
                .copied()
                .ok_or_else(|| Error::MissingHyper { name: name.into() })?;
            ev.load(node, input.kind, Arr::F(vec![x]));
            continue;
        }
        let tv = match inputs.get(name) {
            Some(InputValue::Tensor(t)) => t,
            other => {
                return Err(check::tensor_missing(
                    &g.name,
                    input,
                    matches!(other, Some(InputValue::Head(_))),
                ));
            }
        };
        check::side_shape(input, tv.shape(), (s, t, v))?;
        let arr = match input.kind {
            InputKind::Target | InputKind::Tokens => {
                let ids: Vec<i64> = match tv.data() {
                    TensorData::I64(x) => x.to_vec(),
                    TensorData::I32(x) => x.iter().map(|&v| i64::from(v)).collect(),
                    _ => {
                        return Err(Error::InputDType {
                            input: name.into(),
                            expected: "token ids (i64 or i32)",
                            got: tv.dtype(),
                        });
                    }
                };
                let mut out = Vec::with_capacity(r);
                for (i, &id) in ids.iter().enumerate() {
                    if input.kind == InputKind::Target && id == opts.ignore_index {
                        out.push(None);
                    } else if id < 0 || id as u64 >= v as u64 {
                        return Err(Error::TargetOutOfRange {
                            input: name.into(),
                            seq: i / t,
                            pos: i % t,
                            value: id,
                            vocab: v,
                            ignore_index: opts.ignore_index,
                        });
                    } else {
                        out.push(Some(id as u32));
                    }
                }
                Arr::I(out)
            }
            InputKind::RowMask | InputKind::SeqMask => Arr::B(tv.to_bool(name)?),
            _ => {
                check_finite(name, tv.data())?;
                Arr::F(to_f32(name, tv)?)
            }
        };
        ev.load(node, input.kind, arr);
    }
    Ok(())
}

/// Inputs checked and loaded: heads (sizes, dtypes, finite values), every other input in an
/// evaluator, and `(S, T, V)`.
pub(crate) struct Prepared<'f, 'a> {
    pub(crate) heads: Vec<HeadRt<'a>>,
    pub(crate) ev: Eval<'f>,
    pub(crate) dims: (usize, usize, usize),
}

/// Checks and loads every input of `g` (shared by the CPU and CUDA executors).
pub(crate) fn prepare<'f, 'a>(
    g: &'f LossFn,
    sched: &Schedule,
    inputs: &InputSet<'a>,
    hyper: &BTreeMap<String, f32>,
    opts: &RunOptions,
    host_grads: bool,
) -> Result<Prepared<'f, 'a>, Error> {
    let loss_name = g.name.clone();
    // Heads: sizes, dtypes, finite values.
    let mut heads: Vec<HeadRt<'_>> = Vec::new();
    let mut dims: Option<(usize, usize, usize)> = None;
    for hp in &sched.heads {
        let name = hp.name.as_str();
        let head = match inputs.get(name) {
            Some(InputValue::Head(h)) => h,
            other => {
                return Err(check::head_missing(
                    &loss_name,
                    name,
                    matches!(other, Some(InputValue::Tensor(_))),
                ));
            }
        };
        let (s, t, v, h) = check::head_shapes(
            name,
            head.x.shape(),
            head.w.shape(),
            head.b.as_ref().map(TensorView::shape),
            &mut dims,
        )?;
        for (part, view) in [("x", &head.x), ("w", &head.w)] {
            if !view.dtype().is_float() {
                return Err(Error::InputDType {
                    input: format!("{name}.{part}"),
                    expected: "a float type (bf16, f16, f32, f64)",
                    got: view.dtype(),
                });
            }
            check_finite(&format!("{name}.{part}"), view.data())?;
        }
        let b = match &head.b {
            Some(b) => {
                check_finite(&format!("{name}.b"), b.data())?;
                Some(to_f32(&format!("{name}.b"), b)?)
            }
            None => None,
        };
        let w: Cow<'_, [f32]> = match head.w.data() {
            TensorData::F32(x) => Cow::Borrowed(x),
            _ if host_grads => Cow::Owned(to_f32(&format!("{name}.w"), &head.w)?),
            _ => Cow::Borrowed(&[]),
        };
        let grad = if host_grads { hp.grad } else { None };
        let r = s * t;
        heads.push(HeadRt {
            name: name.into(),
            node: hp.node,
            x: head.x.clone(),
            w_view: head.w.clone(),
            w,
            db: grad.and(b.as_ref()).map(|_| vec![0.0; v]),
            b,
            h,
            grad: hp.grad,
            dx: if grad.is_some() {
                vec![0.0; r * h]
            } else {
                Vec::new()
            },
            dw: if grad.is_some() {
                vec![0.0; v * h]
            } else {
                Vec::new()
            },
        });
    }
    let Some((s, t, v)) = dims else {
        return Err(Error::MissingInput {
            loss: loss_name,
            name: "a head".into(),
            kind: "logits",
        });
    };

    // Other inputs.
    let mut ev = Eval::new(g, s, t, v);
    load_side_inputs(&mut ev, g, inputs, hyper, opts, (s, t, v))?;
    check::names_and_pairs(g, sched, inputs.names(), s)?;

    Ok(Prepared {
        heads,
        ev,
        dims: (s, t, v),
    })
}

/// Runs the gradient IR `g` on the CPU.
pub fn run(
    g: &LossFn,
    inputs: &InputSet<'_>,
    hyper: &BTreeMap<String, f32>,
    opts: &RunOptions,
) -> Result<LossOutput, Error> {
    let start = Instant::now();
    opts.grad_dtypes.check()?;
    let sched = Schedule::of(g);
    let Prepared {
        mut heads,
        mut ev,
        dims: (s, t, v),
    } = prepare(g, &sched, inputs, hyper, opts, true)?;
    let r = s * t;

    // Plan.
    let group_rows = match sched.group_level {
        Some(Level::Seq) => t,
        Some(Level::Pair) => 2 * t,
        Some(_) => r,
        None => 1,
    };
    let mut hidden = [0usize; 4];
    for (k, h) in heads.iter().enumerate().take(4) {
        hidden[k] = h.h;
    }
    let dims = Dims {
        rows: r,
        vocab: v,
        hidden,
        group_rows,
    };
    let converted: usize = heads
        .iter()
        .map(|h| {
            if matches!(h.w, Cow::Owned(_)) {
                h.w.len() * 4
            } else {
                0
            }
        })
        .sum::<usize>()
        + heads
            .iter()
            .map(|h| h.b.as_ref().map_or(0, |b| b.len() * 4))
            .sum::<usize>();
    let fixed_extra = converted + SLACK;
    let budget_left = opts.chunk_memory.saturating_sub(fixed_extra);
    let mut p = plan(&sched, &dims, budget_left, opts.schedule).map_err(|e| match e {
        Error::Budget { needed, .. } => Error::Budget {
            budget: opts.chunk_memory,
            needed: needed + fixed_extra,
        },
        other => other,
    })?;
    p.estimate += fixed_extra;

    // Pre stage.
    for id in &sched.pre {
        ev.eval_array(*id)?;
    }

    let fwd = sched.forward_program(g, p.strategy);
    let bwd = sched.backward_program(g, p.strategy);
    let read_fwd = sched.heads_read(g, &fwd);
    let read_bwd = sched.heads_read(g, &bwd);
    let grads: Vec<ValueId> = heads.iter().filter_map(|h| h.grad).collect();
    let mut chunks = 0usize;
    let n_chunks = |c: usize| r.div_ceil(c.max(1));
    crate::progress::start(match p.strategy {
        Strategy::Fused => n_chunks(p.chunk_rows),
        Strategy::TwoPass => 2 * n_chunks(p.chunk_rows),
        Strategy::GroupAligned | Strategy::Deferred => 0,
    });

    // Helpers over heads.
    let logits_for = |heads: &[HeadRt<'_>],
                      read: &[bool],
                      rows: &[usize],
                      bufs: &mut HashMap<usize, VBuf>|
     -> Vec<Option<Vec<f32>>> {
        let mut xs = Vec::new();
        for (k, h) in heads.iter().enumerate() {
            if !read.get(k).copied().unwrap_or(false) && h.grad.is_none() {
                xs.push(None);
                continue;
            }
            let xc = gather_rows(&h.x, rows, h.h);
            if read.get(k).copied().unwrap_or(false) {
                let mut z = vec![0f32; rows.len() * v];
                gemm::logits(&xc, &h.w, h.b.as_deref(), rows.len(), h.h, v, &mut z);
                bufs.insert(h.node.index(), VBuf::F(z));
            }
            xs.push(Some(xc));
        }
        xs
    };
    let apply_grads = |heads: &mut [HeadRt<'_>],
                       xs: &[Option<Vec<f32>>],
                       rows: &[usize],
                       bufs: &HashMap<usize, VBuf>| {
        for (k, h) in heads.iter_mut().enumerate() {
            let (Some(gid), Some(Some(xc))) = (h.grad, xs.get(k)) else {
                continue;
            };
            let Some(VBuf::F(dz)) = bufs.get(&gid.index()) else {
                continue;
            };
            let c = rows.len();
            let mut dxc = vec![0f32; c * h.h];
            gemm::grad_x(dz, &h.w, c, h.h, v, &mut dxc);
            for (i, &row) in rows.iter().enumerate() {
                h.dx[row * h.h..(row + 1) * h.h].copy_from_slice(&dxc[i * h.h..(i + 1) * h.h]);
            }
            gemm::grad_w(dz, xc, c, h.h, v, &mut h.dw);
            if let Some(db) = h.db.as_mut() {
                for row in dz.chunks(v) {
                    for (a, b) in db.iter_mut().zip(row) {
                        *a += b;
                    }
                }
            }
        }
    };
    let contiguous = |chunk: usize| -> Vec<Vec<usize>> {
        (0..r)
            .step_by(chunk.max(1))
            .map(|a| (a..(a + chunk).min(r)).collect())
            .collect()
    };
    let groups: Vec<Vec<usize>> = match sched.group_level {
        Some(Level::Seq) => (0..s).map(|q| (q * t..(q + 1) * t).collect()).collect(),
        Some(Level::Pair) => {
            let pp = s / 2;
            (0..pp)
                .map(|i| {
                    (i * t..(i + 1) * t)
                        .chain((pp + i) * t..(pp + i + 1) * t)
                        .collect()
                })
                .collect()
        }
        _ => vec![(0..r).collect()],
    };
    match p.strategy {
        Strategy::GroupAligned => crate::progress::start(
            groups
                .len()
                .div_ceil((p.chunk_rows / group_rows.max(1)).max(1)),
        ),
        Strategy::Deferred => crate::progress::start(
            groups
                .iter()
                .map(|g| g.len().div_ceil(p.chunk_rows.max(1)))
                .sum(),
        ),
        _ => {}
    }

    match p.strategy {
        Strategy::Fused => {
            for rows in contiguous(p.chunk_rows) {
                let mut bufs = HashMap::new();
                let xs = logits_for(&heads, &read_fwd, &rows, &mut bufs);
                ev.run_stream(&fwd, &rows, &mut bufs, &grads)?;
                apply_grads(&mut heads, &xs, &rows, &bufs);
                chunks += 1;
                crate::progress::step();
            }
        }
        Strategy::TwoPass => {
            for rows in contiguous(p.chunk_rows) {
                let mut bufs = HashMap::new();
                let no_grad: Vec<bool> = read_fwd.clone();
                for (k, h) in heads.iter().enumerate() {
                    if no_grad.get(k).copied().unwrap_or(false) {
                        let xc = gather_rows(&h.x, &rows, h.h);
                        let mut z = vec![0f32; rows.len() * v];
                        gemm::logits(&xc, &h.w, h.b.as_deref(), rows.len(), h.h, v, &mut z);
                        bufs.insert(h.node.index(), VBuf::F(z));
                    }
                }
                ev.run_stream(&fwd, &rows, &mut bufs, &[])?;
                chunks += 1;
                crate::progress::step();
            }
            for id in &sched.group {
                ev.eval_array(*id)?;
            }
            for rows in contiguous(p.chunk_rows) {
                let mut bufs = HashMap::new();
                let xs = logits_for(&heads, &read_bwd, &rows, &mut bufs);
                ev.run_stream(&bwd, &rows, &mut bufs, &grads)?;
                apply_grads(&mut heads, &xs, &rows, &bufs);
                chunks += 1;
                crate::progress::step();
            }
        }
        Strategy::GroupAligned => {
            let per = (p.chunk_rows / group_rows.max(1)).max(1);
            let read: Vec<bool> = read_fwd
                .iter()
                .zip(&read_bwd)
                .map(|(a, b)| *a || *b)
                .collect();
            for gs in groups.chunks(per) {
                let rows: Vec<usize> = gs.iter().flatten().copied().collect();
                let mut bufs = HashMap::new();
                let xs = logits_for(&heads, &read, &rows, &mut bufs);
                ev.run_stream(&fwd, &rows, &mut bufs, &[])?;
                bufs.retain(|k, _| heads.iter().any(|h| h.node.index() == *k));
                for id in &sched.group_needed {
                    ev.eval_array(*id)?;
                }
                ev.run_stream(&bwd, &rows, &mut bufs, &grads)?;
                apply_grads(&mut heads, &xs, &rows, &bufs);
                chunks += 1;
                crate::progress::step();
            }
        }
        Strategy::Deferred => {
            let factors = sched.factors.clone().unwrap_or_default();
            let units: Vec<ValueId> = factors.iter().map(|x| x.unit).collect();
            for rows_g in &groups {
                let gr = rows_g.len();
                // Per factor: the group's unit rows.
                let mut ubuf: Vec<Vec<f32>> = factors.iter().map(|_| vec![0f32; gr * v]).collect();
                let mut offset = 0usize;
                for rows in rows_g.chunks(p.chunk_rows.max(1)) {
                    let mut bufs = HashMap::new();
                    let _ = logits_for(&heads, &read_fwd, rows, &mut bufs);
                    ev.run_stream(&fwd, rows, &mut bufs, &units)?;
                    for (fi, fac) in factors.iter().enumerate() {
                        let Some(VBuf::F(u)) = bufs.get(&fac.unit.index()) else {
                            continue;
                        };
                        ubuf[fi][offset * v..(offset + rows.len()) * v].copy_from_slice(u);
                        let Some(h) = heads.iter_mut().find(|h| {
                            h.grad.is_some() && liger_ir::InputId(h_index(g, h.node)) == fac.head
                        }) else {
                            continue;
                        };
                        let mut dxc = vec![0f32; rows.len() * h.h];
                        gemm::grad_x(u, &h.w, rows.len(), h.h, v, &mut dxc);
                        for (i, &row) in rows.iter().enumerate() {
                            h.dx[row * h.h..(row + 1) * h.h]
                                .copy_from_slice(&dxc[i * h.h..(i + 1) * h.h]);
                        }
                    }
                    offset += rows.len();
                    chunks += 1;
                    crate::progress::step();
                }
                for id in &sched.group_needed {
                    ev.eval_array(*id)?;
                }
                for (fi, fac) in factors.iter().enumerate() {
                    let coef: Vec<f32> = rows_g
                        .iter()
                        .map(|&row| ev.row_value(fac.coef, row))
                        .collect();
                    let Some(h) = heads
                        .iter_mut()
                        .find(|h| liger_ir::InputId(h_index(g, h.node)) == fac.head)
                    else {
                        continue;
                    };
                    for (i, &row) in rows_g.iter().enumerate() {
                        for x in &mut h.dx[row * h.h..(row + 1) * h.h] {
                            *x *= coef[i];
                        }
                    }
                    let mut xs = gather_rows(&h.x, rows_g, h.h);
                    for (i, c) in coef.iter().enumerate() {
                        for x in &mut xs[i * h.h..(i + 1) * h.h] {
                            *x *= c;
                        }
                    }
                    gemm::grad_w(&ubuf[fi], &xs, gr, h.h, v, &mut h.dw);
                    if let Some(db) = h.db.as_mut() {
                        for (i, row) in ubuf[fi].chunks(v).enumerate() {
                            for (a, b) in db.iter_mut().zip(row) {
                                *a += coef[i] * b;
                            }
                        }
                    }
                }
            }
        }
    }

    // Group stage: every remaining whole-batch value (loss and metrics).
    for id in &sched.group {
        ev.eval_array(*id)?;
    }
    let value = |ev: &Eval<'_>, id: ValueId| -> Vec<f32> {
        match &ev.vals[id.index()] {
            Some(Arr::F(x)) => x.clone(),
            _ => Vec::new(),
        }
    };
    let mut loss = f32::NAN;
    let mut metrics = Vec::new();
    for o in &g.outputs {
        match &o.kind {
            OutputKind::Loss => loss = value(&ev, o.value).first().copied().unwrap_or(f32::NAN),
            OutputKind::Metric(name) => {
                let id = o.value;
                if ev.vals[id.index()].is_none() {
                    ev.eval_array(id)?;
                }
                metrics.push(MetricOutput {
                    name: name.clone(),
                    level: g.ty(id).level,
                    values: value(&ev, id),
                });
            }
            OutputKind::Grad(_) => {}
        }
    }
    let report = Report {
        device: "cpu",
        strategy: p.strategy,
        forced: p.forced,
        chunk_rows: p.chunk_rows,
        chunks,
        budget: opts.chunk_memory,
        estimate: p.estimate,
        gemm_flops: p.cost.gemm_flops,
        seconds: start.elapsed().as_secs_f64(),
        warnings: std::mem::take(&mut ev.warnings),
        device_ms: None,
        peak_extra_bytes: None,
        profile: Vec::new(),
    };
    let grads = heads
        .into_iter()
        .filter(|h| h.grad.is_some())
        .map(|h| HeadGrads {
            head: h.name,
            x: GradBuf::from_f32(h.dx, opts.grad_dtypes.x),
            w: GradBuf::from_f32(h.dw, opts.grad_dtypes.w),
            b: h.db.map(|b| GradBuf::from_f32(b, opts.grad_dtypes.b)),
        })
        .collect();
    Ok(LossOutput {
        loss,
        metrics,
        grads,
        report,
    })
}

/// The input index of a head's input node.
fn h_index(g: &LossFn, node: ValueId) -> u32 {
    match g.node(node).op {
        liger_ir::Op::Input(id) => id.0,
        _ => u32::MAX,
    }
}

/// Row values and vocab outputs of the vocab streams, for comparing executors.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamsOut {
    /// Row-level stream values, by node id, `[S·T]`.
    pub rows: BTreeMap<u32, Vec<f32>>,
    /// Vocab outputs (gradients, or deferred units) by head input index, `[S·T, V]`.
    pub outs: BTreeMap<usize, Vec<f32>>,
    /// Every non-head input as loaded (f32, masks as 0/1, indices with -1 for invalid rows),
    /// by node id, for uploading to another executor.
    pub inputs: Vec<(u32, HostArray)>,
}

/// A host array of a non-head input.
#[derive(Clone, Debug, PartialEq)]
pub enum HostArray {
    /// Floats (and masks as 0/1).
    F(Vec<f32>),
    /// Indices, -1 for an invalid row.
    I(Vec<i32>),
}

/// Runs the vocab streams of `strategy` on given logits (one chunk holding every row, no
/// GEMMs): the CPU side of kernel tests. `logits` maps a head's input index to `[S·T, V]`.
pub fn streams_on_logits(
    g: &LossFn,
    inputs: &InputSet<'_>,
    hyper: &BTreeMap<String, f32>,
    opts: &RunOptions,
    logits: &BTreeMap<usize, Vec<f32>>,
    (s, t, v): (usize, usize, usize),
    strategy: Strategy,
) -> Result<StreamsOut, Error> {
    let sched = Schedule::of(g);
    let mut ev = Eval::new(g, s, t, v);
    load_side_inputs(&mut ev, g, inputs, hyper, opts, (s, t, v))?;
    let mut out = StreamsOut::default();
    for (k, input) in g.inputs.iter().enumerate() {
        if input.kind.is_head() {
            continue;
        }
        let Some(node) = g.input_node(liger_ir::InputId(k as u32)) else {
            continue;
        };
        if let Some(a) = &ev.vals[node.index()] {
            out.inputs.push((
                node.0,
                match a {
                    Arr::F(x) => HostArray::F(x.clone()),
                    Arr::B(x) => {
                        HostArray::F(x.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect())
                    }
                    Arr::I(x) => {
                        HostArray::I(x.iter().map(|i| i.map_or(-1, |u| u as i32)).collect())
                    }
                },
            ));
        }
    }
    for id in &sched.pre {
        ev.eval_array(*id)?;
    }
    let rows: Vec<usize> = (0..s * t).collect();
    let mut bufs = HashMap::new();
    for h in &sched.heads {
        if let Some(z) = logits.get(&h.input.index()) {
            bufs.insert(h.node.index(), VBuf::F(z.clone()));
        }
    }
    let fwd = sched.forward_program(g, strategy);
    let bwd = sched.backward_program(g, strategy);
    let grads: Vec<(usize, ValueId)> = sched
        .heads
        .iter()
        .filter_map(|h| h.grad.map(|x| (h.input.index(), x)))
        .collect();
    let units: Vec<(usize, ValueId)> = sched
        .factors
        .iter()
        .flatten()
        .map(|f| (f.head.index(), f.unit))
        .collect();
    let keep: Vec<ValueId> = match strategy {
        Strategy::Fused => grads.iter().map(|x| x.1).collect(),
        Strategy::Deferred => units.iter().map(|x| x.1).collect(),
        _ => Vec::new(),
    };
    ev.run_stream(&fwd, &rows, &mut bufs, &keep)?;
    let wanted: Vec<(usize, ValueId)> = match strategy {
        Strategy::Fused => grads.clone(),
        Strategy::Deferred => units,
        Strategy::GroupAligned | Strategy::TwoPass => {
            for id in &sched.group_needed {
                ev.eval_array(*id)?;
            }
            if strategy == Strategy::TwoPass {
                for id in &sched.group {
                    ev.eval_array(*id)?;
                }
            }
            ev.run_stream(
                &bwd,
                &rows,
                &mut bufs,
                &grads.iter().map(|x| x.1).collect::<Vec<_>>(),
            )?;
            grads
        }
    };
    for (slot, id) in wanted {
        if let Some(VBuf::F(x)) = bufs.get(&id.index()) {
            out.outs.insert(slot, x.clone());
        }
    }
    for id in fwd
        .iter()
        .filter(|x| g.ty(**x).level == Level::Row && g.ty(**x).dtype == liger_ir::DType::F32)
    {
        if let Some(Arr::F(x)) = &ev.vals[id.index()] {
            out.rows.insert(id.0, x.clone());
        }
    }
    Ok(out)
}
