//! The f64 reference interpreter: evaluates a loss (or its gradient IR) on host arrays for a
//! whole batch. It is the oracle every executor is tested against.
//!
//! Layout: the batch is `S` sequences of `T` rows (padded; `R = S*T` rows), vocabulary `V`,
//! `P = S/2` pairs (sequence `i` chosen, `P+i` rejected). A head's logits are `[S,T,V]`
//! row-major; Row inputs `[S,T]`; Seq inputs `[S]`; Vocab inputs `[V]`. Values are held
//! densely per level (Vocab `R*V`, Row `R`, Seq `S`, Pair `P`, Batch 1); a coarser operand
//! broadcasts by index mapping. Masked reductions skip rows outside the mask (so a NaN there
//! never leaks). Errors are typed ([`EvalError`]) and name what is wrong; nothing panics on
//! bad input.

use std::collections::BTreeMap;

use crate::diag::Diagnostics;
use crate::func::{InputKind, LossFn, OutputKind, ValueId};
use crate::op::{Binary, Op, SeqReduce, Size, Unary, VocabReduce};
use crate::scalar;
use crate::types::{DType, Level, Type};

/// One input's host data. Which variant an input takes follows its kind: heads `Logits`,
/// `Target`/`Tokens` `Ids`, `RowInput`/`SeqInput`/`VocabInput` `Floats`,
/// `RowMask`/`SeqMask` `Mask`, `ScalarInput`/`Param` `Scalar`.
#[derive(Clone, Debug, PartialEq)]
pub enum HostInput {
    /// `[S,T,V]` logits of a head.
    Logits(Vec<f64>),
    /// `[S,T]` token ids.
    Ids(Vec<i64>),
    /// Floats at the input's level.
    Floats(Vec<f64>),
    /// Bools at the input's level.
    Mask(Vec<bool>),
    /// A scalar.
    Scalar(f64),
}

/// A whole batch of host inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct HostBatch {
    /// `S`, the number of sequences.
    pub num_seqs: usize,
    /// `T`, rows per (padded) sequence.
    pub seq_len: usize,
    /// `V`, the vocabulary size.
    pub vocab: usize,
    /// Target rows equal to this are invalid (a runtime value; any integer, e.g. -100 or 42).
    pub ignore_index: i64,
    /// Inputs by parameter name.
    pub inputs: BTreeMap<String, HostInput>,
}

impl HostBatch {
    /// An empty batch of the given sizes with `ignore_index = -100`.
    pub fn new(num_seqs: usize, seq_len: usize, vocab: usize) -> Self {
        HostBatch {
            num_seqs,
            seq_len,
            vocab,
            ignore_index: -100,
            inputs: BTreeMap::new(),
        }
    }

    /// Sets an input (builder style).
    pub fn with(mut self, name: &str, input: HostInput) -> Self {
        self.inputs.insert(name.to_string(), input);
        self
    }
}

