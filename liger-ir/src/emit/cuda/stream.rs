//! Vocab-stream kernels: one block per row of a chunk, following a [`StreamPlan`] pass by
//! pass. Vocab-level values are inline expressions of the row's logits and row scalars,
//! recomputed in every pass that needs them; row reductions accumulate per thread and are
//! combined with block reductions; row results go to their whole-batch arrays; vocab outputs
//! are written in the GEMM dtype in a last pass.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::func::{InputId, LossFn, ValueId};
use crate::op::{Op, VocabReduce};
use crate::shard::{CrossKind, ShardPlan, cross_kind};
use crate::stream::{Reduction, RowItem, StreamPlan, head_of, is_stream_vocab, is_vocab_input};
use crate::types::{DType, Level};

use super::abi::{KernelKind, c_signature};
use super::expr::{c_ptr, c_type, elementwise, inline, level_index};
use super::{EmitError, EmitOptions};

struct Exprs<'a> {
    g: &'a LossFn,
    /// Vocab-parallel kernel: vocabulary positions `v` are local to the shard (global
    /// `v + voff`).
    shard: bool,
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

    /// The definition of row value `v`, an elementwise op of row operands.
    fn point(&self, v: ValueId) -> Result<String, EmitError> {
        let g = self.g;
        let node = g.node(v);
        let args = &node.args;
        let idx_cmp = matches!(node.op, Op::Compare(_)) && g.ty(args[0]).dtype == DType::Idx;
        let a: Vec<String> = args.iter().map(|x| self.scalar(*x)).collect();
        Ok(format!(
            "    const {} r{} = {};\n",
            c_type(node.ty.dtype),
            v.0,
            elementwise(node.op, &a, idx_cmp)?
        ))
    }

    /// The stores of `plan`'s vocab outputs at position `v`, in the GEMM dtype.
    fn stores(&self, plan: &StreamPlan, opts: &EmitOptions) -> String {
        let mut body = String::new();
        for (slot, o) in &plan.outputs {
            let val = opts.gemm_dtype.store(&self.at_v(*o));
            let _ = writeln!(
                body,
                "        (({}*)outs[{}])[(long long)i * ldo + v] = {val};",
                opts.gemm_dtype.c_type(),
                slot.0
            );
        }
        body
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
                Op::OneHot if self.shard => format!("(((v + voff) == {}) ? 1.0f : 0.0f)", args[0]),
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

/// The start of a stream kernel: its signature, the row it runs (one block per row of the
/// chunk), the heads' logits rows and the externals' values.
fn prologue(g: &LossFn, name: &str, kind: KernelKind, plan: &StreamPlan) -> String {
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
    s
}

/// Emits the vocab-stream kernel `name` of `kind` for `plan`.
pub(super) fn stream_kernel(
    g: &LossFn,
    name: &str,
    kind: KernelKind,
    plan: &StreamPlan,
    opts: &EmitOptions,
) -> Result<String, EmitError> {
    let ex = Exprs { g, shard: false };
    let mut s = prologue(g, name, kind, plan);
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
                _ => s.push_str(&ex.point(v)?),
            }
        }
        Ok(())
    };
    // The stores of the vocab outputs, in the last pass.
    let stores = |body: &mut String| body.push_str(&ex.stores(plan, opts));
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
        s += &vocab_loop(&plan.heads, &body, "V");
        for (it, red) in &reds {
            let _ = writeln!(s, "{}", reduction_finish(*red, *it));
        }
        points(&mut s, stage)?;
    }
    s += &row_writes(g, plan);
    if !plan.outputs.is_empty() && !plan.merged_last {
        s += "    __syncthreads();\n    // last pass: write the vocab outputs\n";
        let mut body = ex.vocab_defs(&out_roots, "        ")?;
        stores(&mut body);
        s += &vocab_loop(&plan.heads, &body, "V");
    }
    s += "}\n";
    Ok(s)
}

