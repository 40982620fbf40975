//! The VJP rules: one exhaustive `match` over [`Op`], so a new op cannot be added without
//! saying how its gradient flows.
//!
//! For a node `y = op(args)` with adjoint `g` (the gradient of the loss with respect to `y`,
//! possibly held at a coarser level than `y`, meaning "broadcast"), a rule returns the
//! contributions `(operand position, value)` for the operands that need a gradient. Rules use
//! the numerically safe forms: softmax is `exp` of the saved `log_softmax` (or `softmax` of the
//! logits, which backends compute from the saved logsumexp), `log_sigmoid'(x) = sigmoid(-x)`,
//! `softplus'(x) = sigmoid(x)`, `logaddexp` through `sigmoid(a - b)`.

use crate::builder::Builder;
use crate::diag::{DiagKind, Diagnostic, Site};
use crate::func::ValueId;
use crate::op::Op;
use crate::types::Level;

/// Builder access for the rules; errors are internal (a rule built an ill-typed node).
pub(super) struct Ctx<'a> {
    pub b: &'a mut Builder,
}

type R<T> = Result<T, Diagnostic>;

impl Ctx<'_> {
    pub fn op(&mut self, op: Op, args: &[ValueId]) -> R<ValueId> {
        self.b.op(op, args).map_err(|d| {
            Diagnostic::new(
                DiagKind::Internal,
                Site::Function,
                format!("autodiff built an ill-typed `{}`: {}", op.name(), d.message),
            )
        })
    }
    fn c(&mut self, x: f64) -> ValueId {
        self.b.constant(x)
    }
    fn mul(&mut self, a: ValueId, b: ValueId) -> R<ValueId> {
        self.op(Op::Mul, &[a, b])
    }
    fn div(&mut self, a: ValueId, b: ValueId) -> R<ValueId> {
        self.op(Op::Div, &[a, b])
    }
    fn sub(&mut self, a: ValueId, b: ValueId) -> R<ValueId> {
        self.op(Op::Sub, &[a, b])
    }
    fn neg(&mut self, a: ValueId) -> R<ValueId> {
        self.op(Op::Neg, &[a])
    }
    /// `select(c, a, 0)`.
    fn keep(&mut self, c: ValueId, a: ValueId) -> R<ValueId> {
        let z = self.c(0.0);
        self.op(Op::Select, &[c, a, z])
    }
    /// `select(c, 0, a)`.
    fn drop_(&mut self, c: ValueId, a: ValueId) -> R<ValueId> {
        let z = self.c(0.0);
        self.op(Op::Select, &[c, z, a])
    }
    /// `v` at exactly level `l` (inserting a broadcast when `v` is coarser).
    pub fn exact(&mut self, v: ValueId, l: Level) -> R<ValueId> {
        if self.b.ty(v).level == l {
            Ok(v)
        } else {
            self.op(Op::Broadcast(l), &[v])
        }
    }
    /// Sums `v` (exactly at `from`) down to the coarser level `to`: the adjoint of a broadcast.
    pub fn reduce(&mut self, v: ValueId, from: Level, to: Level) -> R<ValueId> {
        let mut v = self.exact(v, from)?;
        let mut l = from;
        while l < to {
            if to == Level::Batch {
                if l == Level::Vocab {
                    v = self.op(Op::SumVocab, &[v])?;
                    l = Level::Row;
                }
                let op = if l == Level::Row { Op::SumAll } else { Op::Sum };
                return self.op(op, &[v]);
            }
            (v, l) = match l {
                Level::Vocab => (self.op(Op::SumVocab, &[v])?, Level::Row),
                Level::Row => (self.op(Op::SeqSum, &[v])?, Level::Seq),
                _ => {
                    let c = self.op(Op::Chosen, &[v])?;
                    let r = self.op(Op::Rejected, &[v])?;
                    (self.op(Op::Add, &[c, r])?, Level::Pair)
                }
            };
        }
        Ok(v)
    }
}

