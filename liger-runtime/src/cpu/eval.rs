//! The f32 evaluator of the CPU executor.
//!
//! Values below vocab level live for the whole batch as dense arrays (`Row`: `S·T`, `Seq`:
//! `S`, `Pair`: `P`, `Batch`: 1) and are computed either all at once (pre and group stages)
//! or for the rows of one chunk (row values of the vocab streams). Vocab-level values exist
//! only for the rows of the current chunk, `[c, V]`, and are freed after their last use in the
//! stream program; rows are processed in parallel with rayon. Reductions accumulate in f64.

use std::collections::HashMap;

use liger_ir::op::{Binary, SeqReduce, Size, Unary, VocabReduce};
use liger_ir::scalar;
use liger_ir::{DType, Level, LossFn, Op, ValueId};
use rayon::prelude::*;

use crate::Error;
pub(crate) use crate::host::Arr;
use crate::policy::Findings;

/// A chunk buffer of a vocab-level value, `[c, V]`.
#[derive(Clone, Debug)]
pub enum VBuf {
    /// Floats.
    F(Vec<f32>),
    /// Bools.
    B(Vec<bool>),
}

/// An elementwise float function of up to three operands (the CPU form of the elementwise
/// ops, resolved once per node).
#[derive(Clone, Copy, Debug)]
enum FloatFn {
    Unary(Unary),
    Binary(Binary),
    Clamp,
    /// `broadcast`: the operand itself.
    Identity,
}

impl FloatFn {
    #[inline]
    fn apply(self, a: f32, b: f32, c: f32) -> f32 {
        match self {
            FloatFn::Unary(u) => scalar::unary(u, a),
            FloatFn::Binary(op) => scalar::binary(op, a, b),
            FloatFn::Clamp => scalar::clamp(a, b, c),
            FloatFn::Identity => a,
        }
    }
}

/// The error for an op the CPU evaluator was asked to run where it has no form (a scheduling
/// bug, never a user error).
fn misplaced(op: Op, id: ValueId, where_: &str) -> Error {
    Error::Internal(format!(
        "`{}` ({id}) cannot run {where_} on the CPU",
        op.name()
    ))
}

/// An operand of a vocab-level op for one row: a slice over the vocab, or a value broadcast.
#[derive(Clone, Copy)]
enum Opnd<'a> {
    F(&'a [f32]),
    B(&'a [bool]),
    Fs(f32),
    Bs(bool),
    I(Option<u32>),
}

impl Opnd<'_> {
    #[inline]
    fn f(&self, v: usize) -> f32 {
        match self {
            Opnd::F(x) => x[v],
            Opnd::Fs(x) => *x,
            _ => f32::NAN,
        }
    }
    #[inline]
    fn b(&self, v: usize) -> bool {
        match self {
            Opnd::B(x) => x[v],
            Opnd::Bs(x) => *x,
            _ => false,
        }
    }
}

/// The evaluation state of one run.
pub struct Eval<'f> {
    /// The gradient IR.
    pub f: &'f LossFn,
    /// S
    pub s: usize,
    /// T
    pub t: usize,
    /// V
    pub v: usize,
    /// Whole-batch arrays of non-vocab values (and `[V]` vocab inputs).
    pub vals: Vec<Option<Arr>>,
    /// What the reductions found over no valid row ([`crate::policy`]).
    pub findings: Findings,
    /// Data parallel: whole-batch values combine this rank's partial sums with the others'.
    pub comm: Option<&'f dyn crate::comm::Communicator>,
    /// Vocab parallel: this rank holds vocabulary entries `offset..offset + v` of `vocab`;
    /// every Vocab → Row reduction combines the ranks' partial results.
    pub shard: Option<Shard<'f>>,
}

/// This rank's shard of the vocabulary (vocab parallel).
#[derive(Clone, Copy)]
pub struct Shard<'f> {
    /// The group.
    pub comm: &'f dyn crate::comm::Communicator,
    /// Its first vocabulary entry.
    pub offset: usize,
    /// The whole vocabulary.
    pub vocab: usize,
}

