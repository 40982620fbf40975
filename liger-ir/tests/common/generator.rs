//! A generator of random, well-levelled loss functions with matching random data.
//!
//! Each case declares one input of every kind (a `logits` head `policy`, a `frozen` head
//! `teacher`, `target`, `tokens`, row/seq inputs and masks, a vocab input, a scalar input and
//! a hyperparameter), then applies random ops from the language's function table (plus the autodiff-only
//! ops) to operands of fitting dtype and level. Every new node is evaluated on the case's data
//! right away, and rejected when it leaves its domain (log of a value near 0, a division by a
//! value near 0, exp overflow…) or breaks the forward group rule; so every accepted function
//! verifies and evaluates to finite, moderate values. The loss reduces recent values that
//! depend differentiably on `policy` to Batch level and adds them.

use liger_ir::interp::{Data, Value, evaluate_nodes};
use liger_ir::op::{Binary, Cmp, Unary};
use liger_ir::{Builder, HostBatch, HostInput, InputKind, Level, LossFn, Op, Type, ValueId};

use super::{logits, normal, targets};

/// A generated function with its data.
pub struct Case {
    /// The forward function.
    pub f: LossFn,
    /// Its inputs.
    pub batch: HostBatch,
}

/// Ops the generator draws from: every op of the table (`broadcast` once for its levels),
/// by text name. Derived from `Op::all()`, so a new op is drawn (and must have a rule in
/// `build`, or the coverage tests fail).
pub fn gen_ops() -> Vec<String> {
    let mut v: Vec<String> = Op::all()
        .into_iter()
        .filter(|op| !matches!(op, Op::Input(_) | Op::Const(_) | Op::Broadcast(_)))
        .map(|op| op.static_name().to_string())
        .collect();
    v.push("broadcast".into());
    v
}

/// The functions of the loss language as IR op names, comparisons included (they appear
/// inside `select`); derived from the op table's surface functions.
pub fn surface_ops() -> Vec<String> {
    let mut v: Vec<String> = liger_ir::op::surface_functions()
        .into_iter()
        .filter_map(|f| f.op.map(|op| op.static_name().to_string()))
        .collect();
    v.extend(liger_ir::op::Cmp::ALL.iter().map(|c| c.name().to_string()));
    v.extend(["add", "sub", "mul", "div", "neg"].map(String::from));
    v.sort();
    v.dedup();
    v
}

struct G {
    rng: fastrand::Rng,
    f: LossFn,
    vals: Vec<Value>,
    batch: HostBatch,
    /// (derived from a head, depends differentiably on `policy`)
    flags: Vec<(bool, bool)>,
}

fn stats(v: &Value) -> (f64, f64, f64) {
    let x = v.floats();
    let mn = x.iter().copied().fold(f64::INFINITY, f64::min);
    let mx = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let ma = x.iter().map(|a| a.abs()).fold(f64::INFINITY, f64::min);
    (mn, mx, ma)
}

impl G {
    fn ty(&self, v: ValueId) -> Type {
        self.f.ty(v)
    }

    fn recompute_flags(&mut self) {
        let f = &self.f;
        let mut flags: Vec<(bool, bool)> = Vec::with_capacity(f.nodes.len());
        for n in &f.nodes {
            let fl = match n.op {
                Op::Input(id) => {
                    let k = f.inputs[id.index()].kind;
                    (k.is_head(), k == InputKind::Logits)
                }
                op => (
                    n.args.iter().any(|a| flags[a.index()].0),
                    op.differentiable_args()
                        .iter()
                        .any(|&k| flags[n.args[k].index()].1),
                ),
            };
            flags.push(fl);
        }
        self.flags = flags;
    }

    /// A random existing value satisfying `pred`, preferring values that depend on `policy`
    /// and recent ones.
    fn pick(&mut self, pred: impl Fn(&G, ValueId) -> bool) -> Option<ValueId> {
        let cands: Vec<ValueId> = self.f.ids().filter(|&v| pred(self, v)).collect();
        if cands.is_empty() {
            return None;
        }
        let diff: Vec<ValueId> = cands
            .iter()
            .copied()
            .filter(|v| self.flags[v.index()].1)
            .collect();
        let pool = if !diff.is_empty() && self.rng.f64() < 0.75 {
            diff
        } else {
            cands
        };
        // Bias toward recent values: pick the max of two draws.
        let a = self.rng.usize(0..pool.len());
        let b = self.rng.usize(0..pool.len());
        Some(pool[a.max(b)])
    }

