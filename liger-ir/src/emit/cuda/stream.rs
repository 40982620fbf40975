//! Vocab-stream kernels: one block per row of a chunk, following a [`StreamPlan`] pass by
//! pass. Vocab-level values are inline expressions of the row's logits and row scalars,
//! recomputed in every pass that needs them; row reductions accumulate per thread and are
//! combined with block reductions; row results go to their whole-batch arrays; vocab outputs
//! are written in the GEMM dtype in a last pass.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::func::{InputId, LossFn, ValueId};
use crate::op::{Op, VocabReduce};
use crate::stream::{Reduction, RowItem, StreamPlan, head_of, is_stream_vocab, is_vocab_input};
use crate::types::{DType, Level};

use super::abi::{KernelKind, c_signature};
use super::expr::{c_ptr, c_type, elementwise, inline, level_index};
use super::{EmitError, EmitOptions};

struct Exprs<'a> {
    g: &'a LossFn,
}

impl Exprs<'_> {
    /// The expression of a (non-vocab) operand inside the kernel.
    fn scalar(&self, v: ValueId) -> String {
        inline(self.g, v).unwrap_or_else(|| format!("r{}", v.0))
    }

    /// The expression of any operand at vocab position `v`.
    fn at_v(&self, v: ValueId) -> String {
        if let Some(h) = head_of(self.g, v) {
            return format!("z{}[v]", h.0);
        }
        if is_vocab_input(self.g, v) {
            return format!("((const float*)vals[{}])[v]", v.0);
        }
        if is_stream_vocab(self.g, v) {
            return format!("n{}", v.0);
        }
        self.scalar(v)
    }

    /// Definitions of the vocab values `roots` need, in topological order.
    fn vocab_defs(&self, roots: &[ValueId], indent: &str) -> Result<String, EmitError> {
        let g = self.g;
        let mut need = BTreeSet::new();
        let mut stack: Vec<ValueId> = roots
            .iter()
            .copied()
            .filter(|r| is_stream_vocab(g, *r))
            .collect();
        while let Some(v) = stack.pop() {
            if need.insert(v) {
                stack.extend(
                    g.node(v)
                        .args
                        .iter()
                        .copied()
                        .filter(|a| is_stream_vocab(g, *a)),
                );
            }
        }
        let mut out = String::new();
        for v in need {
            let node = g.node(v);
            let args: Vec<String> = node.args.iter().map(|a| self.at_v(*a)).collect();
            let e = match node.op {
                Op::LogSoftmax => {
                    let z = node.args[0].0;
                    format!("(({} - lmx{z}) - lsh{z})", args[0])
                }
                Op::Softmax => {
                    let z = node.args[0].0;
                    format!("expf(({} - lmx{z}) - lsh{z})", args[0])
                }
                Op::OneHot => format!("((v == {}) ? 1.0f : 0.0f)", args[0]),
                op => elementwise(op, &args, false)?,
            };
            let _ = writeln!(
                out,
                "{indent}const {} n{} = {e};",
                c_type(node.ty.dtype),
                v.0
            );
        }
        Ok(out)
    }
}

/// The names of a reduction's accumulators and result: `(tag, result)`.
fn red_names(it: RowItem) -> (String, String) {
    match it {
        RowItem::Lse(z) => (format!("{}", z.0), format!("lse{}", z.0)),
        RowItem::Node(v) => (format!("{}", v.0), format!("r{}", v.0)),
    }
}

/// The state of a reduction over V while its pass runs.
fn reduction_init(red: Reduction, it: RowItem) -> String {
    let (k, _) = red_names(it);
    match red {
        Reduction::Lse(_) | Reduction::Vocab(VocabReduce::LogSumExp, _) => {
            format!("    float lm{k} = LIGER_NEG_INF, ls{k} = 0.0f;")
        }
        Reduction::Vocab(VocabReduce::Sum, _) => format!("    float acc{k} = 0.0f;"),
        Reduction::Vocab(VocabReduce::Max, _) => format!("    float acc{k} = LIGER_NEG_INF;"),
        Reduction::ArgMax(_) => format!("    float am{k} = LIGER_NEG_INF; int ak{k} = 0;"),
    }
}

/// One thread's step of a reduction at position `v`, whose operand is `a`.
fn reduction_step(red: Reduction, it: RowItem, a: &str) -> String {
    let (k, _) = red_names(it);
    match red {
        Reduction::Lse(_) | Reduction::Vocab(VocabReduce::LogSumExp, _) => {
            format!("        liger_lse_add(lm{k}, ls{k}, {a});")
        }
        Reduction::Vocab(VocabReduce::Sum, _) => format!("        acc{k} += {a};"),
        Reduction::Vocab(VocabReduce::Max, _) => format!("        acc{k} = fmaxf(acc{k}, {a});"),
        Reduction::ArgMax(_) => format!("        if ({a} > am{k}) {{ am{k} = {a}; ak{k} = v; }}"),
    }
}