/// Why an evaluation failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// The function does not verify.
    #[error("the IR does not verify:\n{0}")]
    InvalidIr(Diagnostics),
    /// A size is zero.
    #[error(
        "empty batch: {num_seqs} sequences x {seq_len} rows, vocabulary {vocab}; every size must be at least 1"
    )]
    EmptyBatch {
        /// S
        num_seqs: usize,
        /// T
        seq_len: usize,
        /// V
        vocab: usize,
    },
    /// A declared input was not given.
    #[error("missing input `{name}` ({kind}): pass it in the batch")]
    MissingInput {
        /// Parameter name.
        name: String,
        /// Its kind.
        kind: &'static str,
    },
    /// A given input is not a parameter of the loss.
    #[error("unknown input `{name}`: the loss has no such parameter (parameters: {known})")]
    UnknownInput {
        /// The given name.
        name: String,
        /// The loss's parameter names.
        known: String,
    },
    /// The data variant does not fit the input's kind.
    #[error("input `{name}` is {kind}, which takes {want}")]
    WrongInputType {
        /// Parameter name.
        name: String,
        /// Its kind.
        kind: &'static str,
        /// The variant it takes.
        want: &'static str,
    },
    /// Wrong number of elements.
    #[error("input `{name}` has {got} elements, expected {expected}")]
    ShapeMismatch {
        /// Parameter name.
        name: String,
        /// The expected shape, e.g. `[S,T,V] = [6,47,123] = 34686`.
        expected: String,
        /// Elements given.
        got: usize,
    },
    /// A token id outside `[0, V)` that is not the ignore index.
    #[error(
        "`{name}`[{seq},{pos}] = {value} is not a token id in [0, {vocab}) nor the ignore_index {ignore_index}"
    )]
    TargetOutOfRange {
        /// Parameter name.
        name: String,
        /// Sequence.
        seq: usize,
        /// Row within the sequence.
        pos: usize,
        /// The id.
        value: i64,
        /// V
        vocab: usize,
        /// The batch's ignore index.
        ignore_index: i64,
    },
    /// NaN or infinity in an input.
    #[error("input `{name}` holds a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        /// Parameter name.
        name: String,
        /// Flat index.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A pair-level value with an odd number of sequences.
    #[error(
        "the loss pairs sequences (chosen then rejected) but the batch has {num_seqs} sequences, an odd number"
    )]
    OddSequenceCount {
        /// S
        num_seqs: usize,
    },
    /// `seq_mean` over a sequence with no row under its mask.
    #[error(
        "sequence {seq} has no valid row, so its `seq_mean` is undefined (a data bug for preference losses; use seq_mean_or_zero to allow it)"
    )]
    EmptySequence {
        /// The sequence.
        seq: usize,
    },
}

/// A non-fatal finding of an evaluation.
#[derive(Clone, Debug, PartialEq)]
pub enum EvalWarning {
    /// A row-level `mean` whose mask selects no row in the batch: it is 0, with no gradient.
    MeanOverNoRows {
        /// The `mean` node.
        node: ValueId,
    },
    /// A masked `seq_sum` over a sequence with no row under its mask: the sum is 0.
    EmptySeqSum {
        /// The `seq_sum` node.
        node: ValueId,
        /// The first such sequence.
        seq: usize,
    },
}

/// The data of a value.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// Floats.
    F(Vec<f64>),
    /// Bools.
    B(Vec<bool>),
    /// Indices (`None` = invalid row).
    I(Vec<Option<u32>>),
}

/// A value computed by the interpreter, dense at its level.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// Its type.
    pub ty: Type,
    /// Its elements.
    pub data: Data,
}

impl Value {
    /// The floats of an f32 value (empty for other dtypes).
    pub fn floats(&self) -> &[f64] {
        match &self.data {
            Data::F(v) => v,
            _ => &[],
        }
    }
}

/// A metric's value.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricValue {
    /// Its name.
    pub name: String,
    /// Its level (Batch: one value; Pair `[P]`; Seq `[S]`; Row `[S,T]`).
    pub level: Level,
    /// Its values.
    pub values: Vec<f64>,
}

/// The result of evaluating a function on a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// The loss.
    pub loss: f64,
    /// Metrics in output order.
    pub metrics: Vec<MetricValue>,
    /// `dL/dlogits` per head with a `grad` output: `(head name, [S,T,V])`.
    pub grads: Vec<(String, Vec<f64>)>,
    /// Non-fatal findings.
    pub warnings: Vec<EvalWarning>,
    /// A hash of every branch taken (`abs`/`relu` signs, `min`/`max`/`clamp` sides,
    /// comparisons, `argmax`/`max_vocab` positions): finite-difference tests compare it at
    /// `x ± h` to skip points next to a kink.
    pub branch_signature: u64,
}