/// Emits the vocab-parallel form of stream kernel `name`: the rounds of its [`ShardPlan`],
/// the one to run given by the kernel's `round` argument. Round `k` reads the combined values
/// of earlier rounds from `part`, computes its partials over the shard's `Vl` entries and
/// writes them to `part`; the final round computes every row value, writes the row results
/// and the vocab outputs. `V` is the whole vocabulary (for `vocab_size`), `voff` the shard's
/// first entry.
pub(super) fn shard_kernel(
    g: &LossFn,
    name: &str,
    kind: KernelKind,
    plan: &StreamPlan,
    opts: &EmitOptions,
) -> Result<String, EmitError> {
    let ex = Exprs { g, shard: true };
    let sp = ShardPlan::new(g, plan);
    let mut s = prologue(g, name, kind, plan);
    let last = sp.partial_rounds() + 1;
    for k in 1..=last {
        let mut b = String::new();
        // Combined values of earlier rounds.
        for (it, rk) in &sp.partial_round {
            if *rk < k {
                b += &combined_load(g, &sp, *it);
            }
        }
        // Row values known before this round, in topological order.
        for (it, known) in &sp.known_after {
            let RowItem::Node(v) = *it else { continue };
            if *known >= k {
                continue;
            }
            match g.node(v).op {
                Op::LogProb => {
                    let e = g.node(v).args[0].0;
                    let _ = writeln!(b, "    const float r{0} = (t{0} - lmx{e}) - lsh{e};", v.0);
                }
                _ if cross_kind(g, *it).is_some() => {}
                _ => b += &ex.point(v)?,
            }
        }
        if k < last {
            let _ = writeln!(b, "    // round {k}: this shard's partials");
            b += &shard_partials(&ex, plan, &sp, k)?;
            b += "    return;\n";
        } else {
            b += "    // final round: row results and vocab outputs\n";
            b += &row_writes(g, plan);
            if !plan.outputs.is_empty() {
                let roots: Vec<ValueId> = plan.outputs.iter().map(|(_, o)| *o).collect();
                let mut body = ex.vocab_defs(&roots, "        ")?;
                body += &ex.stores(plan, opts);
                b += "    __syncthreads();\n";
                b += &vocab_loop(&plan.heads, &body, "Vl");
            }
        }
        let _ = writeln!(s, "    if (round == {k}) {{");
        for line in b.lines() {
            let _ = writeln!(s, "    {line}");
        }
        s += "    }\n";
    }
    s += "}\n";
    Ok(s)
}

/// The definition of cross item `it`'s combined value, read from its round's slots.
fn combined_load(g: &LossFn, sp: &ShardPlan, it: RowItem) -> String {
    let Some((k, lay)) = sp.round_of(it) else {
        return String::new();
    };
    let base = sp.base(k);
    let at = |slot: usize| format!("part[(long long)({base} + {slot}) * nrows + i]");
    let pos = |xs: &[ValueId], v: ValueId| xs.iter().position(|x| *x == v).unwrap_or(0);
    match (cross_kind(g, it), it) {
        (Some(CrossKind::Lse), _) => {
            let (m, sl) = lay.lse_slots(lay.lse.iter().position(|x| *x == it).unwrap_or(0));
            match it {
                RowItem::Lse(z) => format!(
                    "    const float lmx{0} = {1};\n    const float lsh{0} = logf({2});\n",
                    z.0,
                    at(m),
                    at(sl)
                ),
                RowItem::Node(v) => {
                    format!("    const float r{} = {} + logf({});\n", v.0, at(m), at(sl))
                }
            }
        }
        (Some(CrossKind::ArgMax), RowItem::Node(v)) => {
            let (_, n) = lay.argmax_slots(pos(&lay.argmax, v));
            format!("    const int r{} = (int){};\n", v.0, at(n))
        }
        (Some(CrossKind::Max), RowItem::Node(v)) => {
            format!(
                "    const float r{} = {};\n",
                v.0,
                at(lay.max_slot(pos(&lay.max, v)))
            )
        }
        (Some(CrossKind::Sum | CrossKind::Target), RowItem::Node(v)) => {
            // `logprob`'s sum is the target logit; its value subtracts the normaliser.
            let name = if g.node(v).op == Op::LogProb {
                "t"
            } else {
                "r"
            };
            format!(
                "    const float {name}{} = {};\n",
                v.0,
                at(lay.sum_slot(pos(&lay.sum, v)))
            )
        }
        _ => String::new(),
    }
}