    fn float_at(&mut self, levels: &[Level]) -> Option<ValueId> {
        let levels = levels.to_vec();
        self.pick(move |g, v| {
            let t = g.ty(v);
            t.dtype == liger_ir::DType::F32 && levels.contains(&t.level)
        })
    }

    fn any_float(&mut self) -> Option<ValueId> {
        self.float_at(&Level::ALL)
    }

    fn input(&self, name: &str) -> ValueId {
        self.f
            .input_by_name(name)
            .and_then(|i| self.f.input_node(i))
            .expect("generator input exists")
    }

    fn mask(&mut self) -> ValueId {
        match self.rng.usize(0..3) {
            0 => self.input("row_m"),
            1 => self.input("target"),
            _ => self.input("tokens"),
        }
    }

    /// Tries to add `op`; keeps the function unchanged when the attempt is rejected.
    fn try_op(&mut self, name: &str) -> bool {
        let mut b = Builder::from_fn(self.f.clone());
        let Some(v) = self.build(&mut b, name) else {
            return false;
        };
        let f = b.finish();
        // Forward group rule for every new node.
        let flags_ok = {
            let old = self.f.nodes.len();
            let after = liger_ir::verify::after_group(&f);
            (old..f.nodes.len()).all(|i| {
                let n = &f.nodes[i];
                n.ty.level != Level::Vocab || n.args.iter().all(|a| !after[a.index()])
            })
        };
        if !flags_ok {
            return false;
        }
        let Ok(vals) = evaluate_nodes(&f, &self.batch) else {
            return false;
        };
        let val = &vals[v.index()];
        if let Data::F(x) = &val.data
            && x.iter().any(|a| !a.is_finite() || a.abs() > 1e4)
        {
            return false;
        }
        self.f = f;
        self.vals = vals;
        self.recompute_flags();
        true
    }

    fn val(&self, b: &Builder, v: ValueId) -> Option<(f64, f64, f64)> {
        // Values built in this attempt are not evaluated yet; only use stats of old ones.
        let _ = b;
        self.vals.get(v.index()).map(stats)
    }