impl Evaluation {
    /// The metric called `name`.
    pub fn metric(&self, name: &str) -> Option<&MetricValue> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// The gradient of head `name`.
    pub fn grad(&self, name: &str) -> Option<&[f64]> {
        self.grads
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, g)| g.as_slice())
    }
}

#[derive(Clone, Copy)]
struct Dims {
    s: usize,
    t: usize,
    v: usize,
}

impl Dims {
    fn size(&self, l: Level) -> usize {
        match l {
            Level::Vocab => self.s * self.t * self.v,
            Level::Row => self.s * self.t,
            Level::Seq => self.s,
            Level::Pair => self.s / 2,
            Level::Batch => 1,
        }
    }

    /// Maps an element index at level `from` to the index of the element of a coarser level
    /// `to` that it sits in.
    fn coarsen(&self, mut idx: usize, from: Level, to: Level) -> usize {
        if to == Level::Batch {
            return 0;
        }
        let mut l = from;
        while l < to {
            (idx, l) = match l {
                Level::Vocab => (idx / self.v, Level::Row),
                Level::Row => (idx / self.t, Level::Seq),
                Level::Seq => (idx % (self.s / 2).max(1), Level::Pair),
                Level::Pair | Level::Batch => (0, Level::Batch),
            };
        }
        idx
    }
}

struct Sig(u64);

impl Sig {
    fn push(&mut self, x: u64) {
        // FNV-1a over the branch events.
        self.0 ^= x.wrapping_add(0x9e37_79b9);
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

fn input_kind_want(kind: InputKind) -> &'static str {
    match kind {
        InputKind::Logits | InputKind::Frozen => "HostInput::Logits ([S,T,V])",
        InputKind::Target | InputKind::Tokens => "HostInput::Ids ([S,T])",
        InputKind::RowInput => "HostInput::Floats ([S,T])",
        InputKind::SeqInput => "HostInput::Floats ([S])",
        InputKind::VocabInput => "HostInput::Floats ([V])",
        InputKind::RowMask => "HostInput::Mask ([S,T])",
        InputKind::SeqMask => "HostInput::Mask ([S])",
        InputKind::ScalarInput | InputKind::Param => "HostInput::Scalar",
    }
}

fn check_finite(name: &str, xs: &[f64]) -> Result<(), EvalError> {
    match xs.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(EvalError::NonFinite {
            name: name.into(),
            index,
            value: xs[index],
        }),
        None => Ok(()),
    }
}