impl<'f> Eval<'f> {
    /// A fresh state.
    pub fn new(f: &'f LossFn, s: usize, t: usize, v: usize) -> Self {
        Eval {
            f,
            s,
            t,
            v,
            vals: vec![None; f.nodes.len()],
            findings: Findings::default(),
            comm: None,
            shard: None,
        }
    }

    /// Column of global vocabulary entry `k` in this rank's logits (`None`: another rank's).
    fn column(&self, k: u32) -> Option<usize> {
        let k = k as usize;
        match self.shard {
            None => Some(k),
            Some(sh) => (k >= sh.offset && k < sh.offset + self.v).then(|| k - sh.offset),
        }
    }

    /// Per-row `(max, log Σ exp(x − max))` of the whole vocabulary from this rank's parts.
    fn lse_across(&self, parts: &mut [(f32, f32)]) -> Result<(), Error> {
        let Some(sh) = self.shard else {
            return Ok(());
        };
        let mut m: Vec<f64> = parts.iter().map(|p| f64::from(p.0)).collect();
        sh.comm.all_reduce_max(&mut m)?;
        let mut s: Vec<f64> = parts
            .iter()
            .zip(&m)
            .map(|(p, &mx)| {
                if p.0 == f32::NEG_INFINITY {
                    0.0
                } else {
                    (f64::from(p.1) + f64::from(p.0) - mx).exp()
                }
            })
            .collect();
        sh.comm.all_reduce_sum(&mut s)?;
        for ((p, mx), sum) in parts.iter_mut().zip(&m).zip(&s) {
            *p = if *mx == f64::NEG_INFINITY {
                (f32::NEG_INFINITY, 0.0)
            } else {
                (*mx as f32, sum.ln() as f32)
            };
        }
        Ok(())
    }

    /// Per-row values combined over the vocabulary shards with `max` or a sum.
    fn rows_across(&self, vals: &mut [f32], max: bool) -> Result<(), Error> {
        let Some(sh) = self.shard else {
            return Ok(());
        };
        let mut v: Vec<f64> = vals.iter().map(|&x| f64::from(x)).collect();
        if max {
            sh.comm.all_reduce_max(&mut v)?;
        } else {
            sh.comm.all_reduce_sum(&mut v)?;
        }
        for (o, x) in vals.iter_mut().zip(v) {
            *o = x as f32;
        }
        Ok(())
    }

    /// `values` summed over every rank (as they are without a communicator).
    fn across_ranks<const N: usize>(&self, mut values: [f64; N]) -> Result<[f64; N], Error> {
        if let Some(c) = self.comm {
            c.all_reduce_sum(&mut values)?;
        }
        Ok(values)
    }

    fn p(&self) -> usize {
        self.s / 2
    }

    fn size(&self, l: Level) -> usize {
        match l {
            Level::Vocab => self.s * self.t * self.v,
            Level::Row => self.s * self.t,
            Level::Seq => self.s,
            Level::Pair => self.p(),
            Level::Batch => 1,
        }
    }

    /// Index of the element of level `to` containing element `e` of the finer level `from`.
    fn coarsen(&self, mut e: usize, from: Level, to: Level) -> usize {
        if to == Level::Batch {
            return 0;
        }
        let mut l = from;
        while l < to {
            (e, l) = match l {
                Level::Vocab => (e / self.v, Level::Row),
                Level::Row => (e / self.t, Level::Seq),
                Level::Seq => (e % self.p().max(1), Level::Pair),
                _ => (0, Level::Batch),
            };
        }
        e
    }

    fn floats(&self, v: ValueId) -> &[f32] {
        match &self.vals[v.index()] {
            Some(Arr::F(x)) => x,
            _ => &[],
        }
    }
    fn bools(&self, v: ValueId) -> &[bool] {
        match &self.vals[v.index()] {
            Some(Arr::B(x)) => x,
            _ => &[],
        }
    }
    fn idx(&self, v: ValueId) -> &[Option<u32>] {
        match &self.vals[v.index()] {
            Some(Arr::I(x)) => x,
            _ => &[],
        }
    }

