//! The schedule pass: how a differentiated loss runs around the lm-head GEMMs, chunk by chunk,
//! without ever holding `[rows, V]` logits for the whole batch (`docs/architecture.md`).
//!
//! From the gradient IR it derives, per node, where it is computed:
//! - **pre**: values that do not depend on any head (masks, counts, side inputs, sizes), for
//!   the whole batch before the chunk loop — the whole-batch denominators;
//! - **stream**: vocab- and row-level values computed from the logits of a chunk's rows that do
//!   not wait for a group (one vocab stream; row results are kept for the whole batch);
//! - **group**: seq/pair/batch values computed from logits, and everything computed from them
//!   that is not vocab-level (tiny, whole batch);
//! - **backward stream**: vocab-level values that need a group value (and row reductions of
//!   them): they run after the group stage.
//!
//! A loss is **row-local** when the backward stream is empty: the gradient of a row needs only
//! its own row and pre-stage values (CE, JSD, token-level GRPO), so one fused pass with any
//! chunking suffices. Otherwise the **group** is the coarsest level of the logit-derived values
//! the backward stream waits for (a sequence, a pair, or the whole batch), and the candidate
//! strategies are: group-aligned chunks, deferred row scaling (when every gradient factors as
//! `c_row · U` with `U` row-local), and two passes (recompute the logits). Each carries a cost
//! model (GEMM FLOPs, bytes, memory per row and fixed memory) that a planner evaluates for the
//! true sizes and a memory budget. Which schedule ran is part of a result and of the kernel-cache
//! key; whether a loss is row-local is derived here, never from its name.

use std::fmt;

use crate::func::{InputId, InputKind, LossFn, OutputKind, ValueId};
use crate::op::Op;
use crate::stream::{StreamKind, StreamPlan};
use crate::types::Level;
use crate::verify::after_group;

/// How the group stage is scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Row-local loss: forward and backward fused in one pass; chunks cut anywhere.
    Fused,
    /// Chunks hold whole groups; their logits are kept between the two streams.
    GroupAligned,
    /// `dlogits = c_row · U`: `U` is kept per group, `c` applied when the group completes.
    Deferred,
    /// Statistics for every row, then the logits are recomputed for the backward stream.
    TwoPass,
}

impl Strategy {
    /// Every strategy.
    pub const ALL: [Strategy; 4] = [
        Strategy::Fused,
        Strategy::GroupAligned,
        Strategy::Deferred,
        Strategy::TwoPass,
    ];

    /// The name used in options, reports and cache keys.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Fused => "fused",
            Strategy::GroupAligned => "group-aligned",
            Strategy::Deferred => "deferred",
            Strategy::TwoPass => "two-pass",
        }
    }

    /// Parses a name.
    pub fn from_name(s: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|x| x.name() == s)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One lm head of the loss.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadPlan {
    /// The input.
    pub input: InputId,
    /// Its name.
    pub name: String,
    /// Its input node.
    pub node: ValueId,
    /// Its gradient output (`logits` heads).
    pub grad: Option<ValueId>,
    /// Whether the backward stream reads its logits (recomputed by two passes).
    pub in_backward: bool,
}

/// The `dlogits = coef · unit` factorisation of one head's gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Factor {
    /// The head.
    pub head: InputId,
    /// The coefficient (row level or coarser, known after the group stage).
    pub coef: ValueId,
    /// The row-local vocab factor.
    pub unit: ValueId,
}

/// Sizes a cost is evaluated at.
#[derive(Clone, Debug, PartialEq)]
pub struct Dims {
    /// Sequences `S`.
    pub num_seqs: usize,
    /// Rows per sequence `T`.
    pub seq_len: usize,
    /// Vocabulary.
    pub vocab: usize,
    /// Hidden size of each head, in [`Schedule::heads`] order (one per head).
    pub hidden: Vec<usize>,
    /// Whether a trained head's `dx` GEMM runs (its gradient is asked for).
    pub dx: bool,
    /// Whether a trained head's `dW` GEMM runs.
    pub dw: bool,
    /// The rows the chunk loop runs when a run leaves dead rows out (masked prompts; see
    /// [`crate::rowskip`]); `None`: every row of the batch.
    pub live_rows: Option<usize>,
}

