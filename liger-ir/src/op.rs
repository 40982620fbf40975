//! The op set of the IR and its typing rules.
//!
//! Every op of SURFACE.md §3 is here under its surface name, plus four ops the autodiff pass
//! introduces (`onehot`, `place_chosen`, `place_rejected`, `broadcast.<level>`). [`Op::infer`]
//! is the single typing rule used by the builder, the parser and the verifier: it checks operand
//! dtypes and levels and gives the result type. [`Op::differentiable_args`] says through which
//! operands a gradient flows; the VJP rules themselves live in `passes::vjp`.

use crate::diag::DiagKind;
use crate::func::InputId;
use crate::types::{DType, Level, Type};

/// An IR operation. Operands are held by the node, not by the op.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// The value of input `InputId` (one such node per input).
    Input(InputId),
    /// A float literal (Batch level).
    Const(f64),
    /// `vocab_size()`: `V`.
    VocabSize,
    /// `seq_len()`: `T`, padded rows per sequence.
    SeqLen,
    /// `num_seqs()`: `S`.
    NumSeqs,
    /// `num_pairs()`: `P = S / 2`.
    NumPairs,
    /// `-x`.
    Neg,
    /// `exp(x)`.
    Exp,
    /// `log(x)`.
    Log,
    /// `log(1 + x)`.
    Log1p,
    /// `exp(x) - 1`.
    Expm1,
    /// `sqrt(x)`.
    Sqrt,
    /// `|x|`.
    Abs,
    /// `max(x, 0)`.
    Relu,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `log(sigmoid(x))`, computed without overflow.
    LogSigmoid,
    /// `log(1 + exp(x))`, computed without overflow.
    Softplus,
    /// `tanh(x)`.
    Tanh,
    /// The value of `x`, with no gradient.
    StopGradient,
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
    /// `a ^ b`.
    Pow,
    /// `min(a, b)`.
    Min,
    /// `max(a, b)`.
    Max,
    /// `log(exp(a) + exp(b))`, computed without overflow.
    LogAddExp,
    /// `clamp(x, lo, hi)`.
    Clamp,
    /// `select(cond, a, b)`.
    Select,
    /// `a < b`.
    Lt,
    /// `a <= b`.
    Le,
    /// `a > b`.
    Gt,
    /// `a >= b`.
    Ge,
    /// `a == b` (floats or indices).
    Eq,
    /// `a != b` (floats or indices).
    Ne,
    /// `log_softmax(z)` over the vocab axis.
    LogSoftmax,
    /// `softmax(z)` over the vocab axis.
    Softmax,
    /// `sum_vocab(e)`: Vocab → Row.
    SumVocab,
    /// `max_vocab(e)`: Vocab → Row.
    MaxVocab,
    /// `logsumexp(e)`: Vocab → Row.
    LogSumExp,
    /// `at_target(e, t)`: `e[row, t[row]]`, 0 at invalid rows.
    AtTarget,
    /// `logprob(z, t)`: `at_target(log_softmax(z), t)`.
    LogProb,
    /// `argmax(z)`: Vocab → Row index (first maximum).
    ArgMax,
    /// `onehot(t)`: 1 at `[row, t[row]]`, 0 elsewhere and at invalid rows (autodiff).
    OneHot,
    /// `valid(t)`: the row mask of an index (`t != ignore_index` for a `Target`).
    Valid,
    /// `seq_sum(x [, mask])`: Row → Seq (no mask: every row).
    SeqSum,
    /// `seq_mean(x [, mask])`: ÷ count; a sequence with no row under the mask is an error.
    SeqMean,
    /// `seq_mean_or_zero(x [, mask])`: ÷ max(1, count).
    SeqMeanOrZero,
    /// `seq_count([mask])`: rows under the mask per sequence.
    SeqCount,
    /// `chosen(s)`: Seq → Pair, sequence `i`.
    Chosen,
    /// `rejected(s)`: Seq → Pair, sequence `P + i`.
    Rejected,
    /// `place_chosen(p)`: Pair → Seq, `p` at chosen sequences and 0 elsewhere (autodiff).
    PlaceChosen,
    /// `place_rejected(p)`: Pair → Seq, `p` at rejected sequences and 0 elsewhere (autodiff).
    PlaceRejected,
    /// `sum(x [, mask])` → Batch; a Row operand needs its mask in the IR.
    Sum,
    /// `mean(x [, mask])` → Batch: Row ÷ whole-batch mask count (0 rows → 0), Seq ÷ S, Pair ÷ P.
    Mean,
    /// `sum_all(x)`: Row → Batch, unmasked.
    SumAll,
    /// `mean_all(x)`: Row → Batch, unmasked, ÷ `S * T`.
    MeanAll,
    /// `num_valid(mask)`: rows under a Row mask in the whole batch.
    NumValid,
    /// `broadcast.<level>(x)`: the same value seen at a finer level (autodiff).
    Broadcast(Level),
}