    /// Evaluates a non-vocab node for the whole batch.
    pub fn eval_array(&mut self, id: ValueId) -> Result<(), Error> {
        let node = self.f.node(id);
        let lvl = node.ty.level;
        if matches!(node.op, Op::Input(_)) {
            return Ok(());
        }
        if lvl == Level::Pair && !self.s.is_multiple_of(2) {
            return Err(Error::OddSequenceCount { num_seqs: self.s });
        }
        let n = self.size(lvl);
        let args = node.args.clone();
        let lv = |k: usize| self.f.ty(args[k]).level;
        let at = |k: usize, e: usize| self.floats(args[k])[self.coarsen(e, lvl, lv(k))];
        let float = |f: FloatFn| {
            let get = |k: usize, e: usize| if k < args.len() { at(k, e) } else { 0.0 };
            Arr::F(
                (0..n)
                    .map(|e| f.apply(get(0, e), get(1, e), get(2, e)))
                    .collect(),
            )
        };
        let out = match node.op {
            Op::Input(_) => return Ok(()),
            Op::Const(c) => Arr::F(vec![c as f32]),
            Op::Size(sz) => Arr::F(vec![match sz {
                Size::Vocab => self.shard.map_or(self.v, |sh| sh.vocab) as f32,
                Size::SeqLen => self.t as f32,
                // The whole batch's, over every rank.
                Size::NumSeqs => self.across_ranks([self.s as f64])?[0] as f32,
                Size::NumPairs => {
                    if !self.s.is_multiple_of(2) {
                        return Err(Error::OddSequenceCount { num_seqs: self.s });
                    }
                    self.across_ranks([self.p() as f64])?[0] as f32
                }
            }]),
            Op::Unary(u) => float(FloatFn::Unary(u)),
            Op::Binary(b) => float(FloatFn::Binary(b)),
            Op::Clamp => float(FloatFn::Clamp),
            Op::Select => {
                let c = self.bools(args[0]);
                Arr::F(
                    (0..n)
                        .map(|e| {
                            if c[self.coarsen(e, lvl, lv(0))] {
                                at(1, e)
                            } else {
                                at(2, e)
                            }
                        })
                        .collect(),
                )
            }
            Op::Compare(c) => {
                if self.f.ty(args[0]).dtype == DType::Idx {
                    let (a, b) = (self.idx(args[0]), self.idx(args[1]));
                    Arr::B(
                        (0..n)
                            .map(|e| {
                                let x = a[self.coarsen(e, lvl, lv(0))];
                                let y = b[self.coarsen(e, lvl, lv(1))];
                                scalar::compare_idx(c, x, y)
                            })
                            .collect(),
                    )
                } else {
                    Arr::B(
                        (0..n)
                            .map(|e| scalar::compare(c, at(0, e), at(1, e)))
                            .collect(),
                    )
                }
            }
            Op::Valid => Arr::B(self.idx(args[0]).iter().map(Option::is_some).collect()),
            Op::SeqReduce(_) | Op::SeqCount => {
                // `None`: seq_count.
                let red = match node.op {
                    Op::SeqReduce(r) => Some(r),
                    _ => None,
                };
                let (x, mask) = match red {
                    None => (None, args.first().copied()),
                    Some(_) => (Some(args[0]), args.get(1).copied()),
                };
                let mut out = vec![0f32; n];
                for (s, o) in out.iter_mut().enumerate() {
                    let (mut sum, mut count) = (0f64, 0usize);
                    for r in s * self.t..(s + 1) * self.t {
                        if mask.is_none_or(|m| self.bools(m)[r]) {
                            sum += x.map_or(0.0, |x| f64::from(self.floats(x)[r]));
                            count += 1;
                        }
                    }
                    *o = match red {
                        None => count as f32,
                        Some(SeqReduce::Sum) => {
                            if count == 0 && mask.is_some() {
                                self.findings.empty_seq_sum(s);
                            }
                            sum as f32
                        }
                        Some(SeqReduce::MeanOrZero) => (sum / count.max(1) as f64) as f32,
                        Some(SeqReduce::Mean) if count == 0 => {
                            self.findings.empty_seq_mean(s);
                            self.findings.outcome()?;
                            0.0
                        }
                        Some(SeqReduce::Mean) => (sum / count as f64) as f32,
                    };
                }
                Arr::F(out)
            }
            Op::Chosen | Op::Rejected => {
                if !self.s.is_multiple_of(2) {
                    return Err(Error::OddSequenceCount { num_seqs: self.s });
                }
                let x = self.floats(args[0]);
                let off = if node.op == Op::Chosen { 0 } else { n };
                Arr::F((0..n).map(|p| x[off + p]).collect())
            }
            Op::PlaceChosen | Op::PlaceRejected => {
                if !self.s.is_multiple_of(2) {
                    return Err(Error::OddSequenceCount { num_seqs: self.s });
                }
                let x = self.floats(args[0]);
                let p = self.p();
                let chosen = node.op == Op::PlaceChosen;
                Arr::F(
                    (0..n)
                        .map(|s| if (s < p) == chosen { x[s % p] } else { 0.0 })
                        .collect(),
                )
            }
            Op::Sum | Op::Mean | Op::SumAll | Op::MeanAll => {
                let x = self.floats(args[0]);
                let mask = args.get(1).map(|m| self.bools(*m));
                let (mut sum, mut count) = (0f64, 0usize);
                for (e, &xe) in x.iter().enumerate() {
                    if mask.is_none_or(|m| m[e]) {
                        sum += f64::from(xe);
                        count += 1;
                    }
                }
                // Over every rank's rows (data parallel): partial sums and counts combined
                // (a whole-batch operand is every rank's already).
                let [sum, count] = if lv(0) == Level::Batch {
                    [sum, count as f64]
                } else {
                    self.across_ranks([sum, count as f64])?
                };
                let out = match node.op {
                    Op::Mean if lv(0) == Level::Row && count == 0.0 => {
                        self.findings.mean_no_rows = true;
                        0.0
                    }
                    Op::Mean | Op::MeanAll => sum / count,
                    _ => sum,
                };
                Arr::F(vec![out as f32])
            }
            Op::NumValid => {
                let n = self.bools(args[0]).iter().filter(|b| **b).count() as f64;
                Arr::F(vec![self.across_ranks([n])?[0] as f32])
            }
            Op::Broadcast(_) => match &self.vals[args[0].index()] {
                Some(Arr::F(x)) => Arr::F((0..n).map(|e| x[self.coarsen(e, lvl, lv(0))]).collect()),
                Some(Arr::B(x)) => Arr::B((0..n).map(|e| x[self.coarsen(e, lvl, lv(0))]).collect()),
                Some(Arr::I(x)) => Arr::I((0..n).map(|e| x[self.coarsen(e, lvl, lv(0))]).collect()),
                None => return Err(misplaced(node.op, id, "before its operand")),
            },
            op @ (Op::LogSoftmax
            | Op::Softmax
            | Op::VocabReduce(_)
            | Op::AtTarget
            | Op::LogProb
            | Op::ArgMax
            | Op::OneHot) => return Err(misplaced(op, id, "as a whole-batch value")),
        };
        self.vals[id.index()] = Some(out);
        Ok(())
    }