    fn build(&mut self, b: &mut Builder, name: &str) -> Option<ValueId> {
        let op = Op::from_name(name);
        let c = |b: &mut Builder, x: f64| b.constant(x);
        let fin = |r: Result<ValueId, liger_ir::Diagnostic>| r.ok();
        match name {
            "add" | "sub" | "mul" | "logaddexp" => {
                let (x, y) = (self.any_float()?, self.any_float()?);
                fin(b.op(op?, &[x, y]))
            }
            "div" => {
                let x = self.any_float()?;
                let y = self.pick(|g, v| {
                    g.ty(v).dtype == liger_ir::DType::F32
                        && g.vals.get(v.index()).map(stats).is_some_and(|(mn, mx, _)| {
                            (mn > 0.3 || mx < -0.3) && mx.abs().max(mn.abs()) < 50.0
                        })
                })?;
                fin(b.op(Op::Binary(Binary::Div), &[x, y]))
            }
            // Any other unary op takes any float (values that leave the generator's range are
            // rejected and redrawn), so a new unary op needs no rule here.
            _ if matches!(op, Some(Op::Unary(_)))
                && !matches!(
                    name,
                    "exp" | "expm1" | "log" | "sqrt" | "log1p" | "abs" | "relu"
                ) =>
            {
                let x = self.any_float()?;
                fin(b.op(op?, &[x]))
            }
            "exp" | "expm1" => {
                let x = self.pick(|g, v| {
                    g.ty(v).dtype == liger_ir::DType::F32
                        && g.vals
                            .get(v.index())
                            .map(stats)
                            .is_some_and(|(_, mx, _)| mx < 6.0)
                })?;
                fin(b.op(op?, &[x]))
            }
            "log" | "sqrt" => {
                let x = self.pick(|g, v| {
                    g.ty(v).dtype == liger_ir::DType::F32
                        && g.vals
                            .get(v.index())
                            .map(stats)
                            .is_some_and(|(mn, _, _)| mn > 0.05)
                });
                let x = match x {
                    Some(x) => x,
                    None => {
                        let y = self.any_float()?;
                        fin(b.op(Op::Unary(Unary::Softplus), &[y]))?
                    }
                };
                fin(b.op(op?, &[x]))
            }
            "log1p" => {
                let x = self.pick(|g, v| {
                    g.ty(v).dtype == liger_ir::DType::F32
                        && g.vals
                            .get(v.index())
                            .map(stats)
                            .is_some_and(|(mn, _, _)| mn > -0.8)
                })?;
                fin(b.op(Op::Unary(Unary::Log1p), &[x]))
            }
            "pow" => {
                let x = self.pick(|g, v| {
                    g.ty(v).dtype == liger_ir::DType::F32
                        && g.vals
                            .get(v.index())
                            .map(stats)
                            .is_some_and(|(mn, mx, _)| mn > 0.2 && mx < 20.0)
                })?;
                let p = if self.rng.bool() {
                    c(b, 0.5 + 2.0 * self.rng.f64())
                } else {
                    self.pick(|g, v| {
                        g.ty(v).dtype == liger_ir::DType::F32
                            && g.vals
                                .get(v.index())
                                .map(stats)
                                .is_some_and(|(mn, mx, _)| mn > -2.5 && mx < 2.5)
                    })?
                };
                fin(b.op(Op::Binary(Binary::Pow), &[x, p]))
            }
            "abs" | "relu" => {
                let x = self.pick(|g, v| {
                    g.ty(v).dtype == liger_ir::DType::F32
                        && g.vals
                            .get(v.index())
                            .map(stats)
                            .is_some_and(|(_, _, ma)| ma > 1e-2)
                })?;
                fin(b.op(op?, &[x]))
            }
            "min" | "max" => {
                let (x, y) = (self.any_float()?, self.any_float()?);
                if x == y {
                    return None;
                }
                fin(b.op(op?, &[x, y]))
            }
            "clamp" => {
                let x = self.any_float()?;
                let (mn, mx, _) = self.val(b, x)?;
                let lo = mn + (mx - mn) * 0.3 * self.rng.f64() - 0.05;
                let hi = mx - (mx - mn) * 0.3 * self.rng.f64() + 0.05;
                let (lo, hi) = (c(b, lo), c(b, hi));
                fin(b.op(Op::Clamp, &[x, lo, hi]))
            }
            "select" | "lt" | "le" | "gt" | "ge" | "eq" | "ne" => {
                let cmp = match name {
                    "select" => Op::Compare(Cmp::ALL[self.rng.usize(0..Cmp::ALL.len())]),
                    _ => op?,
                };
                let kind = if name == "select" {
                    self.rng.usize(0..4)
                } else {
                    2 + self.rng.usize(0..2)
                };
                let cond = match kind {
                    0 => {
                        let m = self.mask();
                        if b.ty(m).dtype == liger_ir::DType::Idx {
                            fin(b.valid(m))?
                        } else {
                            m
                        }
                    }
                    1 => self.input("seq_m"),
                    2 if matches!(cmp, Op::Compare(Cmp::Eq | Cmp::Ne)) => {
                        let z = self.float_at(&[Level::Vocab])?;
                        let k = fin(b.op(Op::ArgMax, &[z]))?;
                        let which = if self.rng.bool() { "target" } else { "tokens" };
                        let t = self.input(which);
                        fin(b.op(cmp, &[k, t]))?
                    }
                    _ => {
                        let (x, y) = (self.any_float()?, self.any_float()?);
                        fin(b.op(cmp, &[x, y]))?
                    }
                };
                let x = self.any_float()?;
                let y = if self.rng.bool() {
                    c(b, 0.0)
                } else {
                    self.any_float()?
                };
                fin(b.op(Op::Select, &[cond, x, y]))
            }
            "log_softmax" | "softmax" | "sum_vocab" | "max_vocab" | "logsumexp" | "argmax" => {
                let z = self.float_at(&[Level::Vocab])?;
                let r = fin(b.op(op?, &[z]))?;
                if name == "argmax" {
                    // Use the index so the node is not dead.
                    let e = self.float_at(&[Level::Vocab])?;
                    return fin(b.op(Op::AtTarget, &[e, r]));
                }
                Some(r)
            }
            "at_target" | "logprob" => {
                let z = self.float_at(&[Level::Vocab])?;
                let which = if self.rng.f64() < 0.7 {
                    "target"
                } else {
                    "tokens"
                };
                let t = self.input(which);
                fin(b.op(op?, &[z, t]))
            }
            "valid" | "num_valid" | "seq_count" => {
                let m = self.mask();
                let m = if b.ty(m).dtype == liger_ir::DType::Idx {
                    fin(b.valid(m))?
                } else {
                    m
                };
                match name {
                    "valid" => {
                        let x = self.float_at(&[Level::Vocab, Level::Row])?;
                        let z = c(b, 0.0);
                        fin(b.op(Op::Select, &[m, x, z]))
                    }
                    "num_valid" => fin(b.op(Op::NumValid, &[m])),
                    _ => fin(b.op(Op::SeqCount, &[m])),
                }
            }
            "seq_sum" | "seq_mean" | "seq_mean_or_zero" => {
                let x = self.float_at(&[Level::Row])?;
                let mut args = vec![x];
                if self.rng.f64() < 0.75 {
                    let m = self.mask();
                    let m = if b.ty(m).dtype == liger_ir::DType::Idx {
                        fin(b.valid(m))?
                    } else {
                        m
                    };
                    args.push(m);
                }
                fin(b.op(op?, &args))
            }
            "chosen" | "rejected" => {
                let x = self.float_at(&[Level::Seq])?;
                fin(b.op(op?, &[x]))
            }
            "place_chosen" | "place_rejected" => {
                let x = match self.float_at(&[Level::Pair]) {
                    Some(x) => x,
                    None => {
                        let s = self.float_at(&[Level::Seq])?;
                        fin(b.chosen(s))?
                    }
                };
                fin(b.op(op?, &[x]))
            }
            "sum" | "mean" => {
                let x = self.float_at(&[Level::Row, Level::Seq, Level::Pair, Level::Batch])?;
                let mut args = vec![x];
                if b.ty(x).level == Level::Row {
                    let m = self.mask();
                    let m = if b.ty(m).dtype == liger_ir::DType::Idx {
                        fin(b.valid(m))?
                    } else {
                        m
                    };
                    args.push(m);
                }
                fin(b.op(op?, &args))
            }
            "sum_all" | "mean_all" => {
                let x = self.float_at(&[Level::Row])?;
                fin(b.op(op?, &[x]))
            }
            "vocab_size" | "seq_len" | "num_seqs" | "num_pairs" => {
                let s = fin(b.op(op?, &[]))?;
                let x = self.any_float()?;
                let s = fin(b.op(Op::Binary(Binary::Div), &[x, s]))?;
                Some(s)
            }
            "onehot" => {
                let t = self.input("target");
                let h = fin(b.op(Op::OneHot, &[t]))?;
                let z = self.float_at(&[Level::Vocab])?;
                fin(b.op(Op::Binary(Binary::Mul), &[h, z]))
            }
            "broadcast" => {
                let x = self.float_at(&[Level::Row, Level::Seq, Level::Pair, Level::Batch])?;
                let l = b.ty(x).level;
                let to = Level::ALL[self.rng.usize(0..l as usize)];
                let bx = fin(b.op(Op::Broadcast(to), &[x]))?;
                let y = self.float_at(&[to])?;
                fin(b.op(Op::Binary(Binary::Add), &[bx, y]))
            }
            other => panic!("the generator has no rule for op `{other}`: add one to `build`"),
        }
    }