impl Dims {
    /// Rows of the batch (`S·T`).
    pub fn rows(&self) -> usize {
        self.num_seqs * self.seq_len
    }

    /// Rows the chunk loop runs: the live rows where some are left out, else `S·T`.
    pub fn loop_rows(&self) -> usize {
        self.live_rows.map_or(self.rows(), |l| l.min(self.rows()))
    }
}

/// The work one strategy does at given sizes (what the planner ranks strategies by; memory
/// is the backends' business, see the runtime's planner).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cost {
    /// GEMM floating-point operations.
    pub gemm_flops: f64,
    /// Bytes of fp32 logits read by the stream kernels (once per pass over V, per head read)
    /// and of vocab outputs they write.
    pub bytes: f64,
}

/// The schedule of a gradient IR.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Heads, in input order.
    pub heads: Vec<HeadPlan>,
    /// Whole-batch values that do not depend on any head nor on a vocabulary reduction
    /// (array kernel before the chunk loop).
    pub pre: Vec<ValueId>,
    /// Row values that reduce vocab values of no head (`at_target(class_weight, t)`,
    /// `sum_vocab(onehot(t) * c)`) and what follows from them per row: a vocab stream over
    /// every row, without logits, after `pre` and before the chunk loop.
    pub pre_stream: Vec<ValueId>,
    /// Coarser values computed from `pre_stream` values (array kernel after the pre stream,
    /// before the chunk loop).
    pub pre_late: Vec<ValueId>,
    /// Forward vocab stream (vocab and row values that wait for no group).
    pub stream: Vec<ValueId>,
    /// The group stage (non-vocab values computed from logit-derived coarse values).
    pub group: Vec<ValueId>,
    /// The backward vocab stream (empty for a row-local loss).
    pub backward: Vec<ValueId>,
    /// Vocab-level values of no head (one-hots of targets, vocab inputs): computed where used.
    pub free: Vec<ValueId>,
    /// Whether the loss is row-local.
    pub row_local: bool,
    /// The group the backward stream waits for (`None` when row-local).
    pub group_level: Option<Level>,
    /// Group values the backward stream (or the deferred coefficients) needs.
    pub group_needed: Vec<ValueId>,
    /// Per-head `coef · unit` factorisation, when every gradient has one.
    pub factors: Option<Vec<Factor>>,
    /// Applicable strategies, cheapest in GEMM work first.
    pub candidates: Vec<Strategy>,
    /// Per candidate: most vocab buffers alive at once in its forward and backward streams
    /// (logits excluded).
    pub live: Vec<(Strategy, usize, usize)>,
    /// Number of row-level values kept for the whole batch.
    pub row_values: usize,
    /// Most vocab buffers alive at once in the pre stream (0 without one).
    pub pre_live: usize,
    /// The rows the chunk loop may leave out ([`crate::rowskip`]), when the loss allows it.
    pub skippable: Option<crate::rowskip::SkippableRows>,
}

fn cone(f: &LossFn, roots: &[ValueId], within: &[bool]) -> Vec<bool> {
    let n = f.nodes.len();
    let mut m = vec![false; n];
    for r in roots {
        m[r.index()] = true;
    }
    for i in (0..n).rev() {
        if m[i] {
            for a in &f.nodes[i].args {
                if within[a.index()] {
                    m[a.index()] = true;
                }
            }
        }
    }
    m
}

