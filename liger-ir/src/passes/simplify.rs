//! Simplification: constant folding, algebraic identities, CSE and DCE.
//!
//! The pass rebuilds the function node by node. Each new node first goes through the rewrite
//! rules (on operands that are already simplified), then through hash-consing, so equal
//! subexpressions are shared (commutative operands are ordered). A rewrite never changes a
//! value's type: a result at a coarser level is wrapped in `broadcast`. DCE then drops every
//! node no output depends on (inputs are kept: they are the signature). The two steps repeat
//! until the function stops changing.
//!
//! Rules (besides folding constants through every elementwise op):
//! `x+0, x-0, x*1, x/1 → x`; `0-x → -x`; `x*0 → 0`; `x*-1 → -x`; `--x → x`;
//! `-(a-b) → b-a`; `a+(-b) → a-b`; `a-(-b) → a+b`; `(-a)*b, a*(-b) → -(a*b)`;
//! `(-a)/b → -(a/b)`; `select(c,a,a) → a`; `select(c, select(c,a,b), d) → select(c,a,d)`
//! (and in the else arm); `select(valid(t), a, b) → a` when `t` has no invalid rows
//! (`tokens`, `argmax`); `exp(log_softmax(z)) → softmax(z)`;
//! `sum_vocab(broadcast.vocab(x)) → x * vocab_size`; `broadcast` of a value already at the
//! level, or of a broadcast, collapses; an elementwise operand's `broadcast` is dropped when
//! the result level does not change.

use std::collections::HashMap;

use crate::func::{InputKind, LossFn, Node, Output, ValueId};
use crate::op::{Binary, Op, Unary, VocabReduce};
use crate::scalar;
use crate::types::{DType, Level, Type};

/// Simplifies `f` (which should verify) to a fixpoint.
pub fn simplify(f: &LossFn) -> LossFn {
    let mut cur = dce(&rewrite(f));
    for _ in 0..8 {
        let next = dce(&rewrite(&cur));
        if next == cur {
            break;
        }
        cur = next;
    }
    cur
}

struct Rw<'a> {
    src: &'a LossFn,
    out: LossFn,
    memo: HashMap<(String, u64, Vec<u32>), ValueId>,
    loc: Option<crate::SrcLoc>,
}

