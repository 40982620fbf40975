//! A vocab stream split into rounds for vocab parallelism: each rank holds a shard of the
//! vocabulary, so every value a stream computes over the whole vocabulary of a row (a
//! reduction, or the entry at the row's target) is a *cross* item: each rank computes its
//! shard's partial, the ranks combine the partials, and only then can anything that depends
//! on it be computed.
//!
//! [`ShardPlan::new`] derives the rounds from a [`StreamPlan`], for any loss: round `k`
//! (`1..=rounds`) computes the partials of the cross items whose inputs are known after round
//! `k - 1`; the final round (`rounds + 1`) computes every row value and writes the row
//! results and the vocab outputs. Between rounds the executor combines round `k`'s partials
//! over the ranks ([`RoundLayout`] says how), in place in one `f32` buffer of
//! [`ShardPlan::slots`] values per row of the chunk (`part[slot · rows + i]`).
//!
//! Partials and how they combine:
//! - the log-sum-exp of a vocab value (`Lse`, and `logsumexp` reductions): the shard's max `m`
//!   and `s = Σ exp(z − m)`; the ranks' max `M` (max all-reduce), then `s · exp(m − M)` summed;
//! - `sum_vocab`: summed; `max_vocab`: max;
//! - `argmax`: the shard's maximum (max) and, where it equals the ranks' maximum, its global
//!   index (min all-reduce; the first index on ties, as on one device);
//! - `at_target(e, t)` and `logprob(z, t)`: `e` (or `z`) at the target on the rank that holds
//!   it, 0 elsewhere, summed; `logprob` then subtracts the combined log-sum-exp of `z`.
//!
//! The CUDA emitter writes one kernel per stream that runs the round it is given, and the
//! executor launches it once per round: both read this plan, so they cannot disagree on what a
//! slot holds.

use std::collections::{BTreeMap, BTreeSet};

use crate::func::{LossFn, ValueId};
use crate::op::{Op, VocabReduce};
use crate::stream::{RowItem, StreamPlan};

/// How a cross item's partial is kept and combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrossKind {
    /// `(max, Σ exp(· − max))` of a vocab value: an [`RowItem::Lse`] (the normaliser of
    /// `log_softmax`/`softmax`/`logprob`) or a `logsumexp` node.
    Lse,
    /// `sum_vocab`: summed.
    Sum,
    /// `max_vocab`: maximum.
    Max,
    /// `argmax`: maximum, then the least global index holding it.
    ArgMax,
    /// `at_target` or `logprob`: the entry at the target where this rank holds it, summed.
    Target,
}

/// The slots of one round's partials, by how they combine: `M` (max all-reduce) then a copy of
/// the rank's own `M` values, `S` (sum all-reduce), `N` (min all-reduce). Slot indices are
/// relative to the round's base ([`ShardPlan::base`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundLayout {
    /// Log-sum-exp items: an `M` slot (the max) and an `S` slot (the scaled sum) each; first
    /// in both blocks.
    pub lse: Vec<RowItem>,
    /// `argmax` nodes: an `M` slot (the maximum) after the log-sum-exps', an `N` slot (the
    /// index).
    pub argmax: Vec<ValueId>,
    /// `max_vocab` nodes: an `M` slot after the argmaxes'.
    pub max: Vec<ValueId>,
    /// `sum_vocab`, `at_target` and `logprob` nodes: an `S` slot after the log-sum-exps'.
    pub sum: Vec<ValueId>,
}

impl RoundLayout {
    /// Slots of the `M` block (and of its copy).
    pub fn nm(&self) -> usize {
        self.lse.len() + self.argmax.len() + self.max.len()
    }

    /// Slots of the `S` block.
    pub fn ns(&self) -> usize {
        self.lse.len() + self.sum.len()
    }

    /// Slots of the `N` block.
    pub fn nn(&self) -> usize {
        self.argmax.len()
    }

    /// Every slot of the round.
    pub fn slots(&self) -> usize {
        2 * self.nm() + self.ns() + self.nn()
    }

    /// First slot of the `M` block, of its copy, of `S` and of `N`.
    pub fn blocks(&self) -> (usize, usize, usize, usize) {
        let nm = self.nm();
        (0, nm, 2 * nm, 2 * nm + self.ns())
    }

    /// `(M slot, S slot)` of log-sum-exp item `k`.
    pub fn lse_slots(&self, k: usize) -> (usize, usize) {
        let (m, _, s, _) = self.blocks();
        (m + k, s + k)
    }

    /// `(M slot, N slot)` of argmax `k`.
    pub fn argmax_slots(&self, k: usize) -> (usize, usize) {
        let (m, _, _, n) = self.blocks();
        (m + self.lse.len() + k, n + k)
    }

    /// The `M` slot of max `k`.
    pub fn max_slot(&self, k: usize) -> usize {
        self.lse.len() + self.argmax.len() + k
    }

