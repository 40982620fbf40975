//! The op set of the IR, defined once: every op's name, arity, class, differentiable operands,
//! surface signature and documentation come from this module, and everything else is derived
//! from it — the text form's names ([`Op::name`], [`Op::from_name`]), the `#[chunked_loss]`
//! function table ([`surface_functions`]), the random-loss generator's op list ([`Op::all`])
//! and the function table of the language reference ([`reference_table`]).
//!
//! The elementwise ops come in families ([`Unary`], [`Binary`], [`Cmp`]) and the vocabulary
//! reductions in [`VocabReduce`], each an enum declared with `family!`: one line per op with
//! its name, surface arguments and meaning. Passes and backends match on a family
//! exhaustively (no wildcard), so a new op cannot be added without its scalar semantics
//! ([`crate::scalar`]), its VJP rule (`passes::vjp`) and its CUDA form (`emit::cuda`) — the
//! compiler lists each place that is missing.
//!
//! [`Op::infer`] is the single typing rule used by the builder, the parser and the verifier: it
//! checks operand dtypes and levels and gives the result type. [`Op::differentiable_args`] says
//! through which operands a gradient flows.

use std::fmt::Write as _;

use crate::diag::DiagKind;
use crate::func::InputId;
use crate::types::{DType, Level, Type};

/// Declares an op family: an enum with one variant per op, its text name, its surface
/// argument list and a one-line meaning (the variant's documentation).
macro_rules! family {
    ($(#[$doc:meta])* $enum:ident {
        $( $variant:ident = $name:literal ($sig:literal): $what:literal; )*
    }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $enum {
            $( #[doc = $what] $variant, )*
        }

        impl $enum {
            /// Every member, in table order.
            pub const ALL: &'static [$enum] = &[$($enum::$variant),*];

            /// The text and surface name.
            pub const fn name(self) -> &'static str {
                match self { $($enum::$variant => $name),* }
            }

            /// The surface argument list (`x`, `a, b`, …).
            pub const fn signature(self) -> &'static str {
                match self { $($enum::$variant => $sig),* }
            }

            /// What it computes, in one line.
            pub const fn meaning(self) -> &'static str {
                match self { $($enum::$variant => $what),* }
            }
        }
    };
}

family! {
    /// Elementwise ops of one float operand.
    Unary {
        Neg = "neg" ("x"): "`-x`";
        Exp = "exp" ("x"): "`e^x`";
        Log = "log" ("x"): "natural logarithm";
        Log1p = "log1p" ("x"): "`log(1 + x)`, exact near 0";
        Expm1 = "expm1" ("x"): "`e^x - 1`, exact near 0";
        Sqrt = "sqrt" ("x"): "square root";
        Square = "square" ("x"): "`x * x`";
        Abs = "abs" ("x"): "`|x|` (gradient sign(x), +1 at 0)";
        Relu = "relu" ("x"): "`max(x, 0)` (gradient 0 at 0)";
        Sigmoid = "sigmoid" ("x"): "`1 / (1 + e^-x)`, without overflow";
        LogSigmoid = "log_sigmoid" ("x"): "`log(sigmoid(x))`, without overflow";
        Softplus = "softplus" ("x"): "`log(1 + e^x)`, without overflow";
        Tanh = "tanh" ("x"): "hyperbolic tangent";
        StopGradient = "stop_gradient" ("x"): "the value of `x`, with no gradient through it";
    }
}

family! {
    /// Elementwise ops of two float operands.
    Binary {
        Add = "add" ("a, b"): "`a + b` (also the `+` operator)";
        Sub = "sub" ("a, b"): "`a - b` (also the `-` operator)";
        Mul = "mul" ("a, b"): "`a * b` (also the `*` operator)";
        Div = "div" ("a, b"): "`a / b` (also the `/` operator)";
        Pow = "pow" ("x, p"): "`x^p`";
        Min = "min" ("a, b"): "the smaller (gradient to `a` on ties)";
        Max = "max" ("a, b"): "the larger (gradient to `a` on ties)";
        LogAddExp = "logaddexp" ("a, b"): "`log(e^a + e^b)`, without overflow";
    }
}

