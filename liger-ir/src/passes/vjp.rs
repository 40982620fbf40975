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
use crate::op::{Binary, Cmp, Op, SeqReduce, Size, Unary, VocabReduce};
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
    fn add(&mut self, a: ValueId, b: ValueId) -> R<ValueId> {
        self.op(Op::Binary(Binary::Add), &[a, b])
    }
    fn mul(&mut self, a: ValueId, b: ValueId) -> R<ValueId> {
        self.op(Op::Binary(Binary::Mul), &[a, b])
    }
    fn div(&mut self, a: ValueId, b: ValueId) -> R<ValueId> {
        self.op(Op::Binary(Binary::Div), &[a, b])
    }
    fn sub(&mut self, a: ValueId, b: ValueId) -> R<ValueId> {
        self.op(Op::Binary(Binary::Sub), &[a, b])
    }
    fn neg(&mut self, a: ValueId) -> R<ValueId> {
        self.op(Op::Unary(Unary::Neg), &[a])
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
                    v = self.op(Op::VocabReduce(VocabReduce::Sum), &[v])?;
                    l = Level::Row;
                }
                let op = if l == Level::Row { Op::SumAll } else { Op::Sum };
                return self.op(op, &[v]);
            }
            (v, l) = match l {
                Level::Vocab => (
                    self.op(Op::VocabReduce(VocabReduce::Sum), &[v])?,
                    Level::Row,
                ),
                Level::Row => (self.op(Op::SeqReduce(SeqReduce::Sum), &[v])?, Level::Seq),
                _ => {
                    let c = self.op(Op::Chosen, &[v])?;
                    let r = self.op(Op::Rejected, &[v])?;
                    (self.add(c, r)?, Level::Pair)
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
        | Op::Size(_)
        | Op::Compare(_)
        | Op::ArgMax
        | Op::OneHot
        | Op::Valid
        | Op::SeqCount
        | Op::NumValid => {}
        Op::Unary(u) => {
            let d = match u {
                // The value passes, the gradient does not.
                Unary::StopGradient => return Ok(out),
                Unary::Neg => cx.neg(g)?,
                Unary::Exp => cx.mul(g, y)?,
                Unary::Log => cx.div(g, a(0))?,
                Unary::Log1p => {
                    let one = cx.c(1.0);
                    let d = cx.add(one, a(0))?;
                    cx.div(g, d)?
                }
                Unary::Expm1 => {
                    let one = cx.c(1.0);
                    let e = cx.add(y, one)?;
                    cx.mul(g, e)?
                }
                Unary::Sqrt => {
                    let half = cx.c(0.5);
                    let h = cx.mul(g, half)?;
                    cx.div(h, y)?
                }
                Unary::Square => {
                    let two = cx.c(2.0);
                    let t = cx.mul(two, a(0))?;
                    cx.mul(g, t)?
                }
                Unary::Abs => {
                    let zero = cx.c(0.0);
                    let pos = cx.op(Op::Compare(Cmp::Ge), &[a(0), zero])?;
                    let ng = cx.neg(g)?;
                    cx.op(Op::Select, &[pos, g, ng])?
                }
                Unary::Relu => {
                    let zero = cx.c(0.0);
                    let pos = cx.op(Op::Compare(Cmp::Gt), &[a(0), zero])?;
                    cx.keep(pos, g)?
                }
                Unary::Sigmoid => {
                    let one = cx.c(1.0);
                    let q = cx.sub(one, y)?;
                    let s = cx.mul(y, q)?;
                    cx.mul(g, s)?
                }
                Unary::LogSigmoid => {
                    let nx = cx.neg(a(0))?;
                    let s = cx.op(Op::Unary(Unary::Sigmoid), &[nx])?;
                    cx.mul(g, s)?
                }
                Unary::Softplus => {
                    let s = cx.op(Op::Unary(Unary::Sigmoid), &[a(0)])?;
                    cx.mul(g, s)?
                }
                Unary::Tanh => {
                    let one = cx.c(1.0);
                    let y2 = cx.mul(y, y)?;
                    let d = cx.sub(one, y2)?;
                    cx.mul(g, d)?
                }
            };
            out.push((0, d));
        }
        Op::Binary(bop) => match bop {
            Binary::Add => {
                for k in 0..2 {
                    if need(k) {
                        out.push((k, g));
                    }
                }
            }
            Binary::Sub => {
                if need(0) {
                    out.push((0, g));
                }
                if need(1) {
                    out.push((1, cx.neg(g)?));
                }
            }
            Binary::Mul => {
                if need(0) {
                    out.push((0, cx.mul(g, a(1))?));
                }
                if need(1) {
                    out.push((1, cx.mul(g, a(0))?));
                }
            }
            Binary::Div => {
                let q = cx.div(g, a(1))?;
                if need(0) {
                    out.push((0, q));
                }
                if need(1) {
                    let t = cx.mul(q, y)?;
                    out.push((1, cx.neg(t)?));
                }
            }
            Binary::Pow => {
                if need(0) {
                    let one = cx.c(1.0);
                    let e = cx.sub(a(1), one)?;
                    let p = cx.op(Op::Binary(Binary::Pow), &[a(0), e])?;
                    let t = cx.mul(a(1), p)?;
                    out.push((0, cx.mul(g, t)?));
                }
                if need(1) {
                    let l = cx.op(Op::Unary(Unary::Log), &[a(0)])?;
                    let t = cx.mul(y, l)?;
                    out.push((1, cx.mul(g, t)?));
                }
            }
            Binary::Min | Binary::Max => {
                let cmp = if bop == Binary::Min { Cmp::Le } else { Cmp::Ge };
                let first = cx.op(Op::Compare(cmp), &[a(0), a(1)])?;
                if need(0) {
                    out.push((0, cx.keep(first, g)?));
                }
                if need(1) {
                    out.push((1, cx.drop_(first, g)?));
                }
            }
            Binary::LogAddExp => {
                for (k, (p, q)) in [(0, (a(0), a(1))), (1, (a(1), a(0)))] {
                    if need(k) {
                        let d = cx.sub(p, q)?;
                        let s = cx.op(Op::Unary(Unary::Sigmoid), &[d])?;
                        out.push((k, cx.mul(g, s)?));
                    }
                }
            }
        },
        Op::Clamp => {
            let below = cx.op(Op::Compare(Cmp::Lt), &[a(0), a(1)])?;
            let above = cx.op(Op::Compare(Cmp::Gt), &[a(0), a(2)])?;
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
            let s = cx.op(Op::VocabReduce(VocabReduce::Sum), &[gv])?;
            let p = cx.op(Op::Unary(Unary::Exp), &[y])?;
            let t = cx.mul(p, s)?;
            out.push((0, cx.sub(g, t)?));
        }
        Op::Softmax => {
            let gy = cx.mul(g, y)?;
            let gy = cx.exact(gy, Level::Vocab)?;
            let s = cx.op(Op::VocabReduce(VocabReduce::Sum), &[gy])?;
            let d = cx.sub(g, s)?;
            out.push((0, cx.mul(y, d)?));
        }
        Op::VocabReduce(r) => match r {
            VocabReduce::Sum => out.push((0, g)),
            VocabReduce::Max => {
                let k = cx.op(Op::ArgMax, &[a(0)])?;
                let h = cx.op(Op::OneHot, &[k])?;
                out.push((0, cx.mul(g, h)?));
            }
            VocabReduce::LogSumExp => {
                let p = cx.op(Op::Softmax, &[a(0)])?;
                out.push((0, cx.mul(g, p)?));
            }
        },
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
        Op::SeqReduce(r) => {
            let mask = node.args.get(1).copied();
            let scaled = match r {
                SeqReduce::Sum => g,
                SeqReduce::Mean | SeqReduce::MeanOrZero => {
                    let mut n = cx.op(Op::SeqCount, &mask.into_iter().collect::<Vec<_>>())?;
                    if r == SeqReduce::MeanOrZero {
                        let one = cx.c(1.0);
                        n = cx.op(Op::Binary(Binary::Max), &[n, one])?;
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
                    let n = cx.op(Op::Size(Size::NumSeqs), &[])?;
                    cx.div(g, n)?
                }
                (Level::Pair, _) => {
                    let n = cx.op(Op::Size(Size::NumPairs), &[])?;
                    cx.div(g, n)?
                }
                _ => g,
            };
            out.push((0, c));
        }
        Op::MeanAll => {
            let s = cx.op(Op::Size(Size::NumSeqs), &[])?;
            let t = cx.op(Op::Size(Size::SeqLen), &[])?;
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