    /// Allocates row arrays for row-level stream values (written chunk by chunk).
    pub fn ensure_row_array(&mut self, id: ValueId) {
        if self.vals[id.index()].is_some() {
            return;
        }
        let r = self.s * self.t;
        self.vals[id.index()] = Some(match self.f.ty(id).dtype {
            DType::F32 => Arr::F(vec![0.0; r]),
            DType::Bool => Arr::B(vec![false; r]),
            DType::Idx => Arr::I(vec![None; r]),
        });
    }

    /// The operand `arg` of a vocab-level op at local row `i` (global row `r`).
    fn opnd<'b>(
        &'b self,
        arg: ValueId,
        i: usize,
        r: usize,
        bufs: &'b HashMap<ValueId, VBuf>,
    ) -> Opnd<'b> {
        let v = self.v;
        if let Some(b) = bufs.get(&arg) {
            return match b {
                VBuf::F(x) => Opnd::F(&x[i * v..(i + 1) * v]),
                VBuf::B(x) => Opnd::B(&x[i * v..(i + 1) * v]),
            };
        }
        let ty = self.f.ty(arg);
        if ty.level == Level::Vocab {
            // A vocab input: one `[V]` array for every row.
            return match &self.vals[arg.index()] {
                Some(Arr::F(x)) => Opnd::F(x),
                Some(Arr::B(x)) => Opnd::B(x),
                _ => Opnd::Fs(f32::NAN),
            };
        }
        let e = self.coarsen(r, Level::Row, ty.level);
        match &self.vals[arg.index()] {
            Some(Arr::F(x)) => Opnd::Fs(x[e]),
            Some(Arr::B(x)) => Opnd::Bs(x[e]),
            Some(Arr::I(x)) => Opnd::I(x[e]),
            None => Opnd::Fs(f32::NAN),
        }
    }

    /// Runs a stream program for the chunk `rows`; `bufs` holds the heads' logits (by input
    /// node) and receives the vocab values; vocab values not in `keep` are dropped after their
    /// last use. Row-level values are written into the whole-batch arrays.
    pub fn run_stream(
        &mut self,
        program: &[ValueId],
        rows: &[usize],
        bufs: &mut HashMap<ValueId, VBuf>,
        keep: &[ValueId],
    ) -> Result<(), Error> {
        let f = self.f;
        let mut last: HashMap<ValueId, usize> = HashMap::new();
        for (k, id) in program.iter().enumerate() {
            for a in &f.node(*id).args {
                last.insert(*a, k);
            }
        }
        for (k, &id) in program.iter().enumerate() {
            let node = f.node(id);
            if node.ty.level == Level::Vocab {
                let buf = self.vocab_node(id, rows, bufs)?;
                bufs.insert(id, buf);
            } else {
                self.ensure_row_array(id);
                self.row_node(id, rows, bufs)?;
            }
            for a in &node.args {
                let is_input = matches!(f.node(*a).op, Op::Input(_));
                if !is_input && last.get(a) == Some(&k) && !keep.contains(a) {
                    bufs.remove(a);
                }
            }
        }
        Ok(())
    }

    fn vocab_node(
        &self,
        id: ValueId,
        rows: &[usize],
        bufs: &HashMap<ValueId, VBuf>,
    ) -> Result<VBuf, Error> {
        let f = self.f;
        let node = f.node(id);
        let v = self.v;
        let c = rows.len();
        let args = &node.args;
        let float = |fun: FloatFn| {
            let mut out = vec![0f32; c * v];
            out.par_chunks_mut(v).enumerate().for_each(|(i, o)| {
                let get = |k: usize| args.get(k).map(|a| self.opnd(*a, i, rows[i], bufs));
                let (a, b, cc) = (get(0), get(1), get(2));
                // Fast paths for the products and differences gradients are made of.
                match (fun, a, b) {
                    (FloatFn::Binary(Binary::Mul), Some(Opnd::F(x)), Some(Opnd::F(y))) => o
                        .iter_mut()
                        .zip(x.iter().zip(y))
                        .for_each(|(ov, (p, q))| *ov = p * q),
                    (FloatFn::Binary(Binary::Mul), Some(Opnd::Fs(s)), Some(Opnd::F(y)))
                    | (FloatFn::Binary(Binary::Mul), Some(Opnd::F(y)), Some(Opnd::Fs(s))) => {
                        o.iter_mut().zip(y).for_each(|(ov, q)| *ov = s * q)
                    }
                    (FloatFn::Binary(Binary::Sub), Some(Opnd::F(x)), Some(Opnd::F(y))) => o
                        .iter_mut()
                        .zip(x.iter().zip(y))
                        .for_each(|(ov, (p, q))| *ov = p - q),
                    (FloatFn::Binary(Binary::Add), Some(Opnd::F(x)), Some(Opnd::F(y))) => o
                        .iter_mut()
                        .zip(x.iter().zip(y))
                        .for_each(|(ov, (p, q))| *ov = p + q),
                    _ => {
                        let (a, b, cc) = (
                            a.unwrap_or(Opnd::Fs(0.0)),
                            b.unwrap_or(Opnd::Fs(0.0)),
                            cc.unwrap_or(Opnd::Fs(0.0)),
                        );
                        for (k, ov) in o.iter_mut().enumerate() {
                            *ov = fun.apply(a.f(k), b.f(k), cc.f(k));
                        }
                    }
                }
            });
            VBuf::F(out)
        };
        Ok(match node.op {
            Op::LogSoftmax | Op::Softmax => {
                let mut out = vec![0f32; c * v];
                let soft = node.op == Op::Softmax;
                // The rows' normalisers, over every vocabulary shard.
                let mut parts: Vec<(f32, f32)> = (0..c)
                    .into_par_iter()
                    .map(|i| match self.opnd(args[0], i, rows[i], bufs) {
                        Opnd::F(z) => scalar::lse_parts(z),
                        _ => (f32::NAN, f32::NAN),
                    })
                    .collect();
                self.lse_across(&mut parts)?;
                out.par_chunks_mut(v).enumerate().for_each(|(i, o)| {
                    let Opnd::F(z) = self.opnd(args[0], i, rows[i], bufs) else {
                        return;
                    };
                    for (ov, zv) in o.iter_mut().zip(z) {
                        let y = scalar::log_softmax_at(*zv, parts[i]);
                        *ov = if soft { y.exp() } else { y };
                    }
                });
                VBuf::F(out)
            }
            Op::OneHot => {
                let mut out = vec![0f32; c * v];
                let t = self.idx(args[0]);
                for (i, &r) in rows.iter().enumerate() {
                    if let Some(k) = t[r].and_then(|k| self.column(k)) {
                        out[i * v + k] = 1.0;
                    }
                }
                VBuf::F(out)
            }
            Op::Compare(cmp) => {
                let mut out = vec![false; c * v];
                out.par_chunks_mut(v).enumerate().for_each(|(i, o)| {
                    let a = self.opnd(args[0], i, rows[i], bufs);
                    let b = self.opnd(args[1], i, rows[i], bufs);
                    for (k, ov) in o.iter_mut().enumerate() {
                        *ov = scalar::compare(cmp, a.f(k), b.f(k));
                    }
                });
                VBuf::B(out)
            }
            Op::Select => {
                let mut out = vec![0f32; c * v];
                out.par_chunks_mut(v).enumerate().for_each(|(i, o)| {
                    let cnd = self.opnd(args[0], i, rows[i], bufs);
                    let a = self.opnd(args[1], i, rows[i], bufs);
                    let b = self.opnd(args[2], i, rows[i], bufs);
                    for (k, ov) in o.iter_mut().enumerate() {
                        *ov = if cnd.b(k) { a.f(k) } else { b.f(k) };
                    }
                });
                VBuf::F(out)
            }
            Op::Unary(u) => float(FloatFn::Unary(u)),
            Op::Binary(b) => float(FloatFn::Binary(b)),
            Op::Clamp => float(FloatFn::Clamp),
            Op::Broadcast(_) => float(FloatFn::Identity),
            op @ (Op::Input(_)
            | Op::Const(_)
            | Op::Size(_)
            | Op::VocabReduce(_)
            | Op::AtTarget
            | Op::LogProb
            | Op::ArgMax
            | Op::Valid
            | Op::SeqReduce(_)
            | Op::SeqCount
            | Op::Chosen
            | Op::Rejected
            | Op::PlaceChosen
            | Op::PlaceRejected
            | Op::Sum
            | Op::Mean
            | Op::SumAll
            | Op::MeanAll
            | Op::NumValid) => return Err(misplaced(op, id, "in a vocab stream")),
        })
    }

    fn row_node(
        &mut self,
        id: ValueId,
        rows: &[usize],
        bufs: &HashMap<ValueId, VBuf>,
    ) -> Result<(), Error> {
        let f = self.f;
        let node = f.node(id);
        let args = node.args.clone();
        // Values for the chunk's rows, then written into the whole-batch array.
        enum Col {
            F(Vec<f32>),
            B(Vec<bool>),
            I(Vec<Option<u32>>),
        }
        let row_vocab = |i: usize| -> Result<&[f32], Error> {
            match self.opnd(args[0], i, rows[i], bufs) {
                Opnd::F(z) => Ok(z),
                _ => Err(misplaced(node.op, id, "without its vocab operand")),
            }
        };
        let float = |fun: FloatFn| {
            Col::F(
                rows.iter()
                    .enumerate()
                    .map(|(i, &r)| {
                        let get =
                            |k: usize| args.get(k).map_or(0.0, |a| self.opnd(*a, i, r, bufs).f(0));
                        fun.apply(get(0), get(1), get(2))
                    })
                    .collect(),
            )
        };
        let col = match node.op {
            Op::VocabReduce(VocabReduce::LogSumExp) if self.shard.is_some() => {
                let mut parts = (0..rows.len())
                    .into_par_iter()
                    .map(|i| row_vocab(i).map(scalar::lse_parts))
                    .collect::<Result<Vec<(f32, f32)>, Error>>()?;
                self.lse_across(&mut parts)?;
                Col::F(
                    parts
                        .iter()
                        .map(|&(m, ls)| if m == f32::NEG_INFINITY { m } else { m + ls })
                        .collect(),
                )
            }
            Op::VocabReduce(red) => {
                let mut vals = (0..rows.len())
                    .into_par_iter()
                    .map(|i| row_vocab(i).map(|z| scalar::vocab_reduce(red, z)))
                    .collect::<Result<Vec<f32>, Error>>()?;
                self.rows_across(&mut vals, red == VocabReduce::Max)?;
                Col::F(vals)
            }
            Op::AtTarget | Op::LogProb => {
                let t: Vec<Option<u32>> = rows.iter().map(|&r| self.idx(args[1])[r]).collect();
                let logprob = node.op == Op::LogProb;
                // `z_t` where this rank holds it, 0 elsewhere: summed over the shards.
                let mut zt = (0..rows.len())
                    .into_par_iter()
                    .map(|i| {
                        let z = row_vocab(i)?;
                        Ok(t[i].and_then(|k| self.column(k)).map_or(0.0, |k| z[k]))
                    })
                    .collect::<Result<Vec<f32>, Error>>()?;
                self.rows_across(&mut zt, false)?;
                if logprob {
                    // `(z_t − m) − log Σ exp(z − m)`: a common offset cancels.
                    let mut parts = (0..rows.len())
                        .into_par_iter()
                        .map(|i| row_vocab(i).map(scalar::lse_parts))
                        .collect::<Result<Vec<(f32, f32)>, Error>>()?;
                    self.lse_across(&mut parts)?;
                    for (i, z) in zt.iter_mut().enumerate() {
                        *z = match t[i] {
                            None => 0.0,
                            Some(_) => scalar::log_softmax_at(*z, parts[i]),
                        };
                    }
                }
                Col::F(zt)
            }
            Op::ArgMax => {
                let best = (0..rows.len())
                    .into_par_iter()
                    .map(|i| {
                        let z = row_vocab(i)?;
                        let mut best = (0usize, f32::NEG_INFINITY);
                        for (k, &x) in z.iter().enumerate() {
                            if x > best.1 || k == 0 {
                                best = (k, x);
                            }
                        }
                        Ok(best)
                    })
                    .collect::<Result<Vec<(usize, f32)>, Error>>()?;
                let off = self.shard.map_or(0, |sh| sh.offset);
                let mut idx: Vec<u32> = best.iter().map(|b| (b.0 + off) as u32).collect();
                if self.shard.is_some() {
                    // The largest value over the shards, then the first entry holding it.
                    let mut top: Vec<f32> = best.iter().map(|b| b.1).collect();
                    self.rows_across(&mut top, true)?;
                    let mut neg: Vec<f32> = best
                        .iter()
                        .zip(&top)
                        .map(|(b, &m)| {
                            if b.1 == m {
                                -((b.0 + off) as f32)
                            } else {
                                f32::NEG_INFINITY
                            }
                        })
                        .collect();
                    self.rows_across(&mut neg, true)?;
                    // A row of NaNs matches nowhere: entry 0, as on one device.
                    idx = neg
                        .iter()
                        .map(|&x| if x.is_finite() { (-x) as u32 } else { 0 })
                        .collect();
                }
                Col::I(idx.into_iter().map(Some).collect())
            }
            Op::Select => Col::F(
                rows.iter()
                    .enumerate()
                    .map(|(i, &r)| {
                        let c = self.opnd(args[0], i, r, bufs);
                        if c.b(0) {
                            self.opnd(args[1], i, r, bufs).f(0)
                        } else {
                            self.opnd(args[2], i, r, bufs).f(0)
                        }
                    })
                    .collect(),
            ),
            Op::Compare(cmp) => Col::B(
                rows.iter()
                    .enumerate()
                    .map(|(i, &r)| {
                        let (a, b) = (
                            self.opnd(args[0], i, r, bufs),
                            self.opnd(args[1], i, r, bufs),
                        );
                        match (a, b) {
                            (Opnd::I(x), Opnd::I(y)) => scalar::compare_idx(cmp, x, y),
                            _ => scalar::compare(cmp, a.f(0), b.f(0)),
                        }
                    })
                    .collect(),
            ),
            Op::Unary(u) => float(FloatFn::Unary(u)),
            Op::Binary(b) => float(FloatFn::Binary(b)),
            Op::Clamp => float(FloatFn::Clamp),
            Op::Broadcast(_) => float(FloatFn::Identity),
            op @ (Op::Input(_)
            | Op::Const(_)
            | Op::Size(_)
            | Op::LogSoftmax
            | Op::Softmax
            | Op::OneHot
            | Op::Valid
            | Op::SeqReduce(_)
            | Op::SeqCount
            | Op::Chosen
            | Op::Rejected
            | Op::PlaceChosen
            | Op::PlaceRejected
            | Op::Sum
            | Op::Mean
            | Op::SumAll
            | Op::MeanAll
            | Op::NumValid) => return Err(misplaced(op, id, "per row in a stream")),
        };
        match (&mut self.vals[id.index()], col) {
            (Some(Arr::F(a)), Col::F(c)) => rows.iter().zip(c).for_each(|(&r, x)| a[r] = x),
            (Some(Arr::B(a)), Col::B(c)) => rows.iter().zip(c).for_each(|(&r, x)| a[r] = x),
            (Some(Arr::I(a)), Col::I(c)) => rows.iter().zip(c).for_each(|(&r, x)| a[r] = x),
            _ => return Err(misplaced(node.op, id, "into an array of another dtype")),
        }
        Ok(())
    }

    /// The value of `id` (row level or coarser) at row `r`.
    pub fn row_value(&self, id: ValueId, r: usize) -> f32 {
        let l = self.f.ty(id).level;
        let e = self.coarsen(r, Level::Row, l);
        self.floats(id).get(e).copied().unwrap_or(f32::NAN)
    }

    /// Loads a non-head input.
    pub fn load(&mut self, id: ValueId, arr: Arr) {
        self.vals[id.index()] = Some(arr);
    }
}
