//! The pass structure of a vocab-stream kernel: which row values it computes, in which pass
//! over the vocabulary, and which logits it reads.
//!
//! A vocab stream runs one row at a time. Vocab-level values are never stored: each is an
//! expression of the row's logits and row scalars, recomputed in every pass that needs it.
//! Row reductions are grouped into as few passes as their dependencies allow: pass `k` holds
//! the reductions whose operands need results of pass `k - 1` (`log_softmax` needs the online
//! max/sum-exp of its operand first); `at_target`/`logprob` read one entry after the pass they
//! need; row values that are not reductions are computed between passes. Vocab outputs
//! (gradients or deferred units) are written in one last pass.
//!
//! The schedule derives one [`StreamPlan`] per stream kernel of a strategy
//! ([`crate::Schedule::streams`]); the CUDA emitter follows it pass by pass and the cost model
//! counts its passes, so the two cannot disagree about how often a kernel reads the logits.

use std::collections::{BTreeMap, BTreeSet};

use crate::func::{InputId, InputKind, LossFn, ValueId};
use crate::op::{Op, VocabReduce};
use crate::types::Level;

/// What a stream kernel does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamKind {
    /// The pre stream: row values that reduce head-free vocab values, over every row before
    /// the chunk loop, reading no logits.
    Pre,
    /// The forward stream: row values, no vocab output.
    Forward,
    /// Forward and backward in one pass structure, writing the gradients (row-local losses).
    Fused,
    /// The forward stream writing the deferred units `U` of `dlogits = c_row · U`.
    Unit,
    /// The backward stream after the group stage, writing the gradients.
    Backward,
}

/// A row-level quantity a stream computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RowItem {
    /// A row-level IR node of the program.
    Node(ValueId),
    /// The log-sum-exp of a vocab value (needed by `log_softmax`, `softmax`, `logprob`).
    Lse(ValueId),
}

/// The pass structure of one stream kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamPlan {
    /// What the kernel does.
    pub kind: StreamKind,
    /// The stream program (topological order).
    pub program: Vec<ValueId>,
    /// Vocab outputs: `(head, value)` written in the last pass.
    pub outputs: Vec<(InputId, ValueId)>,
    /// The pass of every row item (0: computed before the first pass over V).
    pub stages: BTreeMap<RowItem, usize>,
    /// Values of row level or coarser the kernel reads from their whole-batch arrays.
    pub externals: BTreeSet<ValueId>,
    /// Heads whose logits the kernel reads.
    pub heads: BTreeSet<InputId>,
    /// Whether the reductions of the last reduction pass run in the pass that writes the
    /// outputs (no output needs them), saving one pass over V.
    pub merged_last: bool,
}

/// The head a node is, if it is a head's input node.
pub fn head_of(f: &LossFn, v: ValueId) -> Option<InputId> {
    match f.node(v).op {
        Op::Input(id) if f.inputs[id.index()].kind.is_head() => Some(id),
        _ => None,
    }
}

/// Whether `v` is a vocab input (`[V]`, broadcast over rows).
pub fn is_vocab_input(f: &LossFn, v: ValueId) -> bool {
    matches!(f.node(v).op, Op::Input(id) if f.inputs[id.index()].kind == InputKind::VocabInput)
}

/// Whether `v` is a vocab value a stream recomputes (vocab level, neither logits nor input).
pub fn is_stream_vocab(f: &LossFn, v: ValueId) -> bool {
    f.ty(v).level == Level::Vocab && head_of(f, v).is_none() && !is_vocab_input(f, v)
}

/// Whether `v` is a constant or a batch size (inlined into kernels, never stored).
pub fn is_inline(f: &LossFn, v: ValueId) -> bool {
    matches!(f.node(v).op, Op::Const(_) | Op::Size(_))
}

/// A reduction over the vocabulary of one row: what a pass over V accumulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// The log-sum-exp of a vocab value (for `log_softmax`, `softmax`, `logprob`).
    Lse(ValueId),
    /// A `VocabReduce` node of the program, of its operand.
    Vocab(VocabReduce, ValueId),
    /// An `argmax` node of the program, of its operand.
    ArgMax(ValueId),
}

impl Reduction {
    /// The reduction row item `it` is, if it is one (`None`: a value computed from earlier
    /// results between passes).
    pub fn of(f: &LossFn, it: RowItem) -> Option<Reduction> {
        match it {
            RowItem::Lse(z) => Some(Reduction::Lse(z)),
            RowItem::Node(v) => match f.node(v).op {
                Op::VocabReduce(r) => Some(Reduction::Vocab(r, f.node(v).args[0])),
                Op::ArgMax => Some(Reduction::ArgMax(f.node(v).args[0])),
                _ => None,
            },
        }
    }

    /// The vocab value it reduces.
    pub fn operand(self) -> ValueId {
        match self {
            Reduction::Lse(z) | Reduction::Vocab(_, z) | Reduction::ArgMax(z) => z,
        }
    }
}

/// Whether row item `it` is a reduction over V (a loop in its pass), rather than a value
/// computed from earlier results.
pub fn is_reduction(f: &LossFn, it: RowItem) -> bool {
    Reduction::of(f, it).is_some()
}