impl Rw<'_> {
    fn node(&self, v: ValueId) -> &Node {
        self.out.node(v)
    }

    fn ty(&self, v: ValueId) -> Type {
        self.out.ty(v)
    }

    /// The constant value of `v`, looking through broadcasts.
    fn constant(&self, v: ValueId) -> Option<f64> {
        match self.node(v).op {
            Op::Const(c) => Some(c),
            Op::Broadcast(_) => self.constant(self.node(v).args[0]),
            _ => None,
        }
    }

    fn is(&self, v: ValueId, c: f64) -> bool {
        self.constant(v) == Some(c)
    }

    /// `a` if `v` is `op(a)`.
    fn unwrap(&self, v: ValueId, op: Op) -> Option<ValueId> {
        let n = self.node(v);
        (n.op == op).then(|| n.args[0])
    }

    fn push(&mut self, op: Op, args: Vec<ValueId>, ty: Type) -> ValueId {
        let mut args_key: Vec<u32> = args.iter().map(|a| a.0).collect();
        if op.is_commutative() {
            args_key.sort_unstable();
        }
        let bits = match op {
            Op::Const(c) => c.to_bits(),
            Op::Input(id) => u64::from(id.0),
            _ => 0,
        };
        let key = (op.name(), bits, args_key);
        if let Some(&v) = self.memo.get(&key) {
            return v;
        }
        let id = ValueId(self.out.nodes.len() as u32);
        self.out.nodes.push(Node { op, args, ty });
        self.out.locs.push(self.loc.clone());
        self.memo.insert(key, id);
        id
    }

    fn c(&mut self, x: f64) -> ValueId {
        self.push(Op::Const(x), vec![], Type::f32(Level::Batch))
    }

    /// Builds `op(args)`, simplified; the result has the type `op(args)` infers.
    fn make(&mut self, op: Op, mut args: Vec<ValueId>) -> ValueId {
        let tys: Vec<Type> = args.iter().map(|&a| self.ty(a)).collect();
        let Ok(ty) = op.infer(&tys) else {
            // Not reachable for verified input; keep the node as is.
            let ty = tys.first().copied().unwrap_or(Type::f32(Level::Batch));
            return self.push(op, args, ty);
        };
        if op.is_elementwise() {
            let mut t2 = tys.clone();
            for k in 0..args.len() {
                if let Some(inner) = self.unwrap(args[k], Op::Broadcast(self.ty(args[k]).level)) {
                    let before = t2[k];
                    t2[k] = self.ty(inner);
                    if op.infer(&t2).map(|t| t.level) == Ok(ty.level) {
                        args[k] = inner;
                    } else {
                        t2[k] = before;
                    }
                }
            }
        }
        match self.rule(op, &args, ty) {
            Some(r) => self.fit(r, ty),
            None => self.push(op, args, ty),
        }
    }

    /// `r` at the type `ty` (broadcast when coarser).
    fn fit(&mut self, r: ValueId, ty: Type) -> ValueId {
        let rt = self.ty(r);
        if rt == ty {
            r
        } else if rt.dtype == ty.dtype && rt.level > ty.level {
            self.make(Op::Broadcast(ty.level), vec![r])
        } else {
            r
        }
    }

    fn rule(&mut self, op: Op, a: &[ValueId], ty: Type) -> Option<ValueId> {
        const NEG: Op = Op::Unary(Unary::Neg);
        const ADD: Op = Op::Binary(Binary::Add);
        const SUB: Op = Op::Binary(Binary::Sub);
        const MUL: Op = Op::Binary(Binary::Mul);
        const DIV: Op = Op::Binary(Binary::Div);
        // Constant folding.
        if ty.dtype == DType::F32 {
            let cs: Option<Vec<f64>> = a.iter().map(|&x| self.constant(x)).collect();
            if let Some(cs) = cs {
                let v = match (op, cs.as_slice()) {
                    (Op::Unary(u), [x]) => Some(scalar::unary(u, *x)),
                    (Op::Binary(b), [x, y]) => Some(scalar::binary(b, *x, *y)),
                    (Op::Clamp, [x, lo, hi]) => Some(scalar::clamp(*x, *lo, *hi)),
                    _ => None,
                };
                if let Some(v) = v {
                    return Some(self.c(v));
                }
            }
        }
        match op {
            Op::Binary(Binary::Add) => {
                if self.is(a[1], 0.0) {
                    return Some(a[0]);
                }
                if self.is(a[0], 0.0) {
                    return Some(a[1]);
                }
                if let Some(b) = self.unwrap(a[1], NEG) {
                    return Some(self.make(SUB, vec![a[0], b]));
                }
                if let Some(x) = self.unwrap(a[0], NEG) {
                    return Some(self.make(SUB, vec![a[1], x]));
                }
            }
            Op::Binary(Binary::Sub) => {
                if self.is(a[1], 0.0) {
                    return Some(a[0]);
                }
                if self.is(a[0], 0.0) {
                    return Some(self.make(NEG, vec![a[1]]));
                }
                if let Some(b) = self.unwrap(a[1], NEG) {
                    return Some(self.make(ADD, vec![a[0], b]));
                }
            }
            Op::Binary(Binary::Mul) => {
                for (x, y) in [(a[0], a[1]), (a[1], a[0])] {
                    if self.is(y, 1.0) {
                        return Some(x);
                    }
                    if self.is(y, 0.0) {
                        return Some(self.c(0.0));
                    }
                    if self.is(y, -1.0) {
                        return Some(self.make(NEG, vec![x]));
                    }
                    if let Some(inner) = self.unwrap(x, NEG) {
                        let m = self.make(MUL, vec![inner, y]);
                        return Some(self.make(NEG, vec![m]));
                    }
                }
            }
            Op::Binary(Binary::Div) => {
                if self.is(a[1], 1.0) {
                    return Some(a[0]);
                }
                if let Some(inner) = self.unwrap(a[0], NEG) {
                    let q = self.make(DIV, vec![inner, a[1]]);
                    return Some(self.make(NEG, vec![q]));
                }
            }
            Op::Unary(Unary::Neg) => {
                if let Some(x) = self.unwrap(a[0], NEG) {
                    return Some(x);
                }
                let n = self.node(a[0]).clone();
                if n.op == SUB {
                    return Some(self.make(SUB, vec![n.args[1], n.args[0]]));
                }
            }
            Op::Select => {
                if a[1] == a[2] {
                    return Some(a[1]);
                }
                let (c, x, y) = (a[0], a[1], a[2]);
                let inner_then = self.node(x).clone();
                if inner_then.op == Op::Select && inner_then.args[0] == c {
                    return Some(self.make(Op::Select, vec![c, inner_then.args[1], y]));
                }
                let inner_else = self.node(y).clone();
                if inner_else.op == Op::Select && inner_else.args[0] == c {
                    return Some(self.make(Op::Select, vec![c, x, inner_else.args[2]]));
                }
                if let Some(t) = self.unwrap(c, Op::Valid) {
                    let always = match self.node(t).op {
                        Op::Input(id) => self.src.inputs[id.index()].kind == InputKind::Tokens,
                        Op::ArgMax => true,
                        _ => false,
                    };
                    if always {
                        return Some(x);
                    }
                }
            }
            Op::Unary(Unary::Exp) => {
                if let Some(z) = self.unwrap(a[0], Op::LogSoftmax) {
                    return Some(self.make(Op::Softmax, vec![z]));
                }
            }
            Op::VocabReduce(VocabReduce::Sum) => {
                if let Some(x) = self.unwrap(a[0], Op::Broadcast(Level::Vocab)) {
                    let v = self.make(Op::Size(crate::op::Size::Vocab), vec![]);
                    return Some(self.make(MUL, vec![x, v]));
                }
            }
            Op::Broadcast(l) => {
                if self.ty(a[0]).level == l {
                    return Some(a[0]);
                }
                let n = self.node(a[0]).clone();
                if let Op::Broadcast(_) = n.op {
                    return Some(self.make(Op::Broadcast(l), vec![n.args[0]]));
                }
            }
            _ => {}
        }
        None
    }
}