fn load_input(
    name: &str,
    kind: InputKind,
    data: &HostInput,
    d: Dims,
    ignore: i64,
) -> Result<Value, EvalError> {
    let wrong = || EvalError::WrongInputType {
        name: name.into(),
        kind: kind.name(),
        want: input_kind_want(kind),
    };
    let shape = |n: usize, what: &str| -> Result<(), EvalError> {
        if n == 0 {
            return Ok(());
        }
        Err(EvalError::ShapeMismatch {
            name: name.into(),
            expected: what.into(),
            got: n,
        })
    };
    let (s, t, v) = (d.s, d.t, d.v);
    let expect = |got: usize, want: usize, dims: &str| {
        if got == want {
            shape(0, "")
        } else {
            shape(got.max(1), &format!("{dims} = {want}"))
        }
    };
    let ty = kind.ty();
    let out = match (kind, data) {
        (InputKind::Logits | InputKind::Frozen, HostInput::Logits(x)) => {
            expect(x.len(), s * t * v, &format!("[S,T,V] = [{s},{t},{v}]"))?;
            check_finite(name, x)?;
            Data::F(x.clone())
        }
        (InputKind::Target | InputKind::Tokens, HostInput::Ids(x)) => {
            expect(x.len(), s * t, &format!("[S,T] = [{s},{t}]"))?;
            let mut ids = Vec::with_capacity(x.len());
            for (i, &id) in x.iter().enumerate() {
                if kind == InputKind::Target && id == ignore {
                    ids.push(None);
                } else if id < 0 || id as u64 >= v as u64 {
                    return Err(EvalError::TargetOutOfRange {
                        name: name.into(),
                        seq: i / t,
                        pos: i % t,
                        value: id,
                        vocab: v,
                        ignore_index: ignore,
                    });
                } else {
                    ids.push(Some(id as u32));
                }
            }
            Data::I(ids)
        }
        (InputKind::RowInput, HostInput::Floats(x)) => {
            expect(x.len(), s * t, &format!("[S,T] = [{s},{t}]"))?;
            check_finite(name, x)?;
            Data::F(x.clone())
        }
        (InputKind::SeqInput, HostInput::Floats(x)) => {
            expect(x.len(), s, &format!("[S] = [{s}]"))?;
            check_finite(name, x)?;
            Data::F(x.clone())
        }
        (InputKind::VocabInput, HostInput::Floats(x)) => {
            expect(x.len(), v, &format!("[V] = [{v}]"))?;
            check_finite(name, x)?;
            Data::F((0..s * t * v).map(|i| x[i % v]).collect())
        }
        (InputKind::RowMask, HostInput::Mask(x)) => {
            expect(x.len(), s * t, &format!("[S,T] = [{s},{t}]"))?;
            Data::B(x.clone())
        }
        (InputKind::SeqMask, HostInput::Mask(x)) => {
            expect(x.len(), s, &format!("[S] = [{s}]"))?;
            Data::B(x.clone())
        }
        (InputKind::ScalarInput | InputKind::Param, HostInput::Scalar(x)) => {
            check_finite(name, &[*x])?;
            Data::F(vec![*x])
        }
        _ => return Err(wrong()),
    };
    Ok(Value { ty, data: out })
}

/// Evaluates every node of `f` on `batch` (no outputs needed; for tests and generators).
pub fn evaluate_nodes(f: &LossFn, batch: &HostBatch) -> Result<Vec<Value>, EvalError> {
    let mut warnings = Vec::new();
    let mut sig = Sig(0xcbf2_9ce4_8422_2325);
    eval_all(f, batch, &[], &mut warnings, &mut sig)
}