impl StreamPlan {
    /// Derives the pass structure of `program` writing `outputs`.
    pub fn new(
        f: &LossFn,
        kind: StreamKind,
        program: Vec<ValueId>,
        outputs: Vec<(InputId, ValueId)>,
    ) -> StreamPlan {
        let mut b = Build {
            f,
            in_prog: program.iter().copied().collect(),
            stages: BTreeMap::new(),
            externals: BTreeSet::new(),
        };
        for v in program.iter().filter(|v| f.ty(**v).level == Level::Row) {
            b.stage_of(RowItem::Node(*v));
        }
        let mut out_needs = BTreeSet::new();
        for (_, o) in &outputs {
            b.needs(*o, &mut out_needs, &mut BTreeSet::new());
        }
        let out_stage = out_needs
            .into_iter()
            .map(|it| b.stage_of(it))
            .max()
            .unwrap_or(0);
        let last = b.stages.values().copied().max().unwrap_or(0);
        let merged_last = !outputs.is_empty() && last > 0 && out_stage < last;
        let mut heads = BTreeSet::new();
        let mut stack: Vec<ValueId> = program
            .iter()
            .chain(outputs.iter().map(|(_, o)| o))
            .copied()
            .collect();
        let mut seen = BTreeSet::new();
        while let Some(v) = stack.pop() {
            if !seen.insert(v) {
                continue;
            }
            if let Some(h) = head_of(f, v) {
                heads.insert(h);
            }
            if f.ty(v).level == Level::Vocab || b.in_prog.contains(&v) {
                stack.extend(f.node(v).args.iter().copied());
            }
        }
        StreamPlan {
            kind,
            program,
            outputs,
            stages: b.stages,
            externals: b.externals,
            heads,
            merged_last,
        }
    }

    /// Passes over V that reduce (the largest stage).
    pub fn reduction_passes(&self) -> usize {
        self.stages.values().copied().max().unwrap_or(0)
    }

    /// Every pass over V: the reduction passes, plus the one that writes the outputs unless
    /// the last reductions run in it ([`StreamPlan::merged_last`]).
    pub fn passes(&self) -> usize {
        self.reduction_passes() + usize::from(!self.outputs.is_empty() && !self.merged_last)
    }

    /// The row-level nodes of the program (written to their whole-batch arrays).
    pub fn row_nodes(&self, f: &LossFn) -> Vec<ValueId> {
        self.program
            .iter()
            .copied()
            .filter(|v| f.ty(*v).level == Level::Row)
            .collect()
    }

    /// The row items of this stream that value `v` needs through vocab expressions: row
    /// values of the program, and the log-sum-exps that `log_softmax`/`softmax` need.
    pub fn row_needs(&self, f: &LossFn, v: ValueId, out: &mut BTreeSet<RowItem>) {
        let mut b = Build {
            f,
            in_prog: self.program.iter().copied().collect(),
            stages: BTreeMap::new(),
            externals: BTreeSet::new(),
        };
        b.needs(v, out, &mut BTreeSet::new());
    }

    /// The reductions of pass `stage` (in item order).
    pub fn reductions(&self, f: &LossFn, stage: usize) -> Vec<RowItem> {
        self.stages
            .iter()
            .filter(|(it, k)| **k == stage && is_reduction(f, **it))
            .map(|(it, _)| *it)
            .collect()
    }

    /// The row values computed after the reductions of pass `stage` (0: before any pass).
    pub fn points(&self, f: &LossFn, stage: usize) -> Vec<ValueId> {
        self.stages
            .iter()
            .filter(|(it, k)| **k == stage && !is_reduction(f, **it))
            .filter_map(|(it, _)| match it {
                RowItem::Node(v) => Some(*v),
                RowItem::Lse(_) => None,
            })
            .collect()
    }
}

struct Build<'a> {
    f: &'a LossFn,
    in_prog: BTreeSet<ValueId>,
    stages: BTreeMap<RowItem, usize>,
    externals: BTreeSet<ValueId>,
}

impl Build<'_> {
    /// Row items a vocab expression needs, collecting externals on the way.
    fn needs(&mut self, v: ValueId, out: &mut BTreeSet<RowItem>, seen: &mut BTreeSet<ValueId>) {
        let f = self.f;
        if !seen.insert(v) {
            return;
        }
        if !is_stream_vocab(f, v) {
            if is_inline(f, v) || head_of(f, v).is_some() || is_vocab_input(f, v) {
                return;
            }
            if self.in_prog.contains(&v) {
                out.insert(RowItem::Node(v));
            } else {
                self.externals.insert(v);
            }
            return;
        }
        if matches!(f.node(v).op, Op::LogSoftmax | Op::Softmax) {
            out.insert(RowItem::Lse(f.node(v).args[0]));
        }
        for a in f.node(v).args.clone() {
            self.needs(a, out, seen);
        }
    }

    fn stage_of(&mut self, it: RowItem) -> usize {
        if let Some(s) = self.stages.get(&it) {
            return *s;
        }
        let f = self.f;
        let mut deps = BTreeSet::new();
        let loops = is_reduction(f, it);
        match it {
            RowItem::Lse(z) => self.needs(z, &mut deps, &mut BTreeSet::new()),
            RowItem::Node(v) => {
                let node = f.node(v).clone();
                match node.op {
                    Op::VocabReduce(_) | Op::ArgMax => {
                        self.needs(node.args[0], &mut deps, &mut BTreeSet::new());
                    }
                    Op::AtTarget | Op::LogProb => {
                        let (e, t) = (node.args[0], node.args[1]);
                        self.needs(e, &mut deps, &mut BTreeSet::new());
                        self.needs(t, &mut deps, &mut BTreeSet::new());
                        if node.op == Op::LogProb {
                            deps.insert(RowItem::Lse(e));
                        }
                    }
                    _ => {
                        for a in &node.args {
                            self.needs(*a, &mut deps, &mut BTreeSet::new());
                        }
                    }
                }
            }
        }
        let base = deps.iter().map(|d| self.stage_of(*d)).max().unwrap_or(0);
        let s = if loops { base + 1 } else { base };
        self.stages.insert(it, s);
        s
    }
}