/// Why a node is ill-typed: a diagnostic kind and a message.
pub type TypeError = (DiagKind, String);

/// The ops that take no immediate, by text name (also the surface function names).
const NAMED: &[(&str, Op)] = &[
    ("vocab_size", Op::VocabSize),
    ("seq_len", Op::SeqLen),
    ("num_seqs", Op::NumSeqs),
    ("num_pairs", Op::NumPairs),
    ("neg", Op::Neg),
    ("exp", Op::Exp),
    ("log", Op::Log),
    ("log1p", Op::Log1p),
    ("expm1", Op::Expm1),
    ("sqrt", Op::Sqrt),
    ("abs", Op::Abs),
    ("relu", Op::Relu),
    ("sigmoid", Op::Sigmoid),
    ("log_sigmoid", Op::LogSigmoid),
    ("softplus", Op::Softplus),
    ("tanh", Op::Tanh),
    ("stop_gradient", Op::StopGradient),
    ("add", Op::Add),
    ("sub", Op::Sub),
    ("mul", Op::Mul),
    ("div", Op::Div),
    ("pow", Op::Pow),
    ("min", Op::Min),
    ("max", Op::Max),
    ("logaddexp", Op::LogAddExp),
    ("clamp", Op::Clamp),
    ("select", Op::Select),
    ("lt", Op::Lt),
    ("le", Op::Le),
    ("gt", Op::Gt),
    ("ge", Op::Ge),
    ("eq", Op::Eq),
    ("ne", Op::Ne),
    ("log_softmax", Op::LogSoftmax),
    ("softmax", Op::Softmax),
    ("sum_vocab", Op::SumVocab),
    ("max_vocab", Op::MaxVocab),
    ("logsumexp", Op::LogSumExp),
    ("at_target", Op::AtTarget),
    ("logprob", Op::LogProb),
    ("argmax", Op::ArgMax),
    ("onehot", Op::OneHot),
    ("valid", Op::Valid),
    ("seq_sum", Op::SeqSum),
    ("seq_mean", Op::SeqMean),
    ("seq_mean_or_zero", Op::SeqMeanOrZero),
    ("seq_count", Op::SeqCount),
    ("chosen", Op::Chosen),
    ("rejected", Op::Rejected),
    ("place_chosen", Op::PlaceChosen),
    ("place_rejected", Op::PlaceRejected),
    ("sum", Op::Sum),
    ("mean", Op::Mean),
    ("sum_all", Op::SumAll),
    ("mean_all", Op::MeanAll),
    ("num_valid", Op::NumValid),
];

impl Op {
    /// Every op without an immediate, in a fixed order (for generators and coverage tests).
    pub fn named_ops() -> impl Iterator<Item = (&'static str, Op)> {
        NAMED.iter().copied()
    }

    /// The text-form name: `const` and `input` for those, `broadcast.row` etc.
    pub fn name(&self) -> String {
        match self {
            Op::Input(_) => "input".into(),
            Op::Const(_) => "const".into(),
            Op::Broadcast(l) => format!("broadcast.{}", l.name()),
            other => NAMED
                .iter()
                .find(|(_, op)| op == other)
                .map(|(n, _)| (*n).to_string())
                .unwrap_or_else(|| format!("{other:?}")),
        }
    }

    /// Parses an op name without immediate (`const` and `input` are handled by the parser).
    pub fn from_name(s: &str) -> Option<Op> {
        if let Some(l) = s.strip_prefix("broadcast.") {
            return Level::from_name(l).map(Op::Broadcast);
        }
        NAMED.iter().find(|(n, _)| *n == s).map(|(_, op)| *op)
    }

    /// The number of operands: `(min, max)`.
    pub fn arity(&self) -> (usize, usize) {
        use Op::*;
        match self {
            Input(_) | Const(_) | VocabSize | SeqLen | NumSeqs | NumPairs => (0, 0),
            SeqCount => (0, 1),
            Neg | Exp | Log | Log1p | Expm1 | Sqrt | Abs | Relu | Sigmoid | LogSigmoid
            | Softplus | Tanh | StopGradient | LogSoftmax | Softmax | SumVocab | MaxVocab
            | LogSumExp | ArgMax | OneHot | Valid | Chosen | Rejected | PlaceChosen
            | PlaceRejected | SumAll | MeanAll | NumValid | Broadcast(_) => (1, 1),
            SeqSum | SeqMean | SeqMeanOrZero | Sum | Mean => (1, 2),
            Add | Sub | Mul | Div | Pow | Min | Max | LogAddExp | Lt | Le | Gt | Ge | Eq | Ne
            | AtTarget | LogProb => (2, 2),
            Clamp | Select => (3, 3),
        }
    }