/// The contributions of node `y` with adjoint `g` to its operands; `needs[k]` says whether
/// operand `k` needs a gradient (rules skip the others).
pub(super) fn vjp(
    cx: &mut Ctx<'_>,
    y: ValueId,
    g: ValueId,
    needs: &[bool],
) -> R<Vec<(usize, ValueId)>> {
    let node = cx.b.func().node(y).clone();
    let a = |k: usize| node.args[k];
    let need = |k: usize| needs.get(k).copied().unwrap_or(false);
    let mut out = Vec::new();
    match node.op {
        // No gradient flows through these.
        Op::Input(_)
        | Op::Const(_)
        | Op::VocabSize
        | Op::SeqLen
        | Op::NumSeqs
        | Op::NumPairs
        | Op::StopGradient
        | Op::Lt
        | Op::Le
        | Op::Gt
        | Op::Ge
        | Op::Eq
        | Op::Ne
        | Op::ArgMax
        | Op::OneHot
        | Op::Valid
        | Op::SeqCount
        | Op::NumValid => {}
        Op::Neg => out.push((0, cx.neg(g)?)),
        Op::Exp => out.push((0, cx.mul(g, y)?)),
        Op::Log => out.push((0, cx.div(g, a(0))?)),
        Op::Log1p => {
            let one = cx.c(1.0);
            let d = cx.op(Op::Add, &[one, a(0)])?;
            out.push((0, cx.div(g, d)?));
        }
        Op::Expm1 => {
            let one = cx.c(1.0);
            let e = cx.op(Op::Add, &[y, one])?;
            out.push((0, cx.mul(g, e)?));
        }
        Op::Sqrt => {
            let half = cx.c(0.5);
            let h = cx.mul(g, half)?;
            out.push((0, cx.div(h, y)?));
        }
        Op::Abs => {
            let zero = cx.c(0.0);
            let pos = cx.op(Op::Ge, &[a(0), zero])?;
            let ng = cx.neg(g)?;
            out.push((0, cx.op(Op::Select, &[pos, g, ng])?));
        }
        Op::Relu => {
            let zero = cx.c(0.0);
            let pos = cx.op(Op::Gt, &[a(0), zero])?;
            out.push((0, cx.keep(pos, g)?));
        }
        Op::Sigmoid => {
            let one = cx.c(1.0);
            let q = cx.sub(one, y)?;
            let s = cx.mul(y, q)?;
            out.push((0, cx.mul(g, s)?));
        }
        Op::LogSigmoid => {
            let nx = cx.neg(a(0))?;
            let s = cx.op(Op::Sigmoid, &[nx])?;
            out.push((0, cx.mul(g, s)?));
        }
        Op::Softplus => {
            let s = cx.op(Op::Sigmoid, &[a(0)])?;
            out.push((0, cx.mul(g, s)?));
        }
        Op::Tanh => {
            let one = cx.c(1.0);
            let y2 = cx.mul(y, y)?;
            let d = cx.sub(one, y2)?;
            out.push((0, cx.mul(g, d)?));
        }
        Op::Add => {
            for k in 0..2 {
                if need(k) {
                    out.push((k, g));
                }
            }
        }
        Op::Sub => {
            if need(0) {
                out.push((0, g));
            }
            if need(1) {
                out.push((1, cx.neg(g)?));
            }
        }
        Op::Mul => {
            if need(0) {
                out.push((0, cx.mul(g, a(1))?));
            }
            if need(1) {
                out.push((1, cx.mul(g, a(0))?));
            }
        }
        Op::Div => {
            let q = cx.div(g, a(1))?;
            if need(0) {
                out.push((0, q));
            }
            if need(1) {
                let t = cx.mul(q, y)?;
                out.push((1, cx.neg(t)?));
            }
        }
        Op::Pow => {
            if need(0) {
                let one = cx.c(1.0);
                let e = cx.sub(a(1), one)?;
                let p = cx.op(Op::Pow, &[a(0), e])?;
                let t = cx.mul(a(1), p)?;
                out.push((0, cx.mul(g, t)?));
            }
            if need(1) {
                let l = cx.op(Op::Log, &[a(0)])?;
                let t = cx.mul(y, l)?;
                out.push((1, cx.mul(g, t)?));
            }
        }
        Op::Min | Op::Max => {
            let cmp = if node.op == Op::Min { Op::Le } else { Op::Ge };
            let first = cx.op(cmp, &[a(0), a(1)])?;
            if need(0) {
                out.push((0, cx.keep(first, g)?));
            }
            if need(1) {
                out.push((1, cx.drop_(first, g)?));
            }
        }
        Op::LogAddExp => {
            if need(0) {
                let d = cx.sub(a(0), a(1))?;
                let s = cx.op(Op::Sigmoid, &[d])?;
                out.push((0, cx.mul(g, s)?));
            }
            if need(1) {
                let d = cx.sub(a(1), a(0))?;
                let s = cx.op(Op::Sigmoid, &[d])?;
                out.push((1, cx.mul(g, s)?));
            }
        }
        Op::Clamp => {
            let below = cx.op(Op::Lt, &[a(0), a(1)])?;
            let above = cx.op(Op::Gt, &[a(0), a(2)])?;
            if need(0) {
                let inner = cx.drop_(above, g)?;
                out.push((0, cx.drop_(below, inner)?));
            }
            if need(1) {
                out.push((1, cx.keep(below, g)?));
            }
            if need(2) {
                let inner = cx.keep(above, g)?;
                out.push((2, cx.drop_(below, inner)?));
            }
        }
        Op::Select => {
            if need(1) {
                out.push((1, cx.keep(a(0), g)?));
            }
            if need(2) {
                out.push((2, cx.drop_(a(0), g)?));
            }
        }
        Op::LogSoftmax => {
            let gv = cx.exact(g, Level::Vocab)?;
            let s = cx.op(Op::SumVocab, &[gv])?;
            let p = cx.op(Op::Exp, &[y])?;
            let t = cx.mul(p, s)?;
            out.push((0, cx.sub(g, t)?));
        }
        Op::Softmax => {
            let gy = cx.mul(g, y)?;
            let gy = cx.exact(gy, Level::Vocab)?;
            let s = cx.op(Op::SumVocab, &[gy])?;
            let d = cx.sub(g, s)?;
            out.push((0, cx.mul(y, d)?));
        }
        Op::SumVocab => out.push((0, g)),
        Op::MaxVocab => {
            let k = cx.op(Op::ArgMax, &[a(0)])?;
            let h = cx.op(Op::OneHot, &[k])?;
            out.push((0, cx.mul(g, h)?));
        }
        Op::LogSumExp => {
            let p = cx.op(Op::Softmax, &[a(0)])?;
            out.push((0, cx.mul(g, p)?));
        }
        Op::AtTarget => {
            let h = cx.op(Op::OneHot, &[a(1)])?;
            out.push((0, cx.mul(g, h)?));
        }
        Op::LogProb => {
            let ok = cx.op(Op::Valid, &[a(1)])?;
            let c = cx.keep(ok, g)?;
            let h = cx.op(Op::OneHot, &[a(1)])?;
            let p = cx.op(Op::Softmax, &[a(0)])?;
            let u = cx.sub(h, p)?;
            out.push((0, cx.mul(c, u)?));
        }
        Op::SeqSum | Op::SeqMean | Op::SeqMeanOrZero => {
            let mask = node.args.get(1).copied();
            let scaled = match node.op {
                Op::SeqSum => g,
                _ => {
                    let mut n = cx.op(Op::SeqCount, &mask.into_iter().collect::<Vec<_>>())?;
                    if node.op == Op::SeqMeanOrZero {
                        let one = cx.c(1.0);
                        n = cx.op(Op::Max, &[n, one])?;
                    }
                    cx.div(g, n)?
                }
            };
            out.push((
                0,
                match mask {
                    Some(m) => cx.keep(m, scaled)?,
                    None => scaled,
                },
            ));
        }
        Op::Chosen | Op::Rejected => {
            let gp = cx.exact(g, Level::Pair)?;
            let op = if node.op == Op::Chosen {
                Op::PlaceChosen
            } else {
                Op::PlaceRejected
            };
            out.push((0, cx.op(op, &[gp])?));
        }
        Op::PlaceChosen | Op::PlaceRejected => {
            let gs = cx.exact(g, Level::Seq)?;
            let op = if node.op == Op::PlaceChosen {
                Op::Chosen
            } else {
                Op::Rejected
            };
            out.push((0, cx.op(op, &[gs])?));
        }
        Op::Sum | Op::SumAll => out.push((
            0,
            match node.args.get(1) {
                Some(&m) => cx.keep(m, g)?,
                None => g,
            },
        )),
        Op::Mean => {
            let lvl = cx.b.ty(a(0)).level;
            let c = match (lvl, node.args.get(1)) {
                (Level::Row, Some(&m)) => {
                    let n = cx.op(Op::NumValid, &[m])?;
                    let q = cx.div(g, n)?;
                    cx.keep(m, q)?
                }
                (Level::Seq, _) => {
                    let n = cx.op(Op::NumSeqs, &[])?;
                    cx.div(g, n)?
                }
                (Level::Pair, _) => {
                    let n = cx.op(Op::NumPairs, &[])?;
                    cx.div(g, n)?
                }
                _ => g,
            };
            out.push((0, c));
        }
        Op::MeanAll => {
            let s = cx.op(Op::NumSeqs, &[])?;
            let t = cx.op(Op::SeqLen, &[])?;
            let n = cx.mul(s, t)?;
            out.push((0, cx.div(g, n)?));
        }
        Op::Broadcast(l) => {
            let from = cx.b.ty(a(0)).level;
            out.push((0, cx.reduce(g, l, from)?));
        }
    }
    out.retain(|(k, _)| need(*k));
    Ok(out)
}
