//! C expressions of single ops: the CUDA form of every elementwise op (one exhaustive match
//! per family), literals, inlined sizes and value-table indexing.

use crate::func::{LossFn, ValueId};
use crate::op::{Binary, Cmp, Op, Size, Unary};
use crate::types::{DType, Level};

use super::EmitError;

/// A float literal as C (`1.0f`, infinities and NaN by their bits).
pub(super) fn lit(c: f64) -> String {
    let x = c as f32;
    if x.is_nan() {
        "__int_as_float(0x7fc00000)".into()
    } else if x == f32::INFINITY {
        "__int_as_float(0x7f800000)".into()
    } else if x == f32::NEG_INFINITY {
        "LIGER_NEG_INF".into()
    } else {
        format!("{x:?}f")
    }
}

/// The inline C value of constants and sizes (`None` for everything else).
pub(super) fn inline(g: &LossFn, v: ValueId) -> Option<String> {
    Some(match g.node(v).op {
        Op::Const(c) => lit(c),
        Op::Size(s) => match s {
            Size::Vocab => "((float)V)".into(),
            Size::SeqLen => "((float)T)".into(),
            Size::NumSeqs => "((float)S)".into(),
            Size::NumPairs => "((float)(S / 2))".into(),
        },
        _ => return None,
    })
}

/// The CUDA form of a unary op.
pub(super) fn unary(u: Unary, x: &str) -> String {
    match u {
        Unary::Neg => format!("(-{x})"),
        Unary::Exp => format!("expf({x})"),
        Unary::Log => format!("logf({x})"),
        Unary::Log1p => format!("log1pf({x})"),
        Unary::Expm1 => format!("expm1f({x})"),
        Unary::Sqrt => format!("sqrtf({x})"),
        Unary::Square => format!("liger_square({x})"),
        Unary::Abs => format!("fabsf({x})"),
        Unary::Relu => format!("fmaxf({x}, 0.0f)"),
        Unary::Sigmoid => format!("liger_sigmoid({x})"),
        Unary::LogSigmoid => format!("(-liger_softplus(-({x})))"),
        Unary::Softplus => format!("liger_softplus({x})"),
        Unary::Tanh => format!("tanhf({x})"),
        Unary::StopGradient => x.to_string(),
    }
}

/// The CUDA form of a binary op.
pub(super) fn binary(b: Binary, x: &str, y: &str) -> String {
    match b {
        Binary::Add => format!("({x} + {y})"),
        Binary::Sub => format!("({x} - {y})"),
        Binary::Mul => format!("({x} * {y})"),
        Binary::Div => format!("({x} / {y})"),
        Binary::Pow => format!("powf({x}, {y})"),
        Binary::Min => format!("fminf({x}, {y})"),
        Binary::Max => format!("fmaxf({x}, {y})"),
        Binary::LogAddExp => format!("liger_logaddexp({x}, {y})"),
    }
}

/// The CUDA form of a comparison; `idx` for two indices (an invalid index, -1, equals nothing).
pub(super) fn compare(c: Cmp, x: &str, y: &str, idx: bool) -> String {
    match (c, idx) {
        (Cmp::Eq, true) => format!("({x} >= 0 && {x} == {y})"),
        (Cmp::Ne, true) => format!("(!({x} >= 0 && {x} == {y}))"),
        (Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge, true) => "false".into(),
        (Cmp::Lt, false) => format!("({x} < {y})"),
        (Cmp::Le, false) => format!("({x} <= {y})"),
        (Cmp::Gt, false) => format!("({x} > {y})"),
        (Cmp::Ge, false) => format!("({x} >= {y})"),
        (Cmp::Eq, false) => format!("({x} == {y})"),
        (Cmp::Ne, false) => format!("({x} != {y})"),
    }
}

/// The C expression of an elementwise op (or a broadcast, which is the operand itself) over
/// operand expressions; any other op is not an expression of its operands here, and asking
/// for one is an emitter bug.
pub(super) fn elementwise(op: Op, a: &[String], idx_cmp: bool) -> Result<String, EmitError> {
    let x = |k: usize| -> Result<&str, EmitError> {
        a.get(k)
            .map(String::as_str)
            .ok_or_else(|| EmitError(format!("`{}` is missing operand {}", op.name(), k + 1)))
    };
    Ok(match op {
        Op::Unary(u) => unary(u, x(0)?),
        Op::Binary(b) => binary(b, x(0)?, x(1)?),
        Op::Clamp => format!("liger_clamp({}, {}, {})", x(0)?, x(1)?, x(2)?),
        Op::Select => format!("({} ? {} : {})", x(0)?, x(1)?, x(2)?),
        Op::Compare(c) => compare(c, x(0)?, x(1)?, idx_cmp),
        Op::Broadcast(_) => x(0)?.to_string(),
        Op::Input(_)
        | Op::Const(_)
        | Op::Size(_)
        | Op::LogSoftmax
        | Op::Softmax
        | Op::VocabReduce(_)
        | Op::AtTarget
        | Op::LogProb
        | Op::ArgMax
        | Op::OneHot
        | Op::Valid
        | Op::SeqReduce(_)
        | Op::SeqCount
        | Op::Chosen
        | Op::Rejected
        | Op::PlaceChosen
        | Op::PlaceRejected
        | Op::Sum
        | Op::Mean
        | Op::SumAll
        | Op::MeanAll
        | Op::NumValid => {
            return Err(EmitError(format!(
                "`{}` is not an elementwise expression",
                op.name()
            )));
        }
    })
}

/// The index, into an array at level `to`, of element `e` of the finer level `from`.
pub(super) fn level_index(from: Level, to: Level, e: &str) -> String {
    match (from, to) {
        (a, b) if a == b => e.to_string(),
        (_, Level::Batch) => "0".into(),
        (Level::Row, Level::Seq) => format!("({e} / T)"),
        (Level::Row, Level::Pair) => format!("(({e} / T) % P)"),
        (Level::Seq, Level::Pair) => format!("({e} % P)"),
        _ => "0".into(),
    }
}

/// The typed pointer of `v`'s value-table array.
pub(super) fn c_ptr(dtype: DType, v: ValueId) -> String {
    match dtype {
        DType::Idx => format!("((int*)vals[{}])", v.0),
        DType::F32 | DType::Bool => format!("((float*)vals[{}])", v.0),
    }
}

/// The C type of a value held in a register.
pub(super) fn c_type(dtype: DType) -> &'static str {
    match dtype {
        DType::Bool => "bool",
        DType::Idx => "int",
        DType::F32 => "float",
    }
}
