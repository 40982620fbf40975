//! Rows that carry nothing: which rows of a batch an executor may leave out of the chunk loop
//! (no logits, no stream kernel, no gradient GEMM), derived from the IR for every loss.
//!
//! A head-dependent row value reaches the loss and the metrics only through reductions to a
//! coarser level (`sum`, `mean`, `seq_*`, `sum_all`, `mean_all`) or as a row metric. When every
//! such reduction is masked by a mask read straight from an input (`valid(t)` of a `Target`,
//! or a `RowMask` input), a row where every one of those masks is false contributes nothing:
//! not to the loss, not to a metric, and its gradient is zero. A loss that reduces a
//! head-dependent row value without a mask (`every_row()`, `sum_all`), through a mask computed
//! from other values, or that reports a row metric keeps every row.
//!
//! Invariant: the answer depends only on the IR, never on the data; the executors evaluate
//! the masks on the host where the inputs are.

use crate::func::{InputKind, LossFn, ValueId};
use crate::op::Op;
use crate::schedule::forward_outputs;
use crate::types::Level;

/// The masks whose rows are skippable: a row where every mask is false carries nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippableRows {
    /// The `Input` nodes of the masks: a `Target` (its invalid rows) or a `RowMask`.
    pub masks: Vec<ValueId>,
}

/// Where a mask operand comes from, if it is read straight from an input.
fn mask_source(f: &LossFn, m: ValueId) -> Option<ValueId> {
    let node = f.node(m);
    match node.op {
        Op::Valid => {
            let t = *node.args.first()?;
            match f.node(t).op {
                Op::Input(k) if f.inputs[k.index()].kind == InputKind::Target => Some(t),
                _ => None,
            }
        }
        Op::Input(k) if f.inputs[k.index()].kind == InputKind::RowMask => Some(m),
        _ => None,
    }
}

/// The skippable rows of `f` (a loss function, or its gradient function: only the loss and
/// metrics are looked at), or `None` when every row must run.
pub fn skippable_rows(f: &LossFn) -> Option<SkippableRows> {
    let n = f.nodes.len();
    // Which values depend on a head's logits.
    let mut dep = vec![false; n];
    for (i, node) in f.nodes.iter().enumerate() {
        dep[i] = match node.op {
            Op::Input(k) => f.inputs[k.index()].kind.is_head(),
            _ => node.args.iter().any(|a| dep[a.index()]),
        };
    }
    // The forward cone: what the loss and the metrics are computed from.
    let roots = forward_outputs(f);
    let mut cone = vec![false; n];
    for r in &roots {
        cone[r.index()] = true;
    }
    for i in (0..n).rev() {
        if cone[i] {
            for a in &f.nodes[i].args {
                cone[a.index()] = true;
            }
        }
    }
    let row_dep = |v: ValueId| dep[v.index()] && f.ty(v).level == Level::Row;
    // A row metric of a head-dependent value needs every row.
    if roots.iter().any(|&r| row_dep(r)) {
        return None;
    }
    let mut masks: Vec<ValueId> = Vec::new();
    for (i, node) in f.nodes.iter().enumerate() {
        if !cone[i] {
            continue;
        }
        let a0 = node.args.first().copied();
        // Each op that takes a row value to a coarser level, and what it needs of its mask.
        let masked_exit = match node.op {
            Op::Sum | Op::Mean | Op::SeqReduce(_) => a0.is_some_and(row_dep),
            Op::SumAll | Op::MeanAll => {
                if a0.is_some_and(row_dep) {
                    return None;
                }
                false
            }
            // Masks and counts of masks: a head-dependent mask keeps every row.
            Op::SeqCount | Op::NumValid => {
                if node.args.iter().any(|&a| row_dep(a)) {
                    return None;
                }
                false
            }
            Op::Input(_)
            | Op::Const(_)
            | Op::Size(_)
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Clamp
            | Op::Select
            | Op::Compare(_)
            | Op::LogSoftmax
            | Op::Softmax
            | Op::VocabReduce(_)
            | Op::AtTarget
            | Op::LogProb
            | Op::ArgMax
            | Op::OneHot
            | Op::Valid
            | Op::Chosen
            | Op::Rejected
            | Op::PlaceChosen
            | Op::PlaceRejected
            | Op::Broadcast(_) => false,
        };
        if masked_exit {
            let src = node.args.get(1).and_then(|&m| mask_source(f, m))?;
            if !masks.contains(&src) {
                masks.push(src);
            }
        }
    }
    (!masks.is_empty()).then_some(SkippableRows { masks })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masks(body: &str) -> Option<Vec<String>> {
        let text = format!(
            "; liger-ir v1\nloss t {{\n  input logits: logits\n  input target: target\n  input keep: row_mask\n{body}\n}}\n"
        );
        let f = crate::parse(&text).unwrap_or_else(|d| panic!("{d:?}\n{text}"));
        skippable_rows(&f).map(|s| {
            s.masks
                .iter()
                .map(|m| match f.node(*m).op {
                    Op::Input(k) => f.inputs[k.index()].name.clone(),
                    _ => "?".into(),
                })
                .collect()
        })
    }

    #[test]
    fn masked_reductions_let_rows_go_and_anything_else_keeps_them() {
        let lp = "  lp: f32[row] = logprob logits, target\n  m: bool[row] = valid target\n";
        // A mean under valid(target): its invalid rows carry nothing.
        assert_eq!(
            masks(&format!("{lp}  l: f32[batch] = mean lp, m\n  loss = l")),
            Some(vec!["target".into()])
        );
        // Two masks: a row goes only where both are false.
        assert_eq!(
            masks(&format!(
                "{lp}  a: f32[batch] = sum lp, m\n  b: f32[batch] = sum lp, keep\n  l: f32[batch] = add a, b\n  loss = l"
            )),
            Some(vec!["target".into(), "keep".into()])
        );
        // Unmasked: every row counts.
        assert_eq!(
            masks(&format!("{lp}  l: f32[batch] = sum_all lp\n  loss = l")),
            None
        );
        // A row metric of a logit-derived value needs every row.
        assert_eq!(
            masks(&format!(
                "{lp}  l: f32[batch] = mean lp, m\n  loss = l\n  metric \"per_token\" = lp"
            )),
            None
        );
        // A mask computed from other values is not read from an input.
        assert_eq!(
            masks(&format!(
                "{lp}  z: f32[batch] = const 0.0\n  pos: bool[row] = gt lp, z\n  l: f32[batch] = sum lp, pos\n  loss = l"
            )),
            None
        );
        // A head-independent row value reduced without a mask does not matter.
        assert_eq!(
            masks(&format!(
                "{lp}  c: f32[batch] = num_valid m\n  l0: f32[batch] = sum lp, m\n  l: f32[batch] = div l0, c\n  loss = l"
            )),
            Some(vec!["target".into()])
        );
    }
}