/// Most vocab buffers alive at once while running `program` in order; `keep` stay alive to
/// the end (gradient outputs, deferred units).
fn live_vocab(f: &LossFn, program: &[ValueId], keep: &[ValueId]) -> usize {
    let n = f.nodes.len();
    let mut last = vec![usize::MAX; n];
    for (k, v) in program.iter().enumerate() {
        for a in &f.node(*v).args {
            last[a.index()] = k;
        }
    }
    for v in keep {
        last[v.index()] = program.len();
    }
    let mut live = 0usize;
    let mut best = 0usize;
    let is_vocab =
        |v: ValueId| f.ty(v).level == Level::Vocab && !matches!(f.node(v).op, Op::Input(_));
    for (k, v) in program.iter().enumerate() {
        if is_vocab(*v) {
            live += 1;
            best = best.max(live);
        }
        // Free operands whose last use this was.
        for a in &f.node(*v).args {
            if is_vocab(*a) && last[a.index()] == k {
                live = live.saturating_sub(1);
            }
        }
        if is_vocab(*v) && last[v.index()] == usize::MAX {
            live = live.saturating_sub(1);
        }
    }
    best
}

impl Schedule {
    /// The forward vocab-stream program of strategy `s`, in topological order: the stream
    /// values the group stage and forward outputs need, plus (fused) the gradients or
    /// (deferred) the row-local units.
    pub fn forward_program(&self, f: &LossFn, s: Strategy) -> Vec<ValueId> {
        let n = f.nodes.len();
        let mut within = vec![false; n];
        for v in self.stream.iter().chain(&self.free) {
            within[v.index()] = true;
        }
        let mut roots: Vec<ValueId> = Vec::new();
        // Row values read by the group and pre stages and forward outputs.
        for v in self.group.iter().chain(self.backward.iter()) {
            roots.extend(
                f.node(*v)
                    .args
                    .iter()
                    .copied()
                    .filter(|a| within[a.index()] && f.ty(*a).level == Level::Row),
            );
        }
        roots.extend(forward_outputs(f).into_iter().filter(|v| within[v.index()]));
        match s {
            Strategy::Fused => roots.extend(self.heads.iter().filter_map(|h| h.grad)),
            Strategy::Deferred => roots.extend(self.factors.iter().flatten().map(|x| x.unit)),
            Strategy::GroupAligned | Strategy::TwoPass => {}
        }
        // Row values the backward stream reads are kept from the forward stream.
        for v in &self.backward {
            roots.extend(
                f.node(*v)
                    .args
                    .iter()
                    .copied()
                    .filter(|a| within[a.index()] && f.ty(*a).level == Level::Row),
            );
        }
        if s != Strategy::Fused {
            // Row values on the gradient path (read by the vocab values the backward stream
            // recomputes, through backward nodes too: `onehot(argmax(z))` under a group-level
            // coefficient needs its `argmax` from the forward stream).
            let grads: Vec<ValueId> = self.heads.iter().filter_map(|h| h.grad).collect();
            let mut through = within.clone();
            for v in &self.backward {
                through[v.index()] = true;
            }
            let c = cone(f, &grads, &through);
            roots.extend(
                (0..n)
                    .filter(|&i| c[i] && within[i] && f.nodes[i].ty.level == Level::Row)
                    .map(|i| ValueId(i as u32)),
            );
        }
        let c = cone(f, &roots, &within);
        (0..n)
            .filter(|&i| c[i] && within[i])
            .map(|i| ValueId(i as u32))
            .collect()
    }

    /// The backward vocab-stream program of strategy `s` (empty for fused and deferred): the
    /// vocab values the gradients need, recomputed from the logits, and the backward stream.
    /// Row values come from the forward stream.
    pub fn backward_program(&self, f: &LossFn, s: Strategy) -> Vec<ValueId> {
        if matches!(s, Strategy::Fused | Strategy::Deferred) {
            return Vec::new();
        }
        let n = f.nodes.len();
        let mut within = vec![false; n];
        for v in self.backward.iter() {
            within[v.index()] = true;
        }
        for v in self.stream.iter().chain(&self.free) {
            if f.ty(*v).level == Level::Vocab {
                within[v.index()] = true;
            }
        }
        let grads: Vec<ValueId> = self.heads.iter().filter_map(|h| h.grad).collect();
        let c = cone(f, &grads, &within);
        (0..n)
            .filter(|&i| c[i] && within[i])
            .map(|i| ValueId(i as u32))
            .collect()
    }