/// The block-wide result of a reduction after its pass.
fn reduction_finish(red: Reduction, it: RowItem) -> String {
    let (k, out) = red_names(it);
    match red {
        // The two parts, so that `(z − lmx) − lsh` cancels a common offset exactly.
        Reduction::Lse(_) => format!(
            "    float lmx{k};\n    const float lsh{k} = liger_block_lse_parts(lm{k}, ls{k}, sh, lmx{k});"
        ),
        Reduction::Vocab(VocabReduce::LogSumExp, _) => {
            format!("    const float {out} = liger_block_lse(lm{k}, ls{k}, sh);")
        }
        Reduction::Vocab(VocabReduce::Sum, _) => {
            format!("    const float {out} = liger_block_sum(acc{k}, sh);")
        }
        Reduction::Vocab(VocabReduce::Max, _) => {
            format!("    const float {out} = liger_block_max(acc{k}, sh);")
        }
        Reduction::ArgMax(_) => {
            format!("    const int {out} = liger_block_argmax(am{k}, ak{k}, sh, shi);")
        }
    }
}

/// Emits the vocab-stream kernel `name` of `kind` for `plan`.
pub(super) fn stream_kernel(
    g: &LossFn,
    name: &str,
    kind: KernelKind,
    plan: &StreamPlan,
    opts: &EmitOptions,
) -> Result<String, EmitError> {
    let ex = Exprs { g };
    let mut s = String::new();
    let _ = writeln!(s, "{} {{", c_signature(kind, name));
    s += "    const int i = blockIdx.x;\n    if (i >= nrows || blockDim.x != LIGER_BLOCK) { return; }\n";
    s += "    const int r = rows ? rows[i] : row0 + i;\n    if (r < 0 || r >= S * T) { return; }\n";
    s += "    const int P = S / 2;\n    (void)P;\n";
    s += "    __shared__ float sh[32];\n    __shared__ int shi[32];\n    (void)shi;\n";
    for h in &plan.heads {
        let _ = writeln!(
            s,
            "    const float* __restrict__ z{0} = logits[{0}] + (long long)i * ld;",
            h.0
        );
    }
    // Externals: one scalar per row.
    for x in &plan.externals {
        let t = g.ty(*x);
        let idx = level_index(Level::Row, t.level, "r");
        let load = format!("{}[{idx}]", c_ptr(t.dtype, *x));
        let val = match t.dtype {
            DType::Bool => format!("{load} != 0.0f"),
            DType::Idx | DType::F32 => load,
        };
        let _ = writeln!(s, "    const {} r{} = {val};", c_type(t.dtype), x.0);
    }
    let points = |s: &mut String, stage: usize| -> Result<(), EmitError> {
        for v in plan.points(g, stage) {
            let node = g.node(v);
            let args = &node.args;
            match node.op {
                Op::AtTarget | Op::LogProb => {
                    let (e, t) = (args[0], args[1]);
                    let _ = writeln!(s, "    float r{} = 0.0f;", v.0);
                    let _ = writeln!(
                        s,
                        "    {{\n        const int v = {};\n        if (v >= 0 && v < V) {{",
                        ex.scalar(t)
                    );
                    s.push_str(&ex.vocab_defs(&[e], "            ")?);
                    let val = ex.at_v(e);
                    if node.op == Op::LogProb {
                        let _ =
                            writeln!(s, "            r{} = ({val} - lmx{1}) - lsh{1};", v.0, e.0);
                    } else {
                        let _ = writeln!(s, "            r{} = {val};", v.0);
                    }
                    s.push_str("        }\n    }\n");
                }
                op => {
                    let idx_cmp = matches!(op, Op::Compare(_)) && g.ty(args[0]).dtype == DType::Idx;
                    let a: Vec<String> = args.iter().map(|x| ex.scalar(*x)).collect();
                    let _ = writeln!(
                        s,
                        "    const {} r{} = {};",
                        c_type(node.ty.dtype),
                        v.0,
                        elementwise(op, &a, idx_cmp)?
                    );
                }
            }
        }
        Ok(())
    };
    // The stores of the vocab outputs, in the last pass.
    let stores = |body: &mut String| {
        for (slot, o) in &plan.outputs {
            let val = opts.gemm_dtype.store(&ex.at_v(*o));
            let _ = writeln!(
                body,
                "        (({}*)outs[{}])[(long long)i * ldo + v] = {val};",
                opts.gemm_dtype.c_type(),
                slot.0
            );
        }
    };
    let out_roots: Vec<ValueId> = plan.outputs.iter().map(|(_, o)| *o).collect();
    points(&mut s, 0)?;
    let last = plan.reduction_passes();
    for stage in 1..=last {
        let reds: Vec<(RowItem, Reduction)> = plan
            .reductions(g, stage)
            .into_iter()
            .filter_map(|it| Some((it, Reduction::of(g, it)?)))
            .collect();
        let merged = plan.merged_last && stage == last;
        if merged {
            let _ = writeln!(
                s,
                "    // pass {stage} over the vocabulary, writing the vocab outputs too"
            );
        } else {
            let _ = writeln!(s, "    // pass {stage} over the vocabulary");
        }
        for (it, red) in &reds {
            let _ = writeln!(s, "{}", reduction_init(*red, *it));
        }
        let mut roots: Vec<ValueId> = reds.iter().map(|(_, red)| red.operand()).collect();
        if merged {
            roots.extend(&out_roots);
        }
        let mut body = ex.vocab_defs(&roots, "        ")?;
        for (it, red) in &reds {
            let _ = writeln!(
                body,
                "{}",
                reduction_step(*red, *it, &ex.at_v(red.operand()))
            );
        }
        if merged {
            stores(&mut body);
        }
        s += &vocab_loop(&plan.heads, &body);
        for (it, red) in &reds {
            let _ = writeln!(s, "{}", reduction_finish(*red, *it));
        }
        points(&mut s, stage)?;
    }
    // Row results to their whole-batch arrays.
    let row_nodes = plan.row_nodes(g);
    if !row_nodes.is_empty() {
        s += "    if (threadIdx.x == 0) {\n";
        for v in &row_nodes {
            let t = g.ty(*v);
            let val = match t.dtype {
                DType::Bool => format!("(r{} ? 1.0f : 0.0f)", v.0),
                DType::Idx | DType::F32 => format!("r{}", v.0),
            };
            let _ = writeln!(s, "        {}[r] = {val};", c_ptr(t.dtype, *v));
        }
        s += "    }\n";
    }
    if !plan.outputs.is_empty() && !plan.merged_last {
        s += "    __syncthreads();\n    // last pass: write the vocab outputs\n";
        let mut body = ex.vocab_defs(&out_roots, "        ")?;
        stores(&mut body);
        s += &vocab_loop(&plan.heads, &body);
    }
    s += "}\n";
    Ok(s)
}