family! {
    /// Comparisons: a mask from two floats (or, for `eq`/`ne`, two indices).
    Cmp {
        Lt = "lt" ("a, b"): "`a < b` (the `<` operator, inside `select`)";
        Le = "le" ("a, b"): "`a <= b` (the `<=` operator, inside `select`)";
        Gt = "gt" ("a, b"): "`a > b` (the `>` operator, inside `select`)";
        Ge = "ge" ("a, b"): "`a >= b` (the `>=` operator, inside `select`)";
        Eq = "eq" ("a, b"): "`a == b` (floats or indices; an invalid index equals nothing)";
        Ne = "ne" ("a, b"): "`a != b` (floats or indices; an invalid index differs from everything)";
    }
}

family! {
    /// Reductions over the vocabulary axis of each row (Vocab → Row).
    VocabReduce {
        Sum = "sum_vocab" ("e"): "`Σ_v e[r, v]`";
        Max = "max_vocab" ("e"): "`max_v e[r, v]` (gradient to the first maximum)";
        LogSumExp = "logsumexp" ("e"): "`log Σ_v exp(e[r, v])`, computed online without overflow";
    }
}

family! {
    /// Row → Seq reductions of a value under a row mask.
    SeqReduce {
        Sum = "seq_sum" ("x[, mask]"): "sum over the sequence's rows under the mask";
        Mean = "seq_mean" ("x[, mask]"): "÷ rows under the mask; a sequence with none is an error";
        MeanOrZero = "seq_mean_or_zero" ("x[, mask]"): "÷ max(1, rows under the mask): 0 for a sequence with none";
    }
}

family! {
    /// Sizes of the whole batch (Batch-level constants known before the chunk loop).
    Size {
        Vocab = "vocab_size" (""): "`V`, the vocabulary size";
        SeqLen = "seq_len" (""): "`T`, rows per sequence (padding included)";
        NumSeqs = "num_seqs" (""): "`S`, sequences in the batch";
        NumPairs = "num_pairs" (""): "`P = S / 2`, preference pairs in the batch";
    }
}

/// An IR operation. Operands are held by the node, not by the op.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// The value of input `InputId` (one such node per input).
    Input(InputId),
    /// A float literal (Batch level).
    Const(f64),
    /// A size of the batch.
    Size(Size),
    /// An elementwise op of one operand.
    Unary(Unary),
    /// An elementwise op of two operands.
    Binary(Binary),
    /// `clamp(x, lo, hi)`.
    Clamp,
    /// `select(cond, a, b)`.
    Select,
    /// A comparison.
    Compare(Cmp),
    /// `log_softmax(z)` over the vocab axis.
    LogSoftmax,
    /// `softmax(z)` over the vocab axis.
    Softmax,
    /// A reduction over the vocab axis.
    VocabReduce(VocabReduce),
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
    /// A Row → Seq reduction (no mask operand: every row).
    SeqReduce(SeqReduce),
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

/// What kind of computation an op is (how backends place it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// Inputs, literals and batch sizes.
    Leaf,
    /// Elementwise: the result is at the finest operand level.
    Elementwise,
    /// Vocab → Vocab over each row (`log_softmax`, `softmax`, `onehot`).
    VocabMap,
    /// Vocab → Row (`sum_vocab`, `max_vocab`, `logsumexp`, `at_target`, `logprob`, `argmax`).
    VocabToRow,
    /// A row mask of an index (`valid`).
    Mask,
    /// Row → Seq (`seq_sum`, `seq_mean`, `seq_mean_or_zero`, `seq_count`).
    RowToSeq,
    /// Seq ↔ Pair (`chosen`, `rejected`, `place_chosen`, `place_rejected`).
    Pairing,
    /// Any → Batch (`sum`, `mean`, `sum_all`, `mean_all`, `num_valid`).
    ToBatch,
    /// A coarser value seen at a finer level.
    Broadcast,
}

/// Everything the op table says about one op.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpInfo {
    /// Operand count `(min, max)`.
    pub arity: (usize, usize),
    /// Its class.
    pub class: OpClass,
    /// Operand positions through which a gradient flows.
    pub differentiable: &'static [usize],
    /// The surface argument list when users may call it (`None`: introduced by passes).
    pub surface: Option<&'static str>,
    /// From which level to which, for the reference (`same level`, `vocab → row`, …).
    pub levels: &'static str,
    /// What it computes.
    pub meaning: &'static str,
}

/// Why a node is ill-typed: a diagnostic kind and a message.
pub type TypeError = (DiagKind, String);

const ELEMENTWISE: &str = "same level (coarser operands broadcast)";