    /// Heads whose logits `program` reads.
    pub fn heads_read(&self, f: &LossFn, program: &[ValueId]) -> Vec<bool> {
        self.heads
            .iter()
            .map(|h| program.iter().any(|v| f.node(*v).args.contains(&h.node)))
            .collect()
    }

    /// Derives the schedule of a differentiated, verified function.
    pub fn of(f: &LossFn) -> Schedule {
        let n = f.nodes.len();
        let mut head_dep = vec![false; n];
        for (i, node) in f.nodes.iter().enumerate() {
            head_dep[i] = match node.op {
                Op::Input(id) => f.inputs[id.index()].kind.is_head(),
                _ => node.args.iter().any(|a| head_dep[a.index()]),
            };
        }
        let level = |i: usize| f.nodes[i].ty.level;
        let everything = vec![true; n];
        let roots: Vec<ValueId> = f.outputs.iter().map(|o| o.value).collect();
        let used = cone(f, &roots, &everything);

        let ids = |pred: &dyn Fn(usize) -> bool| -> Vec<ValueId> {
            (0..n)
                .filter(|&i| used[i] && pred(i))
                .map(|i| ValueId(i as u32))
                .collect()
        };
        let is_input = |i: usize| matches!(f.nodes[i].op, Op::Input(_));
        // Head-independent values that reduce a vocab value (and what follows from them)
        // need a vocab stream of their own before the chunk loop: the row values on the way
        // (the reductions, and row values computed from them and from `pre`) run in the pre
        // stream; everything computed from a coarser result runs after it, in `pre_late`.
        let mut reduces_vocab = vec![false; n];
        let mut late = vec![false; n];
        for (i, node) in f.nodes.iter().enumerate() {
            reduces_vocab[i] = !head_dep[i]
                && level(i) != Level::Vocab
                && (node
                    .args
                    .iter()
                    .any(|a| reduces_vocab[a.index()] || level(a.index()) == Level::Vocab));
            late[i] = reduces_vocab[i]
                && (level(i) > Level::Row || node.args.iter().any(|a| late[a.index()]));
        }
        // A head-free vocabulary reduction that needs a `pre_late` value (a gradient
        // coefficient normalised by a class-weight sum, reducing `c_row · class_weight`) cannot
        // run in the pre stream, which comes before `pre_late`: it runs in the chunk loop's
        // streams like a head-dependent value, and so does everything computed from it.
        let mut late_dep = vec![false; n];
        let mut streamed = vec![false; n];
        for (i, node) in f.nodes.iter().enumerate() {
            let dep = node.args.iter().any(|a| late_dep[a.index()]);
            late_dep[i] = late[i] || dep;
            let moved = reduces_vocab[i] && !late[i] && dep;
            streamed[i] = head_dep[i] || moved || node.args.iter().any(|a| streamed[a.index()]);
        }
        // Values after the group stage: coarser than a row and computed in the chunk loop, or
        // computed from such a value (for a loss without moved reductions, the verifier's
        // `after_group`).
        let mut after = vec![false; n];
        for (i, node) in f.nodes.iter().enumerate() {
            after[i] = (streamed[i] && level(i) > Level::Row)
                || node.args.iter().any(|a| after[a.index()]);
        }
        debug_assert!(
            streamed != head_dep || after == after_group(f),
            "without moved reductions the stage split is the verifier's"
        );
        let mut vocab_after = vec![false; n];
        for (i, node) in f.nodes.iter().enumerate() {
            vocab_after[i] = after[i]
                && (level(i) == Level::Vocab || node.args.iter().any(|a| vocab_after[a.index()]));
        }
        let pre =
            ids(&|i| !streamed[i] && level(i) != Level::Vocab && !is_input(i) && !reduces_vocab[i]);
        let pre_stream = ids(&|i| reduces_vocab[i] && !late[i] && !streamed[i]);
        let pre_late = ids(&|i| late[i] && !streamed[i]);
        let free = ids(&|i| !streamed[i] && level(i) == Level::Vocab && !is_input(i));
        let stream = ids(&|i| streamed[i] && !after[i] && level(i) <= Level::Row && !is_input(i));
        let backward = ids(&|i| vocab_after[i]);
        let group = ids(&|i| after[i] && !vocab_after[i] && level(i) != Level::Vocab);
        let row_local = backward.is_empty();

        // Heads and their gradients.
        let mut heads = Vec::new();
        for (k, input) in f.inputs.iter().enumerate() {
            if !input.kind.is_head() {
                continue;
            }
            let id = InputId(k as u32);
            let Some(node) = f.input_node(id) else {
                continue;
            };
            let grad = f.grads().find(|(h, _)| *h == id).map(|(_, v)| v);
            heads.push(HeadPlan {
                input: id,
                name: input.name.clone(),
                node,
                grad,
                in_backward: false,
            });
        }
        // Logits read by the backward stream (directly, or through stream values it recomputes).
        if !row_local {
            let mut needs = vec![false; n];
            for v in &backward {
                needs[v.index()] = true;
            }
            for i in (0..n).rev() {
                if needs[i] {
                    for a in &f.nodes[i].args {
                        let ai = a.index();
                        if level(ai) == Level::Vocab && (head_dep[ai] || is_input(ai)) {
                            needs[ai] = true;
                        }
                    }
                }
            }
            for h in heads.iter_mut() {
                h.in_backward = needs[h.node.index()];
            }
        }

        // What the backward stream waits for, and how big a group is.
        let mut group_needed = Vec::new();
        let mut group_level = None;
        let factors = if row_local {
            None
        } else {
            factorise(f, &heads, &after, &vocab_after)
        };
        if !row_local {
            let in_group: Vec<bool> = (0..n)
                .map(|i| after[i] && !vocab_after[i] && level(i) != Level::Vocab)
                .collect();
            let mut roots: Vec<ValueId> = Vec::new();
            for v in &backward {
                roots.extend(
                    f.node(*v)
                        .args
                        .iter()
                        .copied()
                        .filter(|a| in_group[a.index()]),
                );
            }
            if let Some(fs) = &factors {
                roots.extend(fs.iter().map(|x| x.coef).filter(|c| in_group[c.index()]));
            }
            let c = cone(f, &roots, &in_group);
            group_needed = (0..n)
                .filter(|&i| c[i])
                .map(|i| ValueId(i as u32))
                .collect();
            // The coarsest logit-derived level the needed group values read.
            let mut lvl = Level::Seq;
            let mut seen = vec![false; n];
            let mut stack: Vec<usize> = group_needed.iter().map(|v| v.index()).collect();
            while let Some(i) = stack.pop() {
                if std::mem::replace(&mut seen[i], true) {
                    continue;
                }
                if streamed[i] && level(i) > Level::Row {
                    lvl = lvl.max(level(i));
                }
                for a in &f.nodes[i].args {
                    if streamed[a.index()] && level(a.index()) != Level::Vocab {
                        stack.push(a.index());
                    }
                }
            }
            group_level = Some(lvl);
        }

        let mut candidates = Vec::new();
        if row_local {
            candidates.push(Strategy::Fused);
        } else {
            candidates.push(Strategy::GroupAligned);
            if factors.is_some() {
                candidates.push(Strategy::Deferred);
            }
        }
        candidates.push(Strategy::TwoPass);

        let row_values = (0..n)
            .filter(|&i| used[i] && level(i) == Level::Row)
            .count();
        let mut sched = Schedule {
            heads,
            pre,
            pre_stream,
            pre_late,
            stream,
            group,
            backward,
            free,
            row_local,
            group_level,
            group_needed,
            factors,
            candidates,
            live: Vec::new(),
            row_values,
            pre_live: 0,
            skippable: crate::rowskip::skippable_rows(f),
        };
        if let Some(pp) = sched.pre_stream_plan(f) {
            sched.pre_live = live_vocab(f, &pp.program, &[]);
        }
        let grads: Vec<ValueId> = sched.heads.iter().filter_map(|h| h.grad).collect();
        for s in sched.candidates.clone() {
            let fwd = sched.forward_program(f, s);
            let keep: Vec<ValueId> = match s {
                Strategy::Fused => grads.clone(),
                Strategy::Deferred => sched.factors.iter().flatten().map(|x| x.unit).collect(),
                _ => Vec::new(),
            };
            let bwd = sched.backward_program(f, s);
            let lf = live_vocab(f, &fwd, &keep);
            let lb = live_vocab(f, &bwd, &grads);
            sched.live.push((s, lf, lb));
        }
        sched
    }