/// Round `k`'s partials: the reductions over the shard, the target entries it holds, written
/// to the round's slots by thread 0.
fn shard_partials(
    ex: &Exprs<'_>,
    plan: &StreamPlan,
    sp: &ShardPlan,
    k: usize,
) -> Result<String, EmitError> {
    let g = ex.g;
    let lay = &sp.rounds[k - 1];
    let mut s = String::new();
    let reds: Vec<(RowItem, Reduction)> = sp
        .partial_round
        .iter()
        .filter(|(_, rk)| **rk == k)
        .filter_map(|(it, _)| Some((*it, Reduction::of(g, *it)?)))
        .collect();
    if !reds.is_empty() {
        for (it, red) in &reds {
            let _ = writeln!(s, "{}", reduction_init(*red, *it));
        }
        let roots: Vec<ValueId> = reds.iter().map(|(_, red)| red.operand()).collect();
        let mut body = ex.vocab_defs(&roots, "        ")?;
        for (it, red) in &reds {
            let _ = writeln!(
                body,
                "{}",
                reduction_step(*red, *it, &ex.at_v(red.operand()))
            );
        }
        s += &vocab_loop(&plan.heads, &body, "Vl");
    }
    // Block results: `gm` (max), `gs` (sum), `gi` (argmax's local index).
    for (it, red) in &reds {
        let (t, _) = red_names(*it);
        let line = match red {
            Reduction::Lse(_) | Reduction::Vocab(VocabReduce::LogSumExp, _) => format!(
                "    const float gm{t} = liger_block_max(lm{t}, sh);\n    const float gs{t} = liger_block_sum((lm{t} == LIGER_NEG_INF) ? 0.0f : ls{t} * expf(lm{t} - gm{t}), sh);"
            ),
            Reduction::Vocab(VocabReduce::Sum, _) => {
                format!("    const float gs{t} = liger_block_sum(acc{t}, sh);")
            }
            Reduction::Vocab(VocabReduce::Max, _) => {
                format!("    const float gm{t} = liger_block_max(acc{t}, sh);")
            }
            Reduction::ArgMax(_) => format!(
                "    const int gi{t} = liger_block_argmax(am{t}, ak{t}, sh, shi);\n    const float gm{t} = liger_block_max(am{t}, sh);"
            ),
        };
        let _ = writeln!(s, "{line}");
    }
    // The target entries this shard holds (0 elsewhere).
    for &v in &lay.sum {
        let node = g.node(v);
        if !matches!(node.op, Op::AtTarget | Op::LogProb) {
            continue;
        }
        let (e, t) = (node.args[0], node.args[1]);
        let _ = writeln!(s, "    float q{} = 0.0f;", v.0);
        let _ = writeln!(
            s,
            "    {{\n        const int v = {} - voff;\n        if (v >= 0 && v < Vl) {{",
            ex.scalar(t)
        );
        s.push_str(&ex.vocab_defs(&[e], "            ")?);
        let _ = writeln!(s, "            q{} = {};", v.0, ex.at_v(e));
        s.push_str("        }\n    }\n");
    }
    let base = sp.base(k);
    let nm = lay.nm();
    s += "    if (threadIdx.x == 0) {\n";
    let _ = writeln!(
        s,
        "        float* __restrict__ pr = part + (long long){base} * nrows + i;"
    );
    let put = |s: &mut String, slot: usize, val: &str| {
        let _ = writeln!(s, "        pr[(long long){slot} * nrows] = {val};");
    };
    for (j, it) in lay.lse.iter().enumerate() {
        let (t, _) = red_names(*it);
        let (m, sl) = lay.lse_slots(j);
        put(&mut s, m, &format!("gm{t}"));
        put(&mut s, nm + m, &format!("gm{t}"));
        put(&mut s, sl, &format!("gs{t}"));
    }
    for (j, v) in lay.argmax.iter().enumerate() {
        let (m, n) = lay.argmax_slots(j);
        put(&mut s, m, &format!("gm{}", v.0));
        put(&mut s, nm + m, &format!("gm{}", v.0));
        put(&mut s, n, &format!("(float)(gi{} + voff)", v.0));
    }
    for (j, v) in lay.max.iter().enumerate() {
        let m = lay.max_slot(j);
        put(&mut s, m, &format!("gm{}", v.0));
        put(&mut s, nm + m, &format!("gm{}", v.0));
    }
    for (j, v) in lay.sum.iter().enumerate() {
        let val = match g.node(*v).op {
            Op::AtTarget | Op::LogProb => format!("q{}", v.0),
            _ => format!("gs{}", v.0),
        };
        put(&mut s, lay.sum_slot(j), &val);
    }
    s += "    }\n";
    Ok(s)
}

/// Row results to their whole-batch arrays (by thread 0).
fn row_writes(g: &LossFn, plan: &StreamPlan) -> String {
    let row_nodes = plan.row_nodes(g);
    let mut s = String::new();
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
    s
}

/// A loop of each thread over its vocabulary positions `v = threadIdx.x + k·LIGER_BLOCK`
/// running `body` (lines indented by 8, reading head logits as `z{h}[v]`), unrolled
/// `LIGER_UNROLL` times: the logits of all unrolled positions are loaded before any arithmetic,
/// so every thread keeps several loads in flight (memory-level parallelism; the stream kernels
/// are bound by global-memory latency otherwise). Each thread still visits its positions in
/// increasing order, so every reduction accumulates in exactly the order of a plain loop.
fn vocab_loop(heads: &BTreeSet<InputId>, body: &str, bound: &str) -> String {
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
    let _ = writeln!(
        s,
        "    for (int v0 = threadIdx.x; v0 < {bound}; v0 += LIGER_UNROLL * LIGER_BLOCK) {{"
    );
    if !used.is_empty() {
        for h in &used {
            let _ = writeln!(s, "        float zu{h}[LIGER_UNROLL];");
        }
        s += "        #pragma unroll\n        for (int u = 0; u < LIGER_UNROLL; ++u) {\n";
        s += "            const int v = v0 + u * LIGER_BLOCK;\n";
        for h in &used {
            let _ = writeln!(s, "            zu{h}[u] = (v < {bound}) ? z{h}[v] : 0.0f;");
        }
        s += "        }\n";
    }
    s += "        #pragma unroll\n        for (int u = 0; u < LIGER_UNROLL; ++u) {\n";
    let _ = writeln!(
        s,
        "            const int v = v0 + u * LIGER_BLOCK;\n            if (v >= {bound}) {{ break; }}"
    );
    for line in inner.lines() {
        let _ = writeln!(s, "    {line}");
    }
    s += "        }\n    }\n";
    s
}