    /// Reduces `v` to a Batch-level value.
    fn reduce_to_batch(&mut self, v: ValueId) -> Option<ValueId> {
        let mut b = Builder::from_fn(self.f.clone());
        let mut x = v;
        if b.ty(x).level == Level::Vocab {
            x = b.sum_vocab(x).ok()?;
        }
        let r = match b.ty(x).level {
            Level::Row => {
                let t = self.input("target");
                let m = b.valid(t).ok()?;
                if self.rng.bool() {
                    b.op(Op::Mean, &[x, m]).ok()?
                } else {
                    b.op(Op::SumAll, &[x]).ok()?
                }
            }
            Level::Seq | Level::Pair => b.op(Op::Mean, &[x]).ok()?,
            _ => x,
        };
        self.f = b.finish();
        Some(r)
    }
}

/// The data of a random case: small even `S`, odd and even `T` and `V`.
fn random_batch(rng: &mut fastrand::Rng) -> HostBatch {
    let s = [2, 4][rng.usize(0..2)];
    let t = [1, 2, 3, 5][rng.usize(0..4)];
    let v = [2, 3, 5, 7][rng.usize(0..4)];
    let ignore = if rng.bool() { -100 } else { 42 };
    let r = s * t;
    let mut row_m: Vec<bool> = (0..r).map(|_| rng.bool()).collect();
    for q in 0..s {
        row_m[q * t] = true;
    }
    let mut b = HostBatch::new(s, t, v);
    b.ignore_index = ignore;
    b.with("policy", HostInput::Logits(logits(rng, r * v, 1.2)))
        .with("teacher", HostInput::Logits(logits(rng, r * v, 1.2)))
        .with("target", HostInput::Ids(targets(rng, s, t, v, ignore)))
        .with(
            "tokens",
            HostInput::Ids((0..r).map(|_| rng.usize(0..v) as i64).collect()),
        )
        .with(
            "row_in",
            HostInput::Floats((0..r).map(|_| normal(rng, 1.0)).collect()),
        )
        .with("row_m", HostInput::Mask(row_m))
        .with(
            "seq_in",
            HostInput::Floats((0..s).map(|_| normal(rng, 1.0)).collect()),
        )
        .with(
            "seq_m",
            HostInput::Mask((0..s).map(|_| rng.bool()).collect()),
        )
        .with(
            "voc",
            HostInput::Floats((0..v).map(|_| normal(rng, 1.0)).collect()),
        )
        .with("sc", HostInput::Scalar(normal(rng, 1.0)))
        .with("p", HostInput::Scalar(0.2 + rng.f64()))
}