    /// Most vocab buffers alive at once in the forward and backward streams of `s`.
    pub fn live(&self, s: Strategy) -> (usize, usize) {
        self.live
            .iter()
            .find(|(x, ..)| *x == s)
            .map_or((0, 0), |(_, a, b)| (*a, *b))
    }

    /// The cost of `s` at sizes `d`.
    pub fn cost(&self, f: &LossFn, s: Strategy, d: &Dims) -> Cost {
        let (r, v) = (d.loop_rows() as f64, d.vocab as f64);
        let mut flops = 0.0;
        for (k, h) in self.heads.iter().enumerate() {
            let hid = d.hidden.get(k).copied().unwrap_or(0) as f64;
            flops += 2.0 * r * v * hid;
            if h.grad.is_some() {
                flops += 2.0 * r * v * hid * f64::from(u8::from(d.dx) + u8::from(d.dw));
            }
            if s == Strategy::TwoPass && h.in_backward {
                flops += 2.0 * r * v * hid;
            }
        }
        let f32b = 4.0;
        let bytes: f64 = self
            .streams(f, s)
            .iter()
            .map(|k| {
                let reads = (k.passes().max(1) * k.heads.len()) as f64;
                r * v * f32b * (reads + k.outputs.len() as f64)
            })
            .sum();
        Cost {
            gemm_flops: flops,
            bytes,
        }
    }