    /// The `S` slot of sum `k`.
    pub fn sum_slot(&self, k: usize) -> usize {
        self.blocks().2 + self.lse.len() + k
    }
}

/// A stream's rounds (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct ShardPlan {
    /// Round `k`'s layout at index `k - 1`.
    pub rounds: Vec<RoundLayout>,
    /// The round whose partials a cross item is (1-based).
    pub partial_round: BTreeMap<RowItem, usize>,
    /// The round after which a row item's value is known on every rank (0: from the row's
    /// inputs alone); every row item of the stream, cross or not.
    pub known_after: BTreeMap<RowItem, usize>,
}

/// The cross kind of row item `it`, if it is one.
pub fn cross_kind(f: &LossFn, it: RowItem) -> Option<CrossKind> {
    match it {
        RowItem::Lse(_) => Some(CrossKind::Lse),
        RowItem::Node(v) => match f.node(v).op {
            Op::VocabReduce(VocabReduce::LogSumExp) => Some(CrossKind::Lse),
            Op::VocabReduce(VocabReduce::Sum) => Some(CrossKind::Sum),
            Op::VocabReduce(VocabReduce::Max) => Some(CrossKind::Max),
            Op::ArgMax => Some(CrossKind::ArgMax),
            Op::AtTarget | Op::LogProb => Some(CrossKind::Target),
            _ => None,
        },
    }
}

impl ShardPlan {
    /// The rounds of `plan` (a stream of the gradient IR `f`).
    pub fn new(f: &LossFn, plan: &StreamPlan) -> ShardPlan {
        let mut b = Rounds {
            f,
            plan,
            partial: BTreeMap::new(),
            known: BTreeMap::new(),
        };
        let items: Vec<RowItem> = plan.stages.keys().copied().collect();
        for it in &items {
            b.known(*it);
        }
        let n = b.partial.values().copied().max().unwrap_or(0);
        let mut rounds = vec![RoundLayout::default(); n];
        for (it, k) in &b.partial {
            let r = &mut rounds[k - 1];
            match (cross_kind(f, *it), it) {
                (Some(CrossKind::Lse), _) => r.lse.push(*it),
                (Some(CrossKind::ArgMax), RowItem::Node(v)) => r.argmax.push(*v),
                (Some(CrossKind::Max), RowItem::Node(v)) => r.max.push(*v),
                (Some(CrossKind::Sum | CrossKind::Target), RowItem::Node(v)) => r.sum.push(*v),
                _ => {}
            }
        }
        ShardPlan {
            rounds,
            partial_round: b.partial,
            known_after: b.known,
        }
    }

    /// The rounds that compute partials (the final round is one more).
    pub fn partial_rounds(&self) -> usize {
        self.rounds.len()
    }

    /// The first slot of round `k` (1-based) in the stream's buffer.
    pub fn base(&self, k: usize) -> usize {
        self.rounds[..k.saturating_sub(1).min(self.rounds.len())]
            .iter()
            .map(RoundLayout::slots)
            .sum()
    }

    /// Slots per row of every round together.
    pub fn slots(&self) -> usize {
        self.rounds.iter().map(RoundLayout::slots).sum()
    }

    /// Where cross item `it`'s combined value lives: `(round, its layout)`.
    pub fn round_of(&self, it: RowItem) -> Option<(usize, &RoundLayout)> {
        let k = *self.partial_round.get(&it)?;
        Some((k, &self.rounds[k - 1]))
    }
}

struct Rounds<'a> {
    f: &'a LossFn,
    plan: &'a StreamPlan,
    partial: BTreeMap<RowItem, usize>,
    known: BTreeMap<RowItem, usize>,
}