    /// Whether the op is an elementwise op (result at the finest operand level).
    pub fn is_elementwise(&self) -> bool {
        use Op::*;
        matches!(
            self,
            Neg | Exp
                | Log
                | Log1p
                | Expm1
                | Sqrt
                | Abs
                | Relu
                | Sigmoid
                | LogSigmoid
                | Softplus
                | Tanh
                | StopGradient
                | Add
                | Sub
                | Mul
                | Div
                | Pow
                | Min
                | Max
                | LogAddExp
                | Clamp
                | Select
                | Lt
                | Le
                | Gt
                | Ge
                | Eq
                | Ne
        )
    }

    /// Whether `op(a, b) == op(b, a)`.
    pub fn is_commutative(&self) -> bool {
        matches!(
            self,
            Op::Add | Op::Mul | Op::Min | Op::Max | Op::LogAddExp | Op::Eq | Op::Ne
        )
    }

    /// Operand positions through which a gradient flows.
    pub fn differentiable_args(&self) -> &'static [usize] {
        use Op::*;
        match self {
            Input(_) | Const(_) | VocabSize | SeqLen | NumSeqs | NumPairs | StopGradient | Lt
            | Le | Gt | Ge | Eq | Ne | ArgMax | OneHot | Valid | SeqCount | NumValid => &[],
            Neg | Exp | Log | Log1p | Expm1 | Sqrt | Abs | Relu | Sigmoid | LogSigmoid
            | Softplus | Tanh | LogSoftmax | Softmax | SumVocab | MaxVocab | LogSumExp
            | AtTarget | LogProb | SeqSum | SeqMean | SeqMeanOrZero | Chosen | Rejected
            | PlaceChosen | PlaceRejected | Sum | Mean | SumAll | MeanAll | Broadcast(_) => &[0],
            Add | Sub | Mul | Div | Pow | Min | Max | LogAddExp => &[0, 1],
            Clamp => &[0, 1, 2],
            Select => &[1, 2],
        }
    }

    /// Infers the result type from the operand types, or says why the node is ill-typed.
    /// `Input` nodes are typed by their input's kind, not here.
    pub fn infer(&self, args: &[Type]) -> Result<Type, TypeError> {
        use Op::*;
        let name = self.name();
        let (lo, hi) = self.arity();
        if args.len() < lo || args.len() > hi {
            let want = if lo == hi {
                format!("{lo}")
            } else {
                format!("{lo} to {hi}")
            };
            return Err((
                DiagKind::Arity,
                format!("`{name}` takes {want} operand(s), got {}", args.len()),
            ));
        }
        let float = |i: usize| -> Result<Level, TypeError> {
            let t = args[i];
            if t.dtype != DType::F32 {
                return Err((
                    DiagKind::DTypeMismatch,
                    format!(
                        "operand {} of `{name}` must be f32, got {t}{}",
                        i + 1,
                        if t.dtype == DType::Bool {
                            " (a mask selects values with `select(mask, a, b)`)"
                        } else {
                            " (an index is compared with `==` inside `select`)"
                        }
                    ),
                ));
            }
            Ok(t.level)
        };
        let at_level = |i: usize, want: Level, dtype: DType, hint: &str| -> Result<(), TypeError> {
            let t = args[i];
            if t.dtype != dtype {
                return Err((
                    DiagKind::DTypeMismatch,
                    format!(
                        "operand {} of `{name}` must be {dtype}[{want}], got {t}",
                        i + 1
                    ),
                ));
            }
            if t.level != want {
                return Err((
                    DiagKind::LevelMisuse,
                    format!(
                        "`{name}` takes a {want}-level operand, got a {}-level value{hint}",
                        t.level
                    ),
                ));
            }
            Ok(())
        };
        let row_mask = |i: usize| at_level(i, Level::Row, DType::Bool, "");
        let finest = |levels: &[Level]| levels.iter().copied().fold(Level::Batch, Level::finest);
        match self {
            Input(_) => Err((
                DiagKind::Internal,
                "input nodes are typed by their input".into(),
            )),
            Const(_) | VocabSize | SeqLen | NumSeqs | NumPairs => Ok(Type::f32(Level::Batch)),
            Neg | Exp | Log | Log1p | Expm1 | Sqrt | Abs | Relu | Sigmoid | LogSigmoid
            | Softplus | Tanh | StopGradient => Ok(Type::f32(float(0)?)),
            Add | Sub | Mul | Div | Pow | Min | Max | LogAddExp => {
                Ok(Type::f32(finest(&[float(0)?, float(1)?])))
            }
            Clamp => Ok(Type::f32(finest(&[float(0)?, float(1)?, float(2)?]))),
            Select => {
                let c = args[0];
                if c.dtype != DType::Bool {
                    return Err((
                        DiagKind::DTypeMismatch,
                        format!(
                            "the condition of `select` must be a mask or a comparison, got {c}"
                        ),
                    ));
                }
                Ok(Type::f32(finest(&[c.level, float(1)?, float(2)?])))
            }
            Lt | Le | Gt | Ge => Ok(Type::bool(finest(&[float(0)?, float(1)?]))),
            Eq | Ne => {
                let (a, b) = (args[0], args[1]);
                if a.dtype != b.dtype || a.dtype == DType::Bool {
                    return Err((
                        DiagKind::DTypeMismatch,
                        format!("`{name}` compares two f32 or two idx values, got {a} and {b}"),
                    ));
                }
                Ok(Type::bool(finest(&[a.level, b.level])))
            }
            LogSoftmax | Softmax => {
                at_level(0, Level::Vocab, DType::F32, "")?;
                Ok(Type::f32(Level::Vocab))
            }
            SumVocab | MaxVocab | LogSumExp => {
                at_level(0, Level::Vocab, DType::F32, "")?;
                Ok(Type::f32(Level::Row))
            }
            AtTarget | LogProb => {
                at_level(0, Level::Vocab, DType::F32, "")?;
                at_level(1, Level::Row, DType::Idx, "")?;
                Ok(Type::f32(Level::Row))
            }
            ArgMax => {
                at_level(0, Level::Vocab, DType::F32, "")?;
                Ok(Type::idx(Level::Row))
            }
            OneHot => {
                at_level(0, Level::Row, DType::Idx, "")?;
                Ok(Type::f32(Level::Vocab))
            }
            Valid => {
                at_level(0, Level::Row, DType::Idx, "")?;
                Ok(Type::bool(Level::Row))
            }
            SeqSum | SeqMean | SeqMeanOrZero => {
                at_level(
                    0,
                    Level::Row,
                    DType::F32,
                    if args[0].level == Level::Vocab {
                        " (reduce over the vocab first: sum_vocab, logsumexp, at_target)"
                    } else {
                        ""
                    },
                )?;
                if args.len() == 2 {
                    row_mask(1)?;
                }
                Ok(Type::f32(Level::Seq))
            }
            SeqCount => {
                if args.len() == 1 {
                    row_mask(0)?;
                }
                Ok(Type::f32(Level::Seq))
            }
            Chosen | Rejected => {
                let hint = match args[0].level {
                    Level::Row => " (reduce each sequence first: seq_sum or seq_mean)",
                    Level::Vocab => " (reduce over the vocab, then over each sequence)",
                    _ => "",
                };
                at_level(0, Level::Seq, DType::F32, hint)?;
                Ok(Type::f32(Level::Pair))
            }
            PlaceChosen | PlaceRejected => {
                at_level(0, Level::Pair, DType::F32, "")?;
                Ok(Type::f32(Level::Seq))
            }
            Sum | Mean => {
                let l = float(0)?;
                if l == Level::Vocab {
                    return Err((
                        DiagKind::LevelMisuse,
                        format!(
                            "`{name}` takes no vocab-level value: reduce with sum_vocab, logsumexp or at_target first"
                        ),
                    ));
                }
                if l == Level::Row && args.len() == 1 {
                    return Err((
                        DiagKind::LevelMisuse,
                        format!(
                            "`{name}` of a row-level value needs its mask operand in the IR (the surface supplies `valid(target)`); use `{name}_all` for every row"
                        ),
                    ));
                }
                if args.len() == 2 {
                    if l != Level::Row {
                        return Err((
                            DiagKind::LevelMisuse,
                            format!(
                                "a mask operand only applies to a row-level `{name}`, this one is {l}-level"
                            ),
                        ));
                    }
                    row_mask(1)?;
                }
                Ok(Type::f32(Level::Batch))
            }
            SumAll | MeanAll => {
                at_level(0, Level::Row, DType::F32, "")?;
                Ok(Type::f32(Level::Batch))
            }
            NumValid => {
                row_mask(0)?;
                Ok(Type::f32(Level::Batch))
            }
            Broadcast(to) => {
                let t = args[0];
                if !t.level.broadcasts_to(*to) {
                    return Err((
                        DiagKind::LevelMisuse,
                        format!("`{name}` widens to a finer level; its operand is {t}"),
                    ));
                }
                Ok(Type {
                    dtype: t.dtype,
                    level: *to,
                })
            }
        }
    }
}