    /// The stream kernels of strategy `s`, in launch order, with their pass structure.
    pub fn streams(&self, f: &LossFn, s: Strategy) -> Vec<StreamPlan> {
        let grads: Vec<(InputId, ValueId)> = self
            .heads
            .iter()
            .filter_map(|h| h.grad.map(|g| (h.input, g)))
            .collect();
        let fwd = self.forward_program(f, s);
        match s {
            Strategy::Fused => vec![StreamPlan::new(f, StreamKind::Fused, fwd, grads)],
            Strategy::Deferred => {
                let units = self
                    .factors
                    .iter()
                    .flatten()
                    .map(|x| (x.head, x.unit))
                    .collect();
                vec![StreamPlan::new(f, StreamKind::Unit, fwd, units)]
            }
            Strategy::GroupAligned | Strategy::TwoPass => vec![
                StreamPlan::new(f, StreamKind::Forward, fwd, Vec::new()),
                StreamPlan::new(f, StreamKind::Backward, self.backward_program(f, s), grads),
            ],
        }
    }

    /// The pre stream (see [`Schedule::pre_stream`]), when the loss has one: its row values and
    /// the head-free vocab values they reduce.
    pub fn pre_stream_plan(&self, f: &LossFn) -> Option<StreamPlan> {
        if self.pre_stream.is_empty() {
            return None;
        }
        let n = f.nodes.len();
        let mut within = vec![false; n];
        for v in self.pre_stream.iter().chain(&self.free) {
            within[v.index()] = true;
        }
        let c = cone(f, &self.pre_stream, &within);
        let program = (0..n)
            .filter(|&i| c[i] && within[i])
            .map(|i| ValueId(i as u32))
            .collect();
        Some(StreamPlan::new(f, StreamKind::Pre, program, Vec::new()))
    }