fn eval_all(
    f: &LossFn,
    batch: &HostBatch,
    pins: &[(ValueId, Value)],
    warnings: &mut Vec<EvalWarning>,
    sig: &mut Sig,
) -> Result<Vec<Value>, EvalError> {
    let d = Dims {
        s: batch.num_seqs,
        t: batch.seq_len,
        v: batch.vocab,
    };
    if d.s == 0 || d.t == 0 || d.v == 0 {
        return Err(EvalError::EmptyBatch {
            num_seqs: d.s,
            seq_len: d.t,
            vocab: d.v,
        });
    }
    for name in batch.inputs.keys() {
        if f.input_by_name(name).is_none() {
            let known: Vec<&str> = f.inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(EvalError::UnknownInput {
                name: name.clone(),
                known: known.join(", "),
            });
        }
    }
    let mut vals: Vec<Value> = Vec::with_capacity(f.nodes.len());
    for (i, node) in f.nodes.iter().enumerate() {
        let lvl = node.ty.level;
        let pairs_needed = lvl == Level::Pair
            || matches!(
                node.op,
                Op::Size(Size::NumPairs) | Op::PlaceChosen | Op::PlaceRejected
            );
        if pairs_needed && !d.s.is_multiple_of(2) {
            return Err(EvalError::OddSequenceCount { num_seqs: d.s });
        }
        let n = d.size(lvl);
        let arg = |k: usize| &vals[node.args[k].index()];
        let fl = |k: usize| -> &[f64] {
            match &vals[node.args[k].index()].data {
                Data::F(x) => x,
                _ => &[],
            }
        };
        let bl = |k: usize| -> &[bool] {
            match &vals[node.args[k].index()].data {
                Data::B(x) => x,
                _ => &[],
            }
        };
        let ix = |k: usize| -> &[Option<u32>] {
            match &vals[node.args[k].index()].data {
                Data::I(x) => x,
                _ => &[],
            }
        };
        let lv = |k: usize| vals[node.args[k].index()].ty.level;
        // The k-th operand's element for result element `e` (broadcasting).
        let at = |k: usize, e: usize| fl(k)[d.coarsen(e, lvl, lv(k))];
        let mask_at = |k: Option<usize>, r: usize| k.is_none_or(|k| bl(k)[r]);
        let row_lse = |z: &[f64], r: usize| scalar::lse_parts(&z[r * d.v..(r + 1) * d.v]);
        if let Some((_, v)) = pins.iter().find(|(p, _)| p.index() == i) {
            vals.push(v.clone());
            continue;
        }
        let data = match node.op {
            Op::Input(id) => {
                let input = &f.inputs[id.index()];
                let given =
                    batch
                        .inputs
                        .get(&input.name)
                        .ok_or_else(|| EvalError::MissingInput {
                            name: input.name.clone(),
                            kind: input.kind.name(),
                        })?;
                load_input(&input.name, input.kind, given, d, batch.ignore_index)?.data
            }
            Op::Const(c) => Data::F(vec![c]),
            Op::Size(sz) => Data::F(vec![match sz {
                Size::Vocab => d.v as f64,
                Size::SeqLen => d.t as f64,
                Size::NumSeqs => d.s as f64,
                Size::NumPairs => (d.s / 2) as f64,
            }]),
            Op::Unary(u) => Data::F(
                (0..n)
                    .map(|e| {
                        let x = at(0, e);
                        // Kinks: which side of a piecewise op each element is on.
                        if matches!(u, Unary::Abs | Unary::Relu) {
                            sig.push(u64::from(x > 0.0));
                        }
                        scalar::unary(u, x)
                    })
                    .collect(),
            ),
            Op::Binary(b) => Data::F(
                (0..n)
                    .map(|e| {
                        let (x, y) = (at(0, e), at(1, e));
                        if matches!(b, Binary::Min | Binary::Max) {
                            sig.push(u64::from(x <= y));
                        }
                        scalar::binary(b, x, y)
                    })
                    .collect(),
            ),
            Op::Clamp => Data::F(
                (0..n)
                    .map(|e| {
                        let (x, lo, hi) = (at(0, e), at(1, e), at(2, e));
                        let region = if x < lo {
                            0
                        } else if x > hi {
                            2
                        } else {
                            1
                        };
                        sig.push(region);
                        scalar::clamp(x, lo, hi)
                    })
                    .collect(),
            ),
            Op::Select => Data::F(
                (0..n)
                    .map(|e| {
                        let c = bl(0)[d.coarsen(e, lvl, lv(0))];
                        if c { at(1, e) } else { at(2, e) }
                    })
                    .collect(),
            ),
            Op::Compare(c) => {
                let out: Vec<bool> = if arg(0).ty.dtype == DType::Idx {
                    (0..n)
                        .map(|e| {
                            let a = ix(0)[d.coarsen(e, lvl, lv(0))];
                            let b = ix(1)[d.coarsen(e, lvl, lv(1))];
                            scalar::compare_idx(c, a, b)
                        })
                        .collect()
                } else {
                    (0..n)
                        .map(|e| scalar::compare(c, at(0, e), at(1, e)))
                        .collect()
                };
                for &b in &out {
                    sig.push(u64::from(b));
                }
                Data::B(out)
            }
            Op::LogSoftmax | Op::Softmax => {
                let z = fl(0);
                let mut out = vec![0.0; n];
                for r in 0..d.s * d.t {
                    let parts = row_lse(z, r);
                    for v in 0..d.v {
                        let y = scalar::log_softmax_at(z[r * d.v + v], parts);
                        out[r * d.v + v] = if node.op == Op::Softmax { y.exp() } else { y };
                    }
                }
                Data::F(out)
            }
            Op::VocabReduce(red) => {
                let z = fl(0);
                Data::F(
                    (0..n)
                        .map(|r| {
                            let row = &z[r * d.v..(r + 1) * d.v];
                            match red {
                                VocabReduce::Sum | VocabReduce::LogSumExp => {
                                    scalar::vocab_reduce(red, row)
                                }
                                VocabReduce::Max => {
                                    // The maximum's position is a kink of the function.
                                    let (k, m) = argmax(row);
                                    sig.push(k as u64);
                                    m
                                }
                            }
                        })
                        .collect(),
                )
            }
            Op::AtTarget | Op::LogProb => {
                let (z, t) = (fl(0), ix(1));
                Data::F(
                    (0..n)
                        .map(|r| match t[r] {
                            None => 0.0,
                            Some(k) => {
                                let x = z[r * d.v + k as usize];
                                if node.op == Op::LogProb {
                                    scalar::log_softmax_at(x, row_lse(z, r))
                                } else {
                                    x
                                }
                            }
                        })
                        .collect(),
                )
            }
            Op::ArgMax => {
                let z = fl(0);
                Data::I(
                    (0..n)
                        .map(|r| {
                            let (k, _) = argmax(&z[r * d.v..(r + 1) * d.v]);
                            sig.push(k as u64);
                            Some(k as u32)
                        })
                        .collect(),
                )
            }
            Op::OneHot => {
                let t = ix(0);
                let mut out = vec![0.0; n];
                for (r, k) in t.iter().enumerate() {
                    if let Some(k) = k {
                        out[r * d.v + *k as usize] = 1.0;
                    }
                }
                Data::F(out)
            }
            Op::Valid => Data::B(ix(0).iter().map(Option::is_some).collect()),
            Op::SeqReduce(_) | Op::SeqCount => {
                // `None`: seq_count.
                let red = match node.op {
                    Op::SeqReduce(r) => Some(r),
                    _ => None,
                };
                let (x, mk) = match red {
                    None => (None, (!node.args.is_empty()).then_some(0)),
                    Some(_) => (Some(fl(0)), (node.args.len() == 2).then_some(1)),
                };
                let mut out = vec![0.0; n];
                let mut empty_sum = None;
                for (s, o) in out.iter_mut().enumerate() {
                    let (mut sum, mut count) = (0.0, 0usize);
                    for r in s * d.t..(s + 1) * d.t {
                        if mask_at(mk, r) {
                            sum += x.map_or(0.0, |x| x[r]);
                            count += 1;
                        }
                    }
                    *o = match red {
                        None => count as f64,
                        Some(SeqReduce::Sum) => {
                            if count == 0 && mk.is_some() && empty_sum.is_none() {
                                empty_sum = Some(s);
                            }
                            sum
                        }
                        Some(SeqReduce::MeanOrZero) => sum / count.max(1) as f64,
                        Some(SeqReduce::Mean) if count == 0 => {
                            return Err(EvalError::EmptySequence { seq: s });
                        }
                        Some(SeqReduce::Mean) => sum / count as f64,
                    };
                }
                if let Some(seq) = empty_sum {
                    warnings.push(EvalWarning::EmptySeqSum {
                        node: ValueId(i as u32),
                        seq,
                    });
                }
                Data::F(out)
            }
            Op::Chosen | Op::Rejected => {
                let x = fl(0);
                let off = if node.op == Op::Chosen { 0 } else { n };
                Data::F((0..n).map(|p| x[off + p]).collect())
            }
            Op::PlaceChosen | Op::PlaceRejected => {
                let x = fl(0);
                let p = d.s / 2;
                let chosen = node.op == Op::PlaceChosen;
                Data::F(
                    (0..n)
                        .map(|s| {
                            if (s < p) == chosen {
                                x[s % p.max(1)]
                            } else {
                                0.0
                            }
                        })
                        .collect(),
                )
            }
            Op::Sum | Op::Mean | Op::SumAll | Op::MeanAll => {
                let x = fl(0);
                let xl = lv(0);
                let masked = node.args.len() == 2;
                let (mut sum, mut count) = (0.0, 0usize);
                for (e, &xe) in x.iter().enumerate() {
                    if !masked || bl(1)[e] {
                        sum += xe;
                        count += 1;
                    }
                }
                let out = match (node.op, xl) {
                    (Op::Sum | Op::SumAll, _) => sum,
                    (Op::Mean, Level::Row) if count == 0 => {
                        warnings.push(EvalWarning::MeanOverNoRows {
                            node: ValueId(i as u32),
                        });
                        0.0
                    }
                    _ => sum / count as f64,
                };
                Data::F(vec![out])
            }
            Op::NumValid => Data::F(vec![bl(0).iter().filter(|b| **b).count() as f64]),
            Op::Broadcast(_) => match &arg(0).data {
                Data::F(x) => Data::F((0..n).map(|e| x[d.coarsen(e, lvl, lv(0))]).collect()),
                Data::B(x) => Data::B((0..n).map(|e| x[d.coarsen(e, lvl, lv(0))]).collect()),
                Data::I(x) => Data::I((0..n).map(|e| x[d.coarsen(e, lvl, lv(0))]).collect()),
            },
        };
        vals.push(Value { ty: node.ty, data });
    }
    Ok(vals)
}