impl Op {
    /// Every op, in table order; `input` and `const` (which carry an immediate) once each with
    /// a placeholder, `broadcast` once per finer level.
    pub fn all() -> Vec<Op> {
        let mut v = vec![Op::Input(InputId(0)), Op::Const(0.0)];
        v.extend(Size::ALL.iter().map(|s| Op::Size(*s)));
        v.extend(Unary::ALL.iter().map(|u| Op::Unary(*u)));
        v.extend(Binary::ALL.iter().map(|b| Op::Binary(*b)));
        v.extend([Op::Clamp, Op::Select]);
        v.extend(Cmp::ALL.iter().map(|c| Op::Compare(*c)));
        v.extend([Op::LogSoftmax, Op::Softmax]);
        v.extend(VocabReduce::ALL.iter().map(|r| Op::VocabReduce(*r)));
        v.extend([Op::AtTarget, Op::LogProb, Op::ArgMax, Op::OneHot, Op::Valid]);
        v.extend(SeqReduce::ALL.iter().map(|r| Op::SeqReduce(*r)));
        v.extend([
            Op::SeqCount,
            Op::Chosen,
            Op::Rejected,
            Op::PlaceChosen,
            Op::PlaceRejected,
            Op::Sum,
            Op::Mean,
            Op::SumAll,
            Op::MeanAll,
            Op::NumValid,
        ]);
        v.extend(
            [Level::Vocab, Level::Row, Level::Seq, Level::Pair]
                .into_iter()
                .map(Op::Broadcast),
        );
        v
    }