    /// Why the schedule cannot run the loss, if it cannot: a vocabulary reduction of a
    /// head-free value that needs a batch value computed from another such reduction (the pre
    /// stream would have to run twice).
    pub fn unschedulable(&self, f: &LossFn) -> Option<String> {
        let bad = self.pre_late.iter().find(|v| {
            f.node(**v)
                .args
                .iter()
                .any(|a| f.ty(*a).level == Level::Vocab)
        })?;
        let names = crate::text::value_names(f);
        Some(format!(
            "{} reduces over the vocabulary a value that needs a batch-level result of another \
             such reduction; the chunked schedule computes those in one pass before the chunk \
             loop, so feed the batch value in through a head (or compute it outside the loss)",
            names.get(bad.index()).map_or("a value", String::as_str)
        ))
    }

    /// Rows of one group for `seq_len` rows per sequence (a sequence, a pair, or the whole
    /// batch of `rows`); 1 for a row-local loss.
    pub fn group_rows(&self, rows: usize, seq_len: usize) -> usize {
        match self.group_level {
            None => 1,
            Some(Level::Seq) => seq_len,
            Some(Level::Pair) => 2 * seq_len,
            Some(_) => rows,
        }
    }

    /// The groups of a batch of `num_seqs` sequences of `seq_len` rows, each as contiguous row
    /// segments `(first row, rows)` (a pair is its chosen and its rejected sequence); one group
    /// of every row for a row-local loss or a batch-level group.
    pub fn groups(&self, num_seqs: usize, seq_len: usize) -> Vec<Vec<(usize, usize)>> {
        let (s, t) = (num_seqs, seq_len);
        match self.group_level {
            Some(Level::Seq) => (0..s).map(|q| vec![(q * t, t)]).collect(),
            Some(Level::Pair) => (0..s / 2)
                .map(|i| vec![(i * t, t), ((s / 2 + i) * t, t)])
                .collect(),
            _ => vec![vec![(0, s * t)]],
        }
    }
}

/// Finds `grad = coef · unit` for every gradient head, with `unit` vocab-level and computable
/// in the forward stream, and `coef` known after the group stage.
fn factorise(
    f: &LossFn,
    heads: &[HeadPlan],
    after: &[bool],
    vocab_after: &[bool],
) -> Option<Vec<Factor>> {
    let mut out = Vec::new();
    for h in heads {
        let Some(g) = h.grad else { continue };
        let node = f.node(g);
        if node.op != Op::Binary(crate::op::Binary::Mul) {
            return None;
        }
        let (a, b) = (node.args[0], node.args[1]);
        let ok = |coef: ValueId, unit: ValueId| {
            f.ty(unit).level == Level::Vocab
                && !after[unit.index()]
                && f.ty(coef).level >= Level::Row
                && !vocab_after[coef.index()]
        };
        let (coef, unit) = if ok(a, b) {
            (a, b)
        } else if ok(b, a) {
            (b, a)
        } else {
            return None;
        };
        out.push(Factor {
            head: h.input,
            coef,
            unit,
        });
    }
    Some(out)
}

impl Schedule {
    /// The schedule as text, naming values as the printer names them in `f`.
    pub fn render(&self, f: &LossFn) -> String {
        let names = crate::text::value_names(f);
        let mut out = String::new();
        let _ = self.write(
            Some(f),
            &mut out,
            &|v: ValueId| names.get(v.index()).cloned().unwrap_or_default(),
            &|h: InputId| {
                f.inputs
                    .get(h.index())
                    .map(|i| i.name.clone())
                    .unwrap_or_default()
            },
        );
        out
    }