fn rewrite(f: &LossFn) -> LossFn {
    let mut rw = Rw {
        src: f,
        out: LossFn {
            name: f.name.clone(),
            inputs: f.inputs.clone(),
            ..Default::default()
        },
        memo: HashMap::new(),
        loc: None,
    };
    let mut map = Vec::with_capacity(f.nodes.len());
    for (i, node) in f.nodes.iter().enumerate() {
        rw.loc = f.locs.get(i).cloned().flatten();
        let args: Vec<ValueId> = node.args.iter().map(|a| map[a.index()]).collect();
        let v = match node.op {
            Op::Input(_) => rw.push(node.op, args, node.ty),
            op => rw.make(op, args),
        };
        map.push(v);
    }
    rw.out.outputs = f
        .outputs
        .iter()
        .map(|o| Output {
            kind: o.kind.clone(),
            value: map[o.value.index()],
            loc: o.loc.clone(),
        })
        .collect();
    rw.out
}

/// Drops nodes no output depends on (input nodes are kept) and renumbers the rest.
pub fn dce(f: &LossFn) -> LossFn {
    let n = f.nodes.len();
    let mut live = vec![false; n];
    for o in &f.outputs {
        live[o.value.index()] = true;
    }
    for i in (0..n).rev() {
        if matches!(f.nodes[i].op, Op::Input(_)) {
            live[i] = true;
        }
        if live[i] {
            for a in &f.nodes[i].args {
                live[a.index()] = true;
            }
        }
    }
    let mut map = vec![ValueId(u32::MAX); n];
    let mut out = LossFn {
        name: f.name.clone(),
        inputs: f.inputs.clone(),
        ..Default::default()
    };
    for i in 0..n {
        if !live[i] {
            continue;
        }
        let node = &f.nodes[i];
        map[i] = ValueId(out.nodes.len() as u32);
        out.nodes.push(Node {
            op: node.op,
            args: node.args.iter().map(|a| map[a.index()]).collect(),
            ty: node.ty,
        });
        out.locs.push(f.locs.get(i).cloned().flatten());
    }
    out.outputs = f
        .outputs
        .iter()
        .map(|o| Output {
            kind: o.kind.clone(),
            value: map[o.value.index()],
            loc: o.loc.clone(),
        })
        .collect();
    out
}