/// A loop of each thread over its vocabulary positions `v = threadIdx.x + k·LIGER_BLOCK`
/// running `body` (lines indented by 8, reading head logits as `z{h}[v]`), unrolled
/// `LIGER_UNROLL` times: the logits of all unrolled positions are loaded before any arithmetic,
/// so every thread keeps several loads in flight (memory-level parallelism; the stream kernels
/// are bound by global-memory latency otherwise). Each thread still visits its positions in
/// increasing order, so every reduction accumulates in exactly the order of a plain loop.
fn vocab_loop(heads: &BTreeSet<InputId>, body: &str) -> String {
    let used: Vec<u32> = heads
        .iter()
        .map(|h| h.0)
        .filter(|h| body.contains(&format!("z{h}[v]")))
        .collect();
    let mut inner = body.to_string();
    for h in &used {
        inner = inner.replace(&format!("z{h}[v]"), &format!("zu{h}[u]"));
    }
    let mut s = String::new();
    s += "    #pragma unroll 1\n";
    s += "    for (int v0 = threadIdx.x; v0 < V; v0 += LIGER_UNROLL * LIGER_BLOCK) {\n";
    if !used.is_empty() {
        for h in &used {
            let _ = writeln!(s, "        float zu{h}[LIGER_UNROLL];");
        }
        s += "        #pragma unroll\n        for (int u = 0; u < LIGER_UNROLL; ++u) {\n";
        s += "            const int v = v0 + u * LIGER_BLOCK;\n";
        for h in &used {
            let _ = writeln!(s, "            zu{h}[u] = (v < V) ? z{h}[v] : 0.0f;");
        }
        s += "        }\n";
    }
    s += "        #pragma unroll\n        for (int u = 0; u < LIGER_UNROLL; ++u) {\n";
    s += "            const int v = v0 + u * LIGER_BLOCK;\n            if (v >= V) { break; }\n";
    for line in inner.lines() {
        let _ = writeln!(s, "    {line}");
    }
    s += "        }\n    }\n";
    s
}