fn argmax(row: &[f64]) -> (usize, f64) {
    let mut best = (0, f64::NEG_INFINITY);
    for (k, &x) in row.iter().enumerate() {
        if x > best.1 || (k == 0) {
            best = (k, x);
        }
    }
    best
}

/// Evaluates `f` on `batch`: the loss, metrics and (for a gradient IR) head gradients.
pub fn evaluate(f: &LossFn, batch: &HostBatch) -> Result<Evaluation, EvalError> {
    evaluate_pinned(f, batch, &[])
}

/// Like [`evaluate`], with the values of some nodes fixed instead of computed. Finite-difference
/// checks pin every `stop_gradient` node at its unperturbed value, since autodiff treats it as
/// a constant.
pub fn evaluate_pinned(
    f: &LossFn,
    batch: &HostBatch,
    pins: &[(ValueId, Value)],
) -> Result<Evaluation, EvalError> {
    crate::verify::verify(f).map_err(EvalError::InvalidIr)?;
    let mut warnings = Vec::new();
    let mut sig = Sig(0xcbf2_9ce4_8422_2325);
    let vals = eval_all(f, batch, pins, &mut warnings, &mut sig)?;
    let d = Dims {
        s: batch.num_seqs,
        t: batch.seq_len,
        v: batch.vocab,
    };
    let mut out = Evaluation {
        loss: 0.0,
        metrics: Vec::new(),
        grads: Vec::new(),
        warnings,
        branch_signature: sig.0,
    };
    for o in &f.outputs {
        let v = &vals[o.value.index()];
        match &o.kind {
            OutputKind::Loss => out.loss = v.floats().first().copied().unwrap_or(f64::NAN),
            OutputKind::Metric(name) => out.metrics.push(MetricValue {
                name: name.clone(),
                level: v.ty.level,
                values: v.floats().to_vec(),
            }),
            OutputKind::Grad(h) => {
                let g = v.floats();
                let full: Vec<f64> = if g.len() == d.size(Level::Vocab) {
                    g.to_vec()
                } else {
                    (0..d.size(Level::Vocab))
                        .map(|e| g[d.coarsen(e, Level::Vocab, v.ty.level)])
                        .collect()
                };
                out.grads.push((f.inputs[h.index()].name.clone(), full));
            }
        }
    }
    Ok(out)
}
