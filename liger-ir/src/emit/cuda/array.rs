//! Array-program kernels: one block computing whole-batch values (`Row`, `Seq`, `Pair`,
//! `Batch`) node after node (the pre stage, the group stage and the part of it the backward
//! needs). One exhaustive match over the op set: an op with no whole-batch form is an emitter
//! error, never a placeholder.
//!
//! Each node's block-strided loop carries `#pragma unroll 1`: these kernels move O(rows)
//! values in microseconds, and unrolling a hundred such loops was most of NVRTC's time for a
//! module (DPO's deferred module: 1.2 s → 0.5 s of compile on two cores). The per-sequence
//! loops inside a thread (a sequence's rows, one after another) keep the compiler's unrolling:
//! their loads would otherwise wait one by one.

use std::fmt::Write;

use crate::func::{LossFn, ValueId};
use crate::op::{Op, SeqReduce};
use crate::types::{DType, Level};

use super::EmitError;
use super::abi::{KernelKind, c_signature};
use super::expr::{c_ptr, elementwise, inline, level_index};

/// Emits the array kernel `name` of `kind` computing `nodes` in order.
pub(super) fn array_kernel(
    g: &LossFn,
    name: &str,
    kind: KernelKind,
    nodes: &[ValueId],
) -> Result<String, EmitError> {
    let names = crate::text::value_names(g);
    let mut s = String::new();
    let _ = writeln!(s, "{} {{", c_signature(kind, name));
    s += "    if (blockIdx.x != 0 || blockDim.x != LIGER_BLOCK) { return; }\n";
    s += "    const int P = S / 2;\n    const int R = S * T;\n    __shared__ float sh[32];\n    __shared__ double shd[32];\n    (void)P; (void)R; (void)V; (void)sh; (void)shd;\n";
    let count = |l: Level| match l {
        Level::Row => "R",
        Level::Seq => "S",
        Level::Pair => "P",
        Level::Vocab | Level::Batch => "1",
    };
    let read = |a: ValueId, from: Level, e: &str| -> String {
        if let Some(x) = inline(g, a) {
            return x;
        }
        let t = g.ty(a);
        let idx = level_index(from, t.level, e);
        match t.dtype {
            DType::Idx => format!("((const int*)vals[{}])[{idx}]", a.0),
            DType::Bool => format!("(((const float*)vals[{}])[{idx}] != 0.0f)", a.0),
            DType::F32 => format!("((const float*)vals[{}])[{idx}]", a.0),
        }
    };
    for &v in nodes {
        let node = g.node(v);
        let t = node.ty;
        if matches!(node.op, Op::Input(_)) {
            continue;
        }
        if let Some(x) = inline(g, v) {
            // Constants and sizes are inlined where they are used; their one-word array is
            // written too, for whoever reads it as a value (a metric, the loss).
            let _ = writeln!(
                s,
                "    // {} = {}\n    if (threadIdx.x == 0) {{ {}[0] = {x}; }}\n    __syncthreads();",
                names.get(v.index()).map_or("?", String::as_str),
                node.op.name(),
                c_ptr(t.dtype, v)
            );
            continue;
        }
        let out = c_ptr(t.dtype, v);
        let n = count(t.level);
        let _ = writeln!(
            s,
            "    // {} = {}",
            names.get(v.index()).map_or("?", String::as_str),
            node.op.name()
        );
        let args = &node.args;
        match node.op {
            Op::Valid => {
                let _ = writeln!(
                    s,
                    "    #pragma unroll 1\n    for (int e = threadIdx.x; e < R; e += LIGER_BLOCK) {{ {out}[e] = ({} >= 0) ? 1.0f : 0.0f; }}",
                    read(args[0], Level::Row, "e")
                );
            }
            Op::SeqReduce(_) | Op::SeqCount => {
                let red = match node.op {
                    Op::SeqReduce(r) => Some(r),
                    _ => None,
                };
                let (x, m) = match red {
                    None => (None, args.first()),
                    Some(_) => (Some(args[0]), args.get(1)),
                };
                let _ = writeln!(
                    s,
                    "    #pragma unroll 1\n    for (int q = threadIdx.x; q < S; q += LIGER_BLOCK) {{"
                );
                // Accumulated in f64 (as the CPU executor does), rounded once.
                s += "        double sum = 0.0; int cnt = 0;\n        for (int e = q * T; e < (q + 1) * T; ++e) {\n";
                let cond = m.map_or("true".to_string(), |m| read(*m, Level::Row, "e"));
                let val = x.map_or("0.0f".to_string(), |x| read(x, Level::Row, "e"));
                let _ = writeln!(
                    s,
                    "            if ({cond}) {{ sum += (double)({val}); cnt += 1; }}"
                );
                s += "        }\n";
                match red {
                    Some(SeqReduce::Sum) => {
                        if m.is_some() {
                            s += "        if (cnt == 0) { status[LIGER_STATUS_EMPTY_SUM] = 1; atomicMin(&status[LIGER_STATUS_EMPTY_SUM_INDEX], q); }\n";
                        }
                        let _ = writeln!(s, "        {out}[q] = (float)sum;");
                    }
                    None => {
                        let _ = writeln!(s, "        {out}[q] = (float)cnt;");
                    }
                    Some(SeqReduce::MeanOrZero) => {
                        let _ = writeln!(
                            s,
                            "        {out}[q] = (float)(sum / (double)(cnt > 1 ? cnt : 1));"
                        );
                    }
                    Some(SeqReduce::Mean) => {
                        let _ = writeln!(
                            s,
                            "        if (cnt == 0) {{ status[LIGER_STATUS_EMPTY_SEQ] = 1; atomicMin(&status[LIGER_STATUS_EMPTY_SEQ_INDEX], q); }}\n        {out}[q] = cnt > 0 ? (float)(sum / (double)cnt) : 0.0f;"
                        );
                    }
                }
                s += "    }\n";
            }
            Op::Chosen | Op::Rejected => {
                let off = if node.op == Op::Chosen { "0" } else { "P" };
                let _ = writeln!(
                    s,
                    "    #pragma unroll 1\n    for (int e = threadIdx.x; e < P; e += LIGER_BLOCK) {{ {out}[e] = ((const float*)vals[{}])[e + {off}]; }}",
                    args[0].0
                );
            }
            Op::PlaceChosen | Op::PlaceRejected => {
                let cmp = if node.op == Op::PlaceChosen {
                    "<"
                } else {
                    ">="
                };
                let _ = writeln!(
                    s,
                    "    #pragma unroll 1\n    for (int e = threadIdx.x; e < S; e += LIGER_BLOCK) {{ {out}[e] = (e {cmp} P) ? ((const float*)vals[{}])[e % P] : 0.0f; }}",
                    args[0].0
                );
            }
            Op::Sum | Op::Mean | Op::SumAll | Op::MeanAll | Op::NumValid => {
                let xl = g.ty(args[0]).level;
                let m = count(xl);
                let (val, cond) = if node.op == Op::NumValid {
                    ("1.0f".to_string(), read(args[0], xl, "e"))
                } else {
                    (
                        read(args[0], xl, "e"),
                        args.get(1)
                            .map_or("true".to_string(), |m| read(*m, xl, "e")),
                    )
                };
                let _ = writeln!(
                    s,
                    "    {{\n        double sum = 0.0, cnt = 0.0;\n        #pragma unroll 1\n        for (int e = threadIdx.x; e < {m}; e += LIGER_BLOCK) {{ if ({cond}) {{ sum += (double)({val}); cnt += 1.0; }} }}"
                );
                s += "        sum = liger_block_sum_d(sum, shd);\n        cnt = liger_block_sum_d(cnt, shd);\n";
                let row_mean = node.op == Op::Mean && xl == Level::Row;
                let res = if matches!(node.op, Op::Sum | Op::SumAll | Op::NumValid) {
                    "(float)sum"
                } else if row_mean {
                    "(cnt > 0.0 ? (float)(sum / cnt) : 0.0f)"
                } else {
                    "(float)(sum / cnt)"
                };
                if row_mean {
                    s += "        if (threadIdx.x == 0 && cnt == 0.0) { status[LIGER_STATUS_MEAN_NO_ROWS] = 1; }\n";
                }
                let _ = writeln!(
                    s,
                    "        if (threadIdx.x == 0) {{ {out}[0] = {res}; }}\n    }}"
                );
            }
            op @ (Op::Unary(_)
            | Op::Binary(_)
            | Op::Clamp
            | Op::Select
            | Op::Compare(_)
            | Op::Broadcast(_)) => {
                let idx_cmp = matches!(op, Op::Compare(_))
                    && args.first().is_some_and(|a| g.ty(*a).dtype == DType::Idx);
                let a: Vec<String> = args.iter().map(|x| read(*x, t.level, "e")).collect();
                let e = elementwise(op, &a, idx_cmp)?;
                let val = match t.dtype {
                    DType::Bool => format!("({e} ? 1.0f : 0.0f)"),
                    DType::F32 | DType::Idx => e,
                };
                let _ = writeln!(
                    s,
                    "    #pragma unroll 1\n    for (int e = threadIdx.x; e < {n}; e += LIGER_BLOCK) {{ {out}[e] = {val}; }}"
                );
            }
            Op::Input(_)
            | Op::Const(_)
            | Op::Size(_)
            | Op::LogSoftmax
            | Op::Softmax
            | Op::VocabReduce(_)
            | Op::AtTarget
            | Op::LogProb
            | Op::ArgMax
            | Op::OneHot => {
                return Err(EmitError(format!(
                    "`{}` ({}) is not a whole-batch value; it belongs in a vocab stream",
                    node.op.name(),
                    names.get(v.index()).map_or("?", String::as_str)
                )));
            }
        }
        s += "    __syncthreads();\n";
    }
    s += "}\n";
    Ok(s)
}