impl Rounds<'_> {
    /// The row items of the stream that `v`'s value needs, through vocab expressions.
    fn deps_of(&self, v: ValueId, out: &mut BTreeSet<RowItem>) {
        self.plan.row_needs(self.f, v, out);
    }

    fn known(&mut self, it: RowItem) -> usize {
        if let Some(k) = self.known.get(&it) {
            return *k;
        }
        let f = self.f;
        let mut deps = BTreeSet::new();
        // `logprob`'s partial is the raw entry; its normaliser joins afterwards.
        let mut after = BTreeSet::new();
        match it {
            RowItem::Lse(z) => self.deps_of(z, &mut deps),
            RowItem::Node(v) => {
                let node = f.node(v).clone();
                match node.op {
                    Op::VocabReduce(_) | Op::ArgMax => self.deps_of(node.args[0], &mut deps),
                    Op::AtTarget | Op::LogProb => {
                        self.deps_of(node.args[0], &mut deps);
                        self.deps_of(node.args[1], &mut deps);
                        if node.op == Op::LogProb {
                            after.insert(RowItem::Lse(node.args[0]));
                        }
                    }
                    _ => {
                        for a in &node.args {
                            self.deps_of(*a, &mut deps);
                        }
                    }
                }
            }
        }
        let base = deps.iter().map(|d| self.known(*d)).max().unwrap_or(0);
        let k = if cross_kind(f, it).is_some() {
            self.partial.insert(it, base + 1);
            let joined = after.iter().map(|d| self.known(*d)).max().unwrap_or(0);
            (base + 1).max(joined)
        } else {
            base
        };
        self.known.insert(it, k);
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Strategy;

    fn pipeline(text: &str) -> crate::Pipeline {
        crate::pipeline_of(text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every stream of every strategy: each item's inputs are known before the round that
    /// uses them, and every slot of the buffer holds exactly one partial.
    fn check_rounds(p: &crate::Pipeline) -> Vec<(Strategy, Vec<usize>)> {
        let g = p.grad();
        let mut out = Vec::new();
        for s in p.schedule().candidates.clone() {
            let mut rounds = Vec::new();
            for plan in p.schedule().streams(g, s) {
                let sp = ShardPlan::new(g, &plan);
                for (it, known) in &sp.known_after {
                    let mut deps = BTreeSet::new();
                    match it {
                        RowItem::Lse(z) => plan.row_needs(g, *z, &mut deps),
                        RowItem::Node(v) => {
                            for a in &g.node(*v).args {
                                plan.row_needs(g, *a, &mut deps);
                            }
                        }
                    }
                    let latest = deps.iter().map(|d| sp.known_after[d]).max().unwrap_or(0);
                    match sp.partial_round.get(it) {
                        Some(k) => {
                            if g.node_op_is(*it, Op::LogProb) {
                                // The target logit needs no normaliser; the value does.
                                assert!(*known >= *k, "{it:?}");
                            } else {
                                assert!(latest < *k, "{it:?} in round {k} needs round {latest}");
                                assert_eq!(*known, *k, "{it:?}");
                            }
                        }
                        None => assert_eq!(*known, latest, "{it:?}"),
                    }
                }
                // Slots: each round's partials in distinct slots below its size.
                for (k, lay) in sp.rounds.iter().enumerate() {
                    let mut used = BTreeSet::new();
                    let nm = lay.nm();
                    for j in 0..lay.lse.len() {
                        let (m, s) = lay.lse_slots(j);
                        assert!(used.insert(m) && used.insert(nm + m) && used.insert(s));
                    }
                    for j in 0..lay.argmax.len() {
                        let (m, n) = lay.argmax_slots(j);
                        assert!(used.insert(m) && used.insert(nm + m) && used.insert(n));
                    }
                    for j in 0..lay.max.len() {
                        let m = lay.max_slot(j);
                        assert!(used.insert(m) && used.insert(nm + m));
                    }
                    for j in 0..lay.sum.len() {
                        assert!(used.insert(lay.sum_slot(j)));
                    }
                    assert_eq!(used.len(), lay.slots(), "round {}", k + 1);
                    assert_eq!(used.iter().max().map_or(0, |m| m + 1), lay.slots());
                }
                assert_eq!(sp.base(sp.partial_rounds() + 1), sp.slots());
                rounds.push(sp.partial_rounds());
            }
            out.push((s, rounds));
        }
        out
    }

    trait OpIs {
        fn node_op_is(&self, it: RowItem, op: Op) -> bool;
    }
    impl OpIs for LossFn {
        fn node_op_is(&self, it: RowItem, op: Op) -> bool {
            matches!(it, RowItem::Node(v) if self.node(v).op == op)
        }
    }

    #[test]
    fn flce_needs_one_round_of_partials_for_the_loss() {
        let p = pipeline(include_str!("../tests/losses/flce.lir"));
        let g = p.grad();
        for (s, rounds) in check_rounds(&p) {
            // The log-sum-exp, the target logit and the vocabulary sum of the logits are
            // independent of one another: one round, then the final one.
            assert!(rounds.iter().all(|&r| r == 1), "{s}: {rounds:?}");
        }
        let plan = &p.schedule().streams(g, p.schedule().candidates[0])[0];
        let sp = ShardPlan::new(g, plan);
        let lay = &sp.rounds[0];
        // The loss's `logsumexp` and the gradient's softmax normaliser (of the same logits:
        // the IR keeps both), the target logit and the vocabulary sum.
        assert_eq!(lay.lse.len(), 2, "{lay:?}");
        assert_eq!(
            lay.sum.len(),
            2,
            "the target logit and the vocabulary sum: {lay:?}"
        );
        assert_eq!(lay.slots(), 2 * 2 + (2 + 2));
    }

    #[test]
    fn dpo_and_jsd_rounds_follow_their_dependencies() {
        for text in [
            include_str!("../tests/losses/dpo.lir"),
            include_str!("../tests/losses/jsd.lir"),
        ] {
            let p = pipeline(text);
            for (s, rounds) in check_rounds(&p) {
                assert!(rounds.iter().all(|&r| r >= 1), "{s}: {rounds:?}");
            }
        }
    }
}