    fn write(
        &self,
        func: Option<&LossFn>,
        f: &mut dyn fmt::Write,
        name: &dyn Fn(ValueId) -> String,
        head: &dyn Fn(InputId) -> String,
    ) -> fmt::Result {
        let list = |v: &[ValueId]| v.iter().map(|x| name(*x)).collect::<Vec<_>>().join(" ");
        writeln!(f, "; schedule")?;
        writeln!(
            f,
            "row-local: {}{}",
            self.row_local,
            match self.group_level {
                Some(l) => format!(" (group: {l})"),
                None => String::new(),
            }
        )?;
        for h in &self.heads {
            writeln!(
                f,
                "stage gemm {}: logits = x W^T (+ b){}{}",
                h.name,
                if h.grad.is_some() {
                    "; dx = dlogits W, dW += dlogits^T x"
                } else {
                    " (frozen: forward only)"
                },
                if h.in_backward {
                    "; read again by the backward stream"
                } else {
                    ""
                }
            )?;
        }
        writeln!(
            f,
            "stage pre (whole batch, before the chunk loop): {}",
            list(&self.pre)
        )?;
        if !self.pre_stream.is_empty() {
            writeln!(
                f,
                "stage pre vocab stream (every row, no logits, before the chunk loop): {}",
                list(&self.pre_stream)
            )?;
            writeln!(
                f,
                "stage pre late (whole batch, after the pre stream): {}",
                list(&self.pre_late)
            )?;
        }
        writeln!(f, "stage vocab-stream forward: {}", list(&self.stream))?;
        writeln!(f, "stage free vocab values (no head): {}", list(&self.free))?;
        writeln!(f, "stage group: {}", list(&self.group))?;
        writeln!(f, "stage vocab-stream backward: {}", list(&self.backward))?;
        if let Some(fs) = &self.factors {
            for x in fs {
                writeln!(
                    f,
                    "deferred: d_{} = {} * {}",
                    head(x.head),
                    name(x.coef),
                    name(x.unit)
                )?;
            }
        }
        writeln!(
            f,
            "row values kept for the whole batch: {}",
            self.row_values
        )?;
        let names: Vec<&str> = self.candidates.iter().map(|c| c.name()).collect();
        writeln!(f, "candidates: {}", names.join(", "))?;
        for c in &self.candidates {
            let cost_per = match c {
                Strategy::Fused => {
                    "GEMM: 2RVH per head + 4RVH per gradient head; memory: chunk x V x (heads + live)"
                }
                Strategy::GroupAligned => {
                    "GEMM as fused; memory: whole groups x V x (heads + live)"
                }
                Strategy::Deferred => {
                    "GEMM as fused; memory: group x V (unit) + sub-chunk x V x (heads + live)"
                }
                Strategy::TwoPass => {
                    "GEMM: + 2RVH per head read by the backward stream; memory: one chunk, any T"
                }
            };
            let (lf, lb) = self.live(*c);
            writeln!(
                f,
                "  {}: {cost_per} (live vocab buffers: forward {lf}, backward {lb})",
                c.name()
            )?;
            if let Some(g) = func {
                for k in self.streams(g, *c) {
                    let heads: Vec<String> = k.heads.iter().map(|h| head(*h)).collect();
                    writeln!(
                        f,
                        "    {:?} stream: {} pass(es) over V reading {}{}",
                        k.kind,
                        k.passes(),
                        if heads.is_empty() {
                            "no logits".to_string()
                        } else {
                            heads.join(", ")
                        },
                        if k.outputs.is_empty() {
                            String::new()
                        } else {
                            format!(
                                ", writing {}",
                                k.outputs
                                    .iter()
                                    .map(|(h, _)| format!("d_{}", head(*h)))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }
                    )?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(None, f, &|v: ValueId| format!("%{}", v.0), &|h: InputId| {
            format!("#{}", h.0)
        })
    }
}

/// Whether a head input kind gets gradients.
pub fn is_grad_head(k: InputKind) -> bool {
    k == InputKind::Logits
}

/// The outputs that are not gradients.
pub fn forward_outputs(f: &LossFn) -> Vec<ValueId> {
    f.outputs
        .iter()
        .filter(|o| !matches!(o.kind, OutputKind::Grad(_)))
        .map(|o| o.value)
        .collect()
}