    /// The op table's entry for this op.
    pub fn info(&self) -> OpInfo {
        let info = |arity, class, differentiable, surface, levels, meaning| OpInfo {
            arity,
            class,
            differentiable,
            surface,
            levels,
            meaning,
        };
        match *self {
            Op::Input(_) => info(
                (0, 0),
                OpClass::Leaf,
                &[],
                None,
                "its kind's level",
                "an input",
            ),
            Op::Const(_) => info((0, 0), OpClass::Leaf, &[], None, "batch", "a float literal"),
            Op::Size(s) => info(
                (0, 0),
                OpClass::Leaf,
                &[],
                Some(s.signature()),
                "→ batch",
                s.meaning(),
            ),
            Op::Unary(u) => info(
                (1, 1),
                OpClass::Elementwise,
                if u == Unary::StopGradient { &[] } else { &[0] },
                Some(u.signature()),
                ELEMENTWISE,
                u.meaning(),
            ),
            Op::Binary(b) => info(
                (2, 2),
                OpClass::Elementwise,
                &[0, 1],
                Some(b.signature()),
                ELEMENTWISE,
                b.meaning(),
            ),
            Op::Clamp => info(
                (3, 3),
                OpClass::Elementwise,
                &[0, 1, 2],
                Some("x, lo, hi"),
                ELEMENTWISE,
                "`min(max(x, lo), hi)`",
            ),
            Op::Select => info(
                (3, 3),
                OpClass::Elementwise,
                &[1, 2],
                Some("cond, a, b"),
                ELEMENTWISE,
                "`a` where `cond` holds, else `b`; `cond` is a comparison, a mask or `valid(t)`",
            ),
            Op::Compare(c) => info(
                (2, 2),
                OpClass::Elementwise,
                &[],
                None,
                ELEMENTWISE,
                c.meaning(),
            ),
            Op::LogSoftmax => info(
                (1, 1),
                OpClass::VocabMap,
                &[0],
                Some("z"),
                "vocab → vocab",
                "`z - logsumexp(z)` over each row",
            ),
            Op::Softmax => info(
                (1, 1),
                OpClass::VocabMap,
                &[0],
                Some("z"),
                "vocab → vocab",
                "`exp(z - logsumexp(z))` over each row",
            ),
            Op::VocabReduce(r) => info(
                (1, 1),
                OpClass::VocabToRow,
                &[0],
                Some(r.signature()),
                "vocab → row",
                r.meaning(),
            ),
            Op::AtTarget => info(
                (2, 2),
                OpClass::VocabToRow,
                &[0],
                Some("e, t"),
                "vocab → row",
                "`e[r, t[r]]`; 0 at rows whose target is ignored",
            ),
            Op::LogProb => info(
                (2, 2),
                OpClass::VocabToRow,
                &[0],
                Some("z, t"),
                "vocab → row",
                "`at_target(log_softmax(z), t)`, fused",
            ),
            Op::ArgMax => info(
                (1, 1),
                OpClass::VocabToRow,
                &[],
                Some("z"),
                "vocab → row (index)",
                "the first maximising entry; compare with a target inside `select`",
            ),
            Op::OneHot => info(
                (1, 1),
                OpClass::VocabMap,
                &[],
                None,
                "row (index) → vocab",
                "1 at `[r, t[r]]`, 0 elsewhere and at ignored rows",
            ),
            Op::Valid => info(
                (1, 1),
                OpClass::Mask,
                &[],
                Some("t"),
                "row (index) → row (mask)",
                "`t != ignore_index` (every row of a `Tokens` input)",
            ),
            Op::SeqReduce(r) => info(
                (1, 2),
                OpClass::RowToSeq,
                &[0],
                Some(r.signature()),
                "row → seq",
                r.meaning(),
            ),
            Op::SeqCount => info(
                (0, 1),
                OpClass::RowToSeq,
                &[],
                Some("[mask]"),
                "row → seq",
                "rows under the mask per sequence",
            ),
            Op::Chosen => info(
                (1, 1),
                OpClass::Pairing,
                &[0],
                Some("s"),
                "seq → pair",
                "sequence `i` of pair `i` (the first half of the batch)",
            ),
            Op::Rejected => info(
                (1, 1),
                OpClass::Pairing,
                &[0],
                Some("s"),
                "seq → pair",
                "sequence `P + i` of pair `i` (the second half of the batch)",
            ),
            Op::PlaceChosen => info(
                (1, 1),
                OpClass::Pairing,
                &[0],
                None,
                "pair → seq",
                "`p` at chosen sequences, 0 at rejected ones",
            ),
            Op::PlaceRejected => info(
                (1, 1),
                OpClass::Pairing,
                &[0],
                None,
                "pair → seq",
                "`p` at rejected sequences, 0 at chosen ones",
            ),
            Op::Sum => info(
                (1, 2),
                OpClass::ToBatch,
                &[0],
                Some("x[, mask]"),
                "any (not vocab) → batch",
                "Row: sum under the mask (default: valid rows); Seq, Pair: sum of all",
            ),
            Op::Mean => info(
                (1, 2),
                OpClass::ToBatch,
                &[0],
                Some("x[, mask]"),
                "any (not vocab) → batch",
                "Row: ÷ rows under the mask in the whole batch (none: 0, a warning); Seq: ÷ S; Pair: ÷ P",
            ),
            Op::SumAll => info(
                (1, 1),
                OpClass::ToBatch,
                &[0],
                Some("x"),
                "row → batch",
                "sum over every row, masked or not",
            ),
            Op::MeanAll => info(
                (1, 1),
                OpClass::ToBatch,
                &[0],
                Some("x"),
                "row → batch",
                "÷ `S * T`, every row, masked or not",
            ),
            Op::NumValid => info(
                (1, 1),
                OpClass::ToBatch,
                &[],
                Some("[mask]"),
                "row (mask) → batch",
                "rows under the mask in the whole batch (default: valid rows)",
            ),
            Op::Broadcast(_) => info(
                (1, 1),
                OpClass::Broadcast,
                &[0],
                None,
                "coarser → finer",
                "the same value at a finer level",
            ),
        }
    }

    /// The text-form name: `const` and `input` for those, `broadcast.row` etc.
    pub fn name(&self) -> String {
        match self {
            Op::Broadcast(l) => format!("broadcast.{}", l.name()),
            other => other.static_name().to_string(),
        }
    }