/// A random case from `seed`; when `focus` names an op, about half the steps use it.
pub fn random_case(seed: u64, focus: Option<&str>) -> Case {
    let mut rng = fastrand::Rng::with_seed(seed);
    let batch = random_batch(&mut rng);
    let mut b = Builder::new(format!("gen{seed}"));
    for (name, kind) in [
        ("policy", InputKind::Logits),
        ("teacher", InputKind::Frozen),
        ("target", InputKind::Target),
        ("tokens", InputKind::Tokens),
        ("row_in", InputKind::RowInput),
        ("row_m", InputKind::RowMask),
        ("seq_in", InputKind::SeqInput),
        ("seq_m", InputKind::SeqMask),
        ("voc", InputKind::VocabInput),
        ("sc", InputKind::ScalarInput),
        ("p", InputKind::Param),
    ] {
        b.input(name, kind).expect("distinct input names");
    }
    let f = b.finish();
    let vals = evaluate_nodes(&f, &batch).expect("inputs evaluate");
    let mut g = G {
        rng,
        f,
        vals,
        batch,
        flags: vec![],
    };
    g.recompute_flags();
    let ops = gen_ops();
    let steps = 8 + g.rng.usize(0..14);
    let mut done = 0;
    let mut tries = 0;
    while done < steps && tries < steps * 20 {
        tries += 1;
        let name = match focus {
            Some(op) if g.rng.bool() => op,
            _ => ops[g.rng.usize(0..ops.len())].as_str(),
        };
        if g.try_op(name) {
            done += 1;
        }
    }
    // The loss: recent values that depend on `policy`, reduced to Batch, weighted and added.
    let n = g.f.nodes.len();
    let mut terms: Vec<ValueId> = (0..n as u32)
        .rev()
        .map(ValueId)
        .filter(|v| g.flags[v.index()].1 && g.f.ty(*v).dtype == liger_ir::DType::F32)
        .take(3)
        .collect();
    if terms.is_empty() {
        let mut b = Builder::from_fn(g.f.clone());
        let (p, t) = (g.input("policy"), g.input("target"));
        let lp = b.logprob(p, t).expect("logprob types");
        g.f = b.finish();
        terms.push(lp);
    }
    let mut reduced = Vec::new();
    for t in terms {
        if let Some(r) = g.reduce_to_batch(t) {
            reduced.push(r);
        }
    }
    let mut b = Builder::from_fn(g.f.clone());
    let mut total = None;
    for r in reduced {
        let w = b.constant((0.5 + g.rng.f64()).mul_add(if g.rng.bool() { 1.0 } else { -1.0 }, 0.0));
        let term = b.mul(w, r).expect("batch mul");
        total = Some(match total {
            None => term,
            Some(acc) => b.add(acc, term).expect("batch add"),
        });
    }
    let total = total.expect("at least one loss term");
    b.loss(total);
    // A metric, when some non-vocab float value exists.
    if let Some(m) = (0..n as u32).rev().map(ValueId).find(|v| {
        let t = b.ty(*v);
        t.dtype == liger_ir::DType::F32 && t.level != Level::Vocab
    }) {
        b.metric("m0", m);
    }
    Case {
        f: b.finish(),
        batch: g.batch,
    }
}