    /// The name of every op but `broadcast.<level>` (which gives `broadcast`).
    pub fn static_name(&self) -> &'static str {
        match *self {
            Op::Input(_) => "input",
            Op::Const(_) => "const",
            Op::Size(s) => s.name(),
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Clamp => "clamp",
            Op::Select => "select",
            Op::Compare(c) => c.name(),
            Op::LogSoftmax => "log_softmax",
            Op::Softmax => "softmax",
            Op::VocabReduce(r) => r.name(),
            Op::AtTarget => "at_target",
            Op::LogProb => "logprob",
            Op::ArgMax => "argmax",
            Op::OneHot => "onehot",
            Op::Valid => "valid",
            Op::SeqReduce(r) => r.name(),
            Op::SeqCount => "seq_count",
            Op::Chosen => "chosen",
            Op::Rejected => "rejected",
            Op::PlaceChosen => "place_chosen",
            Op::PlaceRejected => "place_rejected",
            Op::Sum => "sum",
            Op::Mean => "mean",
            Op::SumAll => "sum_all",
            Op::MeanAll => "mean_all",
            Op::NumValid => "num_valid",
            Op::Broadcast(_) => "broadcast",
        }
    }

    /// Parses an op name without immediate (`const` and `input` are handled by the parser).
    pub fn from_name(s: &str) -> Option<Op> {
        if let Some(l) = s.strip_prefix("broadcast.") {
            return Level::from_name(l)
                .filter(|l| *l != Level::Batch)
                .map(Op::Broadcast);
        }
        Op::all()
            .into_iter()
            .filter(|op| !matches!(op, Op::Input(_) | Op::Const(_) | Op::Broadcast(_)))
            .find(|op| op.static_name() == s)
    }

    /// The number of operands: `(min, max)`.
    pub fn arity(&self) -> (usize, usize) {
        self.info().arity
    }

    /// The op's class.
    pub fn class(&self) -> OpClass {
        self.info().class
    }

    /// Whether the op is an elementwise op (result at the finest operand level).
    pub fn is_elementwise(&self) -> bool {
        self.class() == OpClass::Elementwise
    }

    /// Whether `op(a, b) == op(b, a)`.
    pub fn is_commutative(&self) -> bool {
        matches!(
            self,
            Op::Binary(Binary::Add | Binary::Mul | Binary::Min | Binary::Max | Binary::LogAddExp)
                | Op::Compare(Cmp::Eq | Cmp::Ne)
        )
    }

    /// Operand positions through which a gradient flows.
    pub fn differentiable_args(&self) -> &'static [usize] {
        self.info().differentiable
    }

    /// Infers the result type from the operand types, or says why the node is ill-typed.
    /// `Input` nodes are typed by their input's kind, not here.
    pub fn infer(&self, args: &[Type]) -> Result<Type, TypeError> {
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
            Op::Input(_) => Err((
                DiagKind::Internal,
                "input nodes are typed by their input".into(),
            )),
            Op::Const(_) | Op::Size(_) => Ok(Type::f32(Level::Batch)),
            Op::Unary(_) => Ok(Type::f32(float(0)?)),
            Op::Binary(_) => Ok(Type::f32(finest(&[float(0)?, float(1)?]))),
            Op::Clamp => Ok(Type::f32(finest(&[float(0)?, float(1)?, float(2)?]))),
            Op::Select => {
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
            Op::Compare(Cmp::Eq | Cmp::Ne) => {
                let (a, b) = (args[0], args[1]);
                if a.dtype != b.dtype || a.dtype == DType::Bool {
                    return Err((
                        DiagKind::DTypeMismatch,
                        format!("`{name}` compares two f32 or two idx values, got {a} and {b}"),
                    ));
                }
                Ok(Type::bool(finest(&[a.level, b.level])))
            }
            Op::Compare(Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge) => {
                Ok(Type::bool(finest(&[float(0)?, float(1)?])))
            }
            Op::LogSoftmax | Op::Softmax => {
                at_level(0, Level::Vocab, DType::F32, "")?;
                Ok(Type::f32(Level::Vocab))
            }
            Op::VocabReduce(_) => {
                at_level(0, Level::Vocab, DType::F32, "")?;
                Ok(Type::f32(Level::Row))
            }
            Op::AtTarget | Op::LogProb => {
                at_level(0, Level::Vocab, DType::F32, "")?;
                at_level(1, Level::Row, DType::Idx, "")?;
                Ok(Type::f32(Level::Row))
            }
            Op::ArgMax => {
                at_level(0, Level::Vocab, DType::F32, "")?;
                Ok(Type::idx(Level::Row))
            }
            Op::OneHot => {
                at_level(0, Level::Row, DType::Idx, "")?;
                Ok(Type::f32(Level::Vocab))
            }
            Op::Valid => {
                at_level(0, Level::Row, DType::Idx, "")?;
                Ok(Type::bool(Level::Row))
            }
            Op::SeqReduce(_) => {
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
            Op::SeqCount => {
                if args.len() == 1 {
                    row_mask(0)?;
                }
                Ok(Type::f32(Level::Seq))
            }
            Op::Chosen | Op::Rejected => {
                let hint = match args[0].level {
                    Level::Row => " (reduce each sequence first: seq_sum or seq_mean)",
                    Level::Vocab => " (reduce over the vocab, then over each sequence)",
                    _ => "",
                };
                at_level(0, Level::Seq, DType::F32, hint)?;
                Ok(Type::f32(Level::Pair))
            }
            Op::PlaceChosen | Op::PlaceRejected => {
                at_level(0, Level::Pair, DType::F32, "")?;
                Ok(Type::f32(Level::Seq))
            }
            Op::Sum | Op::Mean => {
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
            Op::SumAll | Op::MeanAll => {
                at_level(0, Level::Row, DType::F32, "")?;
                Ok(Type::f32(Level::Batch))
            }
            Op::NumValid => {
                row_mask(0)?;
                Ok(Type::f32(Level::Batch))
            }
            Op::Broadcast(to) => {
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

/// A function of the loss language (`#[chunked_loss]` bodies and loss files).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SurfaceFn {
    /// Its name.
    pub name: &'static str,
    /// Fewest arguments.
    pub min_args: usize,
    /// Most arguments.
    pub max_args: usize,
    /// Its argument list, as the reference shows it.
    pub signature: &'static str,
    /// The op it lowers to (`None` for `metric`, a statement).
    pub op: Option<Op>,
    /// From which level to which.
    pub levels: &'static str,
    /// What it computes.
    pub meaning: &'static str,
}

/// The name of the mask argument that selects every row (no mask at all).
pub const EVERY_ROW: &str = "every_row";

/// The surface arities of functions whose mask (or `x`) the language makes optional: the
/// table's arity is the IR's, where a Row `sum`/`mean`/`num_valid` carries its mask.
fn surface_arity(op: Op) -> (usize, usize) {
    match op {
        Op::NumValid => (0, 1),
        other => other.arity(),
    }
}

/// Every function of the loss language, in table order: each op with a surface signature,
/// then `metric`.
pub fn surface_functions() -> Vec<SurfaceFn> {
    let mut out: Vec<SurfaceFn> = Op::all()
        .into_iter()
        .filter_map(|op| {
            let info = op.info();
            let signature = info.surface?;
            let (min_args, max_args) = surface_arity(op);
            Some(SurfaceFn {
                name: op.static_name(),
                min_args,
                max_args,
                signature,
                op: Some(op),
                levels: info.levels,
                meaning: info.meaning,
            })
        })
        .collect();
    out.push(SurfaceFn {
        name: EVERY_ROW,
        min_args: 0,
        max_args: 0,
        signature: "",
        op: None,
        levels: "a row mask, as the mask argument of `sum`, `mean`, `seq_sum`, `seq_mean`, `seq_count`, `num_valid`",
        meaning: "every row, ignored and padding rows included (no mask): `seq_sum(x, every_row())`",
    });
    out.push(SurfaceFn {
        name: "metric",
        min_args: 2,
        max_args: 2,
        signature: "\"name\", value",
        op: None,
        levels: "any (not vocab), as a statement",
        meaning: "returns `value` without gradient under `name` (Batch: a scalar; Pair/Seq: `[P]`/`[S]`; Row: `[S, T]`)",
    });
    out
}

/// The function table of the language reference, in Markdown, generated from the op table
/// (so no function can be left undocumented).
pub fn reference_table() -> String {
    let mut s = String::from("| function | levels | meaning |\n|---|---|---|\n");
    for f in surface_functions() {
        let _ = writeln!(
            s,
            "| `{}({})` | {} | {} |",
            f.name,
            f.signature,
            f.levels,
            f.meaning.replace('|', "\\|")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_round_trips_through_its_name() {
        for op in Op::all() {
            if matches!(op, Op::Input(_) | Op::Const(_)) {
                continue;
            }
            assert_eq!(Op::from_name(&op.name()), Some(op), "{}", op.name());
        }
        assert_eq!(Op::from_name("broadcast.batch"), None);
        assert_eq!(Op::from_name("nope"), None);
    }

    #[test]
    fn names_are_unique() {
        let names: Vec<String> = Op::all().iter().map(Op::name).collect();
        let set: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(set.len(), names.len(), "{names:?}");
    }

    #[test]
    fn the_reference_table_lists_every_surface_function() {
        let t = reference_table();
        for f in surface_functions() {
            assert!(t.contains(&format!("`{}(", f.name)), "{}", f.name);
        }
        assert!(t.contains("`square(x)`"));
        // Ops introduced by passes are not part of the language.
        assert!(!t.contains("onehot"));
        assert!(!t.contains("place_chosen"));
    }
}
