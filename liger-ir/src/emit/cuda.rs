//! The CUDA C emitter: a scheduled gradient IR → one module of kernels.
//!
//! Kernels (names are stable; the module's source is deterministic):
//! - `liger_pre`, `liger_group`, `liger_group_needed`: *array programs* run by one block over
//!   whole-batch values (`Row`, `Seq`, `Pair`, `Batch`), one node after another;
//! - `liger_fwd` / `liger_fused` / `liger_unit`: *vocab streams*, one block per row of a chunk.
//!   Vocab-level values are never stored: each is an inline expression of the row's logits and
//!   row scalars, recomputed in every pass over `V` that needs it. Row reductions are grouped
//!   into as few passes as their dependencies allow (pass `k` holds the reductions whose
//!   operands need results of pass `k-1`: `log_softmax` needs the online max/sum-exp of its
//!   operand first); `at_target`/`logprob` read one entry after the pass they need. Row results
//!   go to their whole-batch arrays; gradients (`fused`) or deferred units (`unit`) are written
//!   in the GEMM dtype, in a last pass (in place over fp32 logits when the dtype is f32);
//! - `liger_bwd`: the backward stream, after the group stage;
//! - `liger_bias`: column sums of `dlogits` (optionally row-scaled) into the fp32 bias gradient;
//! - `liger_coef_<k>`, `liger_scale_rows`, `liger_scaled_copy`: the deferred-scaling pieces.
//!
//! ABI. Non-vocab values live in device arrays, one per IR node, in a table `vals` indexed by
//! node id (floats and masks as f32, indices as i32 with -1 for an invalid row);
//! hyperparameters are batch-level entries of that table, written per call, so changing one
//! never recompiles. True sizes (`S`, `T`, `V`, rows of the chunk) are kernel arguments and
//! every index is bounds-checked. bf16/f16 need no CUDA headers: stores round in PTX.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use crate::func::{InputKind, LossFn, ValueId};
use crate::op::Op;
use crate::schedule::{Schedule, Strategy};
use crate::types::{DType, Level};

const PRELUDE: &str = include_str!("prelude.cu");

/// The emitter's version: bump on any change of the generated code's shape.
pub const EMITTER_VERSION: &str = "cuda-emitter-3";

/// What identifies the code generator in cache keys: its version and prelude.
pub fn codegen_fingerprint() -> String {
    format!("{EMITTER_VERSION}\n{PRELUDE}")
}

/// The dtype of GEMM inputs (and of `dlogits` written for the backward GEMMs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmDType {
    /// fp32.
    F32,
    /// bfloat16.
    BF16,
    /// IEEE half.
    F16,
}

impl GemmDType {
    /// The name used in keys and reports.
    pub fn name(self) -> &'static str {
        match self {
            GemmDType::F32 => "f32",
            GemmDType::BF16 => "bf16",
            GemmDType::F16 => "f16",
        }
    }
    fn c_type(self) -> &'static str {
        match self {
            GemmDType::F32 => "float",
            GemmDType::BF16 | GemmDType::F16 => "unsigned short",
        }
    }
    fn store(self, x: &str) -> String {
        match self {
            GemmDType::F32 => x.to_string(),
            GemmDType::BF16 => format!("liger_f2bf({x})"),
            GemmDType::F16 => format!("liger_f2h({x})"),
        }
    }
    fn load(self, x: &str) -> String {
        match self {
            GemmDType::F32 => x.to_string(),
            GemmDType::BF16 => format!("__uint_as_float(((unsigned int){x}) << 16)"),
            GemmDType::F16 => format!("liger_h2f({x})"),
        }
    }
}

/// Codegen-affecting options (part of the kernel-cache key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EmitOptions {
    /// GEMM input dtype.
    pub gemm_dtype: GemmDType,
}

/// What a kernel does (how the executor launches it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelKind {
    /// Whole-batch values before the chunk loop (one block).
    Pre,
    /// Forward vocab stream (one block per chunk row).
    Forward,
    /// Forward and backward fused, writing gradients (one block per row).
    Fused,
    /// Forward stream writing the deferred units (one block per row).
    Unit,
    /// The group values the backward needs (one block).
    GroupNeeded,
    /// The whole group stage (one block).
    Group,
    /// Backward vocab stream writing gradients (one block per row).
    Backward,
    /// Bias gradient column sums (one thread per vocab entry).
    Bias,
    /// Per-row deferred coefficient of one head (one thread per row).
    Coef,
    /// Scales rows of an f32 matrix (one thread per element).
    ScaleRows,
    /// Writes `c_r · x_r` in the GEMM dtype (one thread per element).
    ScaledCopy,
}

/// One kernel of a module.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelInfo {
    /// Its `extern "C"` name.
    pub name: String,
    /// What it does.
    pub kind: KernelKind,
    /// For `Coef`: the head's input index.
    pub head: Option<usize>,
}

/// A generated module.
#[derive(Clone, Debug, PartialEq)]
pub struct CudaModule {
    /// CUDA C source (prelude and kernels).
    pub source: String,
    /// Its kernels, in source order.
    pub kernels: Vec<KernelInfo>,
    /// The strategy the module implements.
    pub strategy: Strategy,
}

fn lit(c: f64) -> String {
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

struct Ctx<'a> {
    g: &'a LossFn,
}

impl Ctx<'_> {
    fn ty(&self, v: ValueId) -> crate::types::Type {
        self.g.ty(v)
    }
    fn op(&self, v: ValueId) -> Op {
        self.g.node(v).op
    }
    fn args(&self, v: ValueId) -> &[ValueId] {
        &self.g.node(v).args
    }
    fn is_head(&self, v: ValueId) -> Option<usize> {
        match self.op(v) {
            Op::Input(id) if self.g.inputs[id.index()].kind.is_head() => Some(id.index()),
            _ => None,
        }
    }
    fn is_vocab_input(&self, v: ValueId) -> bool {
        matches!(self.op(v), Op::Input(id) if self.g.inputs[id.index()].kind == InputKind::VocabInput)
    }
    /// Inline value of constants and sizes.
    fn inline(&self, v: ValueId) -> Option<String> {
        Some(match self.op(v) {
            Op::Const(c) => lit(c),
            Op::VocabSize => "((float)V)".into(),
            Op::SeqLen => "((float)T)".into(),
            Op::NumSeqs => "((float)S)".into(),
            Op::NumPairs => "((float)(S / 2))".into(),
            _ => return None,
        })
    }
}

/// The C expression of an elementwise op over operand expressions.
fn elementwise(op: Op, a: &[String], idx_cmp: bool) -> String {
    let x = |k: usize| a.get(k).cloned().unwrap_or_default();
    match op {
        Op::Neg => format!("(-{})", x(0)),
        Op::Exp => format!("expf({})", x(0)),
        Op::Log => format!("logf({})", x(0)),
        Op::Log1p => format!("log1pf({})", x(0)),
        Op::Expm1 => format!("expm1f({})", x(0)),
        Op::Sqrt => format!("sqrtf({})", x(0)),
        Op::Abs => format!("fabsf({})", x(0)),
        Op::Relu => format!("fmaxf({}, 0.0f)", x(0)),
        Op::Sigmoid => format!("liger_sigmoid({})", x(0)),
        Op::LogSigmoid => format!("(-liger_softplus(-({})))", x(0)),
        Op::Softplus => format!("liger_softplus({})", x(0)),
        Op::Tanh => format!("tanhf({})", x(0)),
        Op::StopGradient | Op::Broadcast(_) => x(0),
        Op::Add => format!("({} + {})", x(0), x(1)),
        Op::Sub => format!("({} - {})", x(0), x(1)),
        Op::Mul => format!("({} * {})", x(0), x(1)),
        Op::Div => format!("({} / {})", x(0), x(1)),
        Op::Pow => format!("powf({}, {})", x(0), x(1)),
        Op::Min => format!("fminf({}, {})", x(0), x(1)),
        Op::Max => format!("fmaxf({}, {})", x(0), x(1)),
        Op::LogAddExp => format!("liger_logaddexp({}, {})", x(0), x(1)),
        Op::Clamp => format!("liger_clamp({}, {}, {})", x(0), x(1), x(2)),
        Op::Select => format!("({} ? {} : {})", x(0), x(1), x(2)),
        Op::Lt => format!("({} < {})", x(0), x(1)),
        Op::Le => format!("({} <= {})", x(0), x(1)),
        Op::Gt => format!("({} > {})", x(0), x(1)),
        Op::Ge => format!("({} >= {})", x(0), x(1)),
        Op::Eq if idx_cmp => format!("({0} >= 0 && {0} == {1})", x(0), x(1)),
        Op::Ne if idx_cmp => format!("(!({0} >= 0 && {0} == {1}))", x(0), x(1)),
        Op::Eq => format!("({} == {})", x(0), x(1)),
        Op::Ne => format!("({} != {})", x(0), x(1)),
        other => format!("/* {} */ 0.0f", other.name()),
    }
}

/// A row-level item computed inside a vocab-stream kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    /// A row-level IR node of the program.
    Node(ValueId),
    /// The log-sum-exp of a vocab value (needed by `log_softmax`/`softmax`/`logprob`).
    Lse(ValueId),
}

struct Stream<'a> {
    c: Ctx<'a>,
    in_prog: BTreeSet<ValueId>,
    stages: BTreeMap<Item, usize>,
    externals: BTreeSet<ValueId>,
}

impl<'a> Stream<'a> {
    fn new(g: &'a LossFn, program: &[ValueId]) -> Self {
        Stream {
            c: Ctx { g },
            in_prog: program.iter().copied().collect(),
            stages: BTreeMap::new(),
            externals: BTreeSet::new(),
        }
    }

    fn is_vocab(&self, v: ValueId) -> bool {
        self.c.ty(v).level == Level::Vocab
            && self.c.is_head(v).is_none()
            && !self.c.is_vocab_input(v)
    }

    /// Row items a vocab expression needs, collecting externals on the way.
    fn needs(&mut self, v: ValueId, out: &mut BTreeSet<Item>, seen: &mut BTreeSet<ValueId>) {
        if !seen.insert(v) {
            return;
        }
        if !self.is_vocab(v) {
            if self.c.inline(v).is_some() || self.c.is_head(v).is_some() || self.c.is_vocab_input(v)
            {
                return;
            }
            if self.in_prog.contains(&v) {
                out.insert(Item::Node(v));
            } else {
                self.externals.insert(v);
            }
            return;
        }
        if matches!(self.c.op(v), Op::LogSoftmax | Op::Softmax) {
            let z = self.c.args(v)[0];
            out.insert(Item::Lse(z));
        }
        for a in self.c.args(v).to_vec() {
            self.needs(a, out, seen);
        }
    }

    fn stage_of(&mut self, it: Item) -> usize {
        if let Some(s) = self.stages.get(&it) {
            return *s;
        }
        let v = match it {
            Item::Node(v) | Item::Lse(v) => v,
        };
        let mut deps = BTreeSet::new();
        let loops;
        match it {
            Item::Lse(z) => {
                self.needs(z, &mut deps, &mut BTreeSet::new());
                loops = true;
            }
            Item::Node(_) => match self.c.op(v) {
                Op::SumVocab | Op::MaxVocab | Op::LogSumExp | Op::ArgMax => {
                    self.needs(self.c.args(v)[0], &mut deps, &mut BTreeSet::new());
                    loops = true;
                }
                Op::AtTarget | Op::LogProb => {
                    let (e, t) = (self.c.args(v)[0], self.c.args(v)[1]);
                    self.needs(e, &mut deps, &mut BTreeSet::new());
                    self.needs(t, &mut deps, &mut BTreeSet::new());
                    if self.c.op(v) == Op::LogProb {
                        deps.insert(Item::Lse(e));
                    }
                    loops = false;
                }
                _ => {
                    for a in self.c.args(v).to_vec() {
                        self.needs(a, &mut deps, &mut BTreeSet::new());
                    }
                    loops = false;
                }
            },
        }
        let base = deps.iter().map(|d| self.stage_of(*d)).max().unwrap_or(0);
        let s = if loops { base + 1 } else { base };
        self.stages.insert(it, s);
        s
    }

    /// The expression of a (non-vocab) operand inside the kernel.
    fn scalar(&self, v: ValueId) -> String {
        if let Some(x) = self.c.inline(v) {
            return x;
        }
        format!("r{}", v.0)
    }

    /// The expression of any operand at vocab position `v`.
    fn at_v(&self, v: ValueId) -> String {
        if let Some(h) = self.c.is_head(v) {
            return format!("z{h}[v]");
        }
        if self.c.is_vocab_input(v) {
            return format!("((const float*)vals[{}])[v]", v.0);
        }
        if self.is_vocab(v) {
            return format!("n{}", v.0);
        }
        self.scalar(v)
    }

    /// Definitions of the vocab values `roots` need, in topological order.
    fn vocab_defs(&self, roots: &[ValueId], indent: &str) -> String {
        let mut need = BTreeSet::new();
        let mut stack: Vec<ValueId> = roots
            .iter()
            .copied()
            .filter(|r| self.is_vocab(*r))
            .collect();
        while let Some(v) = stack.pop() {
            if need.insert(v) {
                for a in self.c.args(v) {
                    if self.is_vocab(*a) {
                        stack.push(*a);
                    }
                }
            }
        }
        let mut out = String::new();
        for v in need {
            let op = self.c.op(v);
            let args: Vec<String> = self.c.args(v).iter().map(|a| self.at_v(*a)).collect();
            let e = match op {
                Op::LogSoftmax => format!("({} - lse{})", args[0], self.c.args(v)[0].0),
                Op::Softmax => format!("expf({} - lse{})", args[0], self.c.args(v)[0].0),
                Op::OneHot => format!("((v == {}) ? 1.0f : 0.0f)", args[0]),
                op => elementwise(op, &args, false),
            };
            let ty = if self.c.ty(v).dtype == DType::Bool {
                "bool"
            } else {
                "float"
            };
            let _ = writeln!(out, "{indent}const {ty} n{} = {e};", v.0);
        }
        out
    }
}

fn level_index(from: Level, to: Level, e: &str) -> String {
    match (from, to) {
        (a, b) if a == b => e.to_string(),
        (_, Level::Batch) => "0".into(),
        (Level::Row, Level::Seq) => format!("({e} / T)"),
        (Level::Row, Level::Pair) => format!("(({e} / T) % P)"),
        (Level::Seq, Level::Pair) => format!("({e} % P)"),
        _ => "0".into(),
    }
}

fn c_ptr(dtype: DType, v: ValueId) -> String {
    match dtype {
        DType::Idx => format!("((int*)vals[{}])", v.0),
        _ => format!("((float*)vals[{}])", v.0),
    }
}

/// Emits a vocab-stream kernel for `program`; `outputs` are `(head slot, vocab value)` pairs
/// written to `outs[slot]` in the GEMM dtype.
fn stream_kernel(
    g: &LossFn,
    name: &str,
    program: &[ValueId],
    outputs: &[(usize, ValueId)],
    opts: &EmitOptions,
) -> String {
    let mut st = Stream::new(g, program);
    let row_nodes: Vec<ValueId> = program
        .iter()
        .copied()
        .filter(|v| g.ty(*v).level == Level::Row)
        .collect();
    for v in &row_nodes {
        st.stage_of(Item::Node(*v));
    }
    let mut out_needs = BTreeSet::new();
    for (_, o) in outputs {
        st.needs(*o, &mut out_needs, &mut BTreeSet::new());
    }
    for it in &out_needs {
        st.stage_of(*it);
    }
    let stages = st.stages.clone();
    let max_stage = stages.values().copied().max().unwrap_or(0);
    let heads: BTreeSet<usize> = g
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, _)| st.c.is_head(ValueId(i as u32)))
        .collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "extern \"C\" __global__ void __launch_bounds__(LIGER_BLOCK, 1) {name}(\n    void* const* __restrict__ vals, const float* const* __restrict__ logits, const int* __restrict__ rows,\n    int row0, int nrows, int S, int T, int V, long long ld, void* const* __restrict__ outs, long long ldo) {{"
    );
    s += "    const int i = blockIdx.x;\n    if (i >= nrows || blockDim.x != LIGER_BLOCK) { return; }\n";
    s += "    const int r = rows ? rows[i] : row0 + i;\n    if (r < 0 || r >= S * T) { return; }\n";
    s += "    const int P = S / 2;\n    (void)P;\n";
    s += "    __shared__ float sh[32];\n    __shared__ int shi[32];\n    (void)shi;\n";
    for h in &heads {
        let _ = writeln!(
            s,
            "    const float* __restrict__ z{h} = logits[{h}] + (long long)i * ld;"
        );
    }
    // Externals: one scalar per row.
    for x in &st.externals {
        let t = g.ty(*x);
        let idx = level_index(Level::Row, t.level, "r");
        match t.dtype {
            DType::Idx => {
                let _ = writeln!(s, "    const int r{} = {}[{idx}];", x.0, c_ptr(t.dtype, *x));
            }
            DType::Bool => {
                let _ = writeln!(
                    s,
                    "    const bool r{} = {}[{idx}] != 0.0f;",
                    x.0,
                    c_ptr(t.dtype, *x)
                );
            }
            DType::F32 => {
                let _ = writeln!(
                    s,
                    "    const float r{} = {}[{idx}];",
                    x.0,
                    c_ptr(t.dtype, *x)
                );
            }
        }
    }
    let emit_points = |s: &mut String, stage: usize| {
        for (it, &k) in &stages {
            let Item::Node(v) = *it else { continue };
            if k != stage {
                continue;
            }
            let op = g.node(v).op;
            if matches!(op, Op::SumVocab | Op::MaxVocab | Op::LogSumExp | Op::ArgMax) {
                continue;
            }
            let args = &g.node(v).args;
            match op {
                Op::AtTarget | Op::LogProb => {
                    let (e, t) = (args[0], args[1]);
                    let _ = writeln!(s, "    float r{} = 0.0f;", v.0);
                    let _ = writeln!(
                        s,
                        "    {{\n        const int v = {};\n        if (v >= 0 && v < V) {{",
                        st.scalar(t)
                    );
                    s.push_str(&st.vocab_defs(&[e], "            "));
                    let val = st.at_v(e);
                    if op == Op::LogProb {
                        let _ = writeln!(s, "            r{} = {val} - lse{};", v.0, e.0);
                    } else {
                        let _ = writeln!(s, "            r{} = {val};", v.0);
                    }
                    s.push_str("        }\n    }\n");
                }
                op => {
                    let idx_cmp =
                        matches!(op, Op::Eq | Op::Ne) && g.ty(args[0]).dtype == DType::Idx;
                    let a: Vec<String> = args.iter().map(|x| st.scalar(*x)).collect();
                    let ty = match g.ty(v).dtype {
                        DType::Bool => "bool",
                        DType::Idx => "int",
                        DType::F32 => "float",
                    };
                    let _ = writeln!(
                        s,
                        "    const {ty} r{} = {};",
                        v.0,
                        elementwise(op, &a, idx_cmp)
                    );
                }
            }
        }
    };
    emit_points(&mut s, 0);
    for stage in 1..=max_stage {
        let reds: Vec<Item> = stages
            .iter()
            .filter(|(it, k)| {
                **k == stage
                    && match it {
                        Item::Lse(_) => true,
                        Item::Node(v) => matches!(
                            g.node(*v).op,
                            Op::SumVocab | Op::MaxVocab | Op::LogSumExp | Op::ArgMax
                        ),
                    }
            })
            .map(|(it, _)| *it)
            .collect();
        let _ = writeln!(s, "    // pass {stage} over the vocabulary");
        for it in &reds {
            match it {
                Item::Lse(z) => {
                    let _ = writeln!(s, "    float lm{0} = LIGER_NEG_INF, ls{0} = 0.0f;", z.0);
                }
                Item::Node(v) => match g.node(*v).op {
                    Op::SumVocab => {
                        let _ = writeln!(s, "    float acc{} = 0.0f;", v.0);
                    }
                    Op::MaxVocab => {
                        let _ = writeln!(s, "    float acc{} = LIGER_NEG_INF;", v.0);
                    }
                    Op::LogSumExp => {
                        let _ =
                            writeln!(s, "    float lm{0}_ = LIGER_NEG_INF, ls{0}_ = 0.0f;", v.0);
                    }
                    _ => {
                        let _ = writeln!(s, "    float am{0} = LIGER_NEG_INF; int ak{0} = 0;", v.0);
                    }
                },
            }
        }
        let mut body = String::new();
        let roots: Vec<ValueId> = reds
            .iter()
            .map(|it| match it {
                Item::Lse(z) => *z,
                Item::Node(v) => g.node(*v).args[0],
            })
            .collect();
        body.push_str(&st.vocab_defs(&roots, "        "));
        for it in &reds {
            match it {
                Item::Lse(z) => {
                    let _ = writeln!(
                        body,
                        "        liger_lse_add(lm{0}, ls{0}, {1});",
                        z.0,
                        st.at_v(*z)
                    );
                }
                Item::Node(v) => {
                    let a = st.at_v(g.node(*v).args[0]);
                    match g.node(*v).op {
                        Op::SumVocab => {
                            let _ = writeln!(body, "        acc{} += {a};", v.0);
                        }
                        Op::MaxVocab => {
                            let _ = writeln!(body, "        acc{0} = fmaxf(acc{0}, {a});", v.0);
                        }
                        Op::LogSumExp => {
                            let _ =
                                writeln!(body, "        liger_lse_add(lm{0}_, ls{0}_, {a});", v.0);
                        }
                        _ => {
                            let _ = writeln!(
                                body,
                                "        if ({a} > am{0}) {{ am{0} = {a}; ak{0} = v; }}",
                                v.0
                            );
                        }
                    }
                }
            }
        }
        s += &vocab_loop(&heads, &body);
        for it in &reds {
            match it {
                Item::Lse(z) => {
                    let _ = writeln!(
                        s,
                        "    const float lse{0} = liger_block_lse(lm{0}, ls{0}, sh);",
                        z.0
                    );
                }
                Item::Node(v) => match g.node(*v).op {
                    Op::SumVocab => {
                        let _ = writeln!(
                            s,
                            "    const float r{0} = liger_block_sum(acc{0}, sh);",
                            v.0
                        );
                    }
                    Op::MaxVocab => {
                        let _ = writeln!(
                            s,
                            "    const float r{0} = liger_block_max(acc{0}, sh);",
                            v.0
                        );
                    }
                    Op::LogSumExp => {
                        let _ = writeln!(
                            s,
                            "    const float r{0} = liger_block_lse(lm{0}_, ls{0}_, sh);",
                            v.0
                        );
                    }
                    _ => {
                        let _ = writeln!(
                            s,
                            "    const int r{0} = liger_block_argmax(am{0}, ak{0}, sh, shi);",
                            v.0
                        );
                    }
                },
            }
        }
        emit_points(&mut s, stage);
    }
    // Row results to their whole-batch arrays.
    if !row_nodes.is_empty() {
        s += "    if (threadIdx.x == 0) {\n";
        for v in &row_nodes {
            let t = g.ty(*v);
            let val = match t.dtype {
                DType::Bool => format!("(r{} ? 1.0f : 0.0f)", v.0),
                _ => format!("r{}", v.0),
            };
            let _ = writeln!(s, "        {}[r] = {val};", c_ptr(t.dtype, *v));
        }
        s += "    }\n";
    }
    if !outputs.is_empty() {
        s += "    __syncthreads();\n    // last pass: write the vocab outputs\n";
        let mut body = String::new();
        let roots: Vec<ValueId> = outputs.iter().map(|(_, o)| *o).collect();
        body.push_str(&st.vocab_defs(&roots, "        "));
        for (slot, o) in outputs {
            let val = opts.gemm_dtype.store(&st.at_v(*o));
            let _ = writeln!(
                body,
                "        (({}*)outs[{slot}])[(long long)i * ldo + v] = {val};",
                opts.gemm_dtype.c_type()
            );
        }
        s += &vocab_loop(&heads, &body);
    }
    s += "}\n";
    s
}

/// A loop of each thread over its vocabulary positions `v = threadIdx.x + k·LIGER_BLOCK`
/// running `body` (lines indented by 8, reading head logits as `z{h}[v]`), unrolled
/// `LIGER_UNROLL` times: the logits of all unrolled positions are loaded before any arithmetic,
/// so every thread keeps several loads in flight (memory-level parallelism; the stream kernels
/// are bound by global-memory latency otherwise). Each thread still visits its positions in
/// increasing order, so every reduction accumulates in exactly the order of a plain loop.
fn vocab_loop(heads: &std::collections::BTreeSet<usize>, body: &str) -> String {
    let used: Vec<usize> = heads
        .iter()
        .copied()
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

/// Emits an array-program kernel (one block) for whole-batch `nodes`.
fn array_kernel(g: &LossFn, name: &str, nodes: &[ValueId]) -> String {
    let c = Ctx { g };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "extern \"C\" __global__ void __launch_bounds__(LIGER_BLOCK, 1) {name}(void* const* __restrict__ vals, int S, int T, int V, int* __restrict__ status) {{"
    );
    s += "    if (blockIdx.x != 0 || blockDim.x != LIGER_BLOCK) { return; }\n";
    s += "    const int P = S / 2;\n    const int R = S * T;\n    __shared__ float sh[32];\n    (void)P; (void)R; (void)V;\n";
    let count = |l: Level| match l {
        Level::Row => "R",
        Level::Seq => "S",
        Level::Pair => "P",
        _ => "1",
    };
    let read = |a: ValueId, from: Level, e: &str| -> String {
        if let Some(x) = c.inline(a) {
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
        if c.inline(v).is_some() || matches!(node.op, Op::Input(_)) {
            continue;
        }
        let out = c_ptr(t.dtype, v);
        let n = count(t.level);
        let _ = writeln!(s, "    // {} = {}", v.0, node.op.name());
        let args = &node.args;
        match node.op {
            Op::Valid => {
                let _ = writeln!(
                    s,
                    "    for (int e = threadIdx.x; e < R; e += LIGER_BLOCK) {{ {out}[e] = ({} >= 0) ? 1.0f : 0.0f; }}",
                    read(args[0], Level::Row, "e")
                );
            }
            Op::SeqSum | Op::SeqMean | Op::SeqMeanOrZero | Op::SeqCount => {
                let (x, m) = if node.op == Op::SeqCount {
                    (None, args.first())
                } else {
                    (Some(args[0]), args.get(1))
                };
                let _ = writeln!(
                    s,
                    "    for (int q = threadIdx.x; q < S; q += LIGER_BLOCK) {{"
                );
                s += "        float sum = 0.0f; int cnt = 0;\n        for (int e = q * T; e < (q + 1) * T; ++e) {\n";
                let cond = m.map_or("true".to_string(), |m| read(*m, Level::Row, "e"));
                let val = x.map_or("0.0f".to_string(), |x| read(x, Level::Row, "e"));
                let _ = writeln!(s, "            if ({cond}) {{ sum += {val}; cnt += 1; }}");
                s += "        }\n";
                match node.op {
                    Op::SeqSum => {
                        let _ = writeln!(s, "        {out}[q] = sum;");
                    }
                    Op::SeqCount => {
                        let _ = writeln!(s, "        {out}[q] = (float)cnt;");
                    }
                    Op::SeqMeanOrZero => {
                        let _ = writeln!(s, "        {out}[q] = sum / (float)(cnt > 1 ? cnt : 1);");
                    }
                    _ => {
                        let _ = writeln!(
                            s,
                            "        if (cnt == 0) {{ status[0] = 1; status[1] = q; }}\n        {out}[q] = cnt > 0 ? sum / (float)cnt : 0.0f;"
                        );
                    }
                }
                s += "    }\n";
            }
            Op::Chosen | Op::Rejected => {
                let off = if node.op == Op::Chosen { "0" } else { "P" };
                let _ = writeln!(
                    s,
                    "    for (int e = threadIdx.x; e < P; e += LIGER_BLOCK) {{ {out}[e] = ((const float*)vals[{}])[e + {off}]; }}",
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
                    "    for (int e = threadIdx.x; e < S; e += LIGER_BLOCK) {{ {out}[e] = (e {cmp} P) ? ((const float*)vals[{}])[e % P] : 0.0f; }}",
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
                    "    {{\n        float sum = 0.0f, cnt = 0.0f;\n        for (int e = threadIdx.x; e < {m}; e += LIGER_BLOCK) {{ if ({cond}) {{ sum += {val}; cnt += 1.0f; }} }}"
                );
                s += "        sum = liger_block_sum(sum, sh);\n        cnt = liger_block_sum(cnt, sh);\n";
                let res = match (node.op, xl) {
                    (Op::Sum | Op::SumAll, _) | (Op::NumValid, _) => "sum",
                    (Op::Mean, Level::Row) => "(cnt > 0.0f ? sum / cnt : 0.0f)",
                    _ => "sum / cnt",
                };
                if node.op == Op::Mean && xl == Level::Row {
                    s += "        if (threadIdx.x == 0 && cnt == 0.0f) { status[2] = 1; }\n";
                }
                let _ = writeln!(
                    s,
                    "        if (threadIdx.x == 0) {{ {out}[0] = {res}; }}\n    }}"
                );
            }
            op => {
                let idx_cmp = matches!(op, Op::Eq | Op::Ne)
                    && args.first().is_some_and(|a| g.ty(*a).dtype == DType::Idx);
                let a: Vec<String> = args.iter().map(|x| read(*x, t.level, "e")).collect();
                let e = elementwise(op, &a, idx_cmp);
                let val = match t.dtype {
                    DType::Bool => format!("({e} ? 1.0f : 0.0f)"),
                    _ => e,
                };
                let _ = writeln!(
                    s,
                    "    for (int e = threadIdx.x; e < {n}; e += LIGER_BLOCK) {{ {out}[e] = {val}; }}"
                );
            }
        }
        s += "    __syncthreads();\n";
    }
    s += "}\n";
    s
}

fn bias_kernel(opts: &EmitOptions) -> String {
    let load = opts.gemm_dtype.load(&format!(
        "((const {}*)dz)[(long long)q * ldz + v]",
        opts.gemm_dtype.c_type()
    ));
    format!(
        "extern \"C\" __global__ void liger_bias(const void* __restrict__ dz, int nrows, int V, long long ldz, const float* __restrict__ coef, float* __restrict__ db) {{\n    const int v = blockIdx.x * blockDim.x + threadIdx.x;\n    if (v >= V) {{ return; }}\n    float acc = 0.0f;\n    for (int q = 0; q < nrows; ++q) {{ acc += (coef ? coef[q] : 1.0f) * {load}; }}\n    db[v] += acc;\n}}\n"
    )
}

fn deferred_kernels(
    g: &LossFn,
    sched: &Schedule,
    opts: &EmitOptions,
    kernels: &mut Vec<KernelInfo>,
) -> String {
    let mut s = String::new();
    for f in sched.factors.iter().flatten() {
        let slot = f.head.index();
        let name = format!("liger_coef_{slot}");
        let t = g.ty(f.coef);
        let idx = level_index(Level::Row, t.level, "r");
        let val = match g.node(f.coef).op {
            Op::Const(c) => lit(c),
            _ => format!("((const float*)vals[{}])[{idx}]", f.coef.0),
        };
        let _ = writeln!(
            s,
            "extern \"C\" __global__ void {name}(void* const* __restrict__ vals, const int* __restrict__ rows, int row0, int nrows, int S, int T, float* __restrict__ out) {{\n    const int i = blockIdx.x * blockDim.x + threadIdx.x;\n    if (i >= nrows) {{ return; }}\n    const int r = rows ? rows[i] : row0 + i;\n    if (r < 0 || r >= S * T) {{ out[i] = 0.0f; return; }}\n    const int P = S / 2;\n    (void)P;\n    out[i] = {val};\n}}"
        );
        kernels.push(KernelInfo {
            name,
            kind: KernelKind::Coef,
            head: Some(slot),
        });
    }
    let ct = opts.gemm_dtype.c_type();
    let load = opts.gemm_dtype.load("x[(long long)i * ldx + k]");
    let store = opts.gemm_dtype.store(&format!("c[i] * {load}"));
    let _ = writeln!(
        s,
        "extern \"C\" __global__ void liger_scale_rows(float* __restrict__ x, long long ldx, int nrows, int h, const float* __restrict__ c) {{\n    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n    if (e >= (long long)nrows * h) {{ return; }}\n    const int i = (int)(e / h), k = (int)(e % h);\n    x[(long long)i * ldx + k] *= c[i];\n}}"
    );
    let _ = writeln!(
        s,
        "extern \"C\" __global__ void liger_scaled_copy(const {ct}* __restrict__ x, long long ldx, int nrows, int h, const float* __restrict__ c, {ct}* __restrict__ out) {{\n    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n    if (e >= (long long)nrows * h) {{ return; }}\n    const int i = (int)(e / h), k = (int)(e % h);\n    out[(long long)i * h + k] = {store};\n}}"
    );
    kernels.push(KernelInfo {
        name: "liger_scale_rows".into(),
        kind: KernelKind::ScaleRows,
        head: None,
    });
    kernels.push(KernelInfo {
        name: "liger_scaled_copy".into(),
        kind: KernelKind::ScaledCopy,
        head: None,
    });
    s
}

/// Emits the module of `strategy` for the scheduled gradient IR `g`.
pub fn emit_cuda(
    g: &LossFn,
    sched: &Schedule,
    strategy: Strategy,
    opts: &EmitOptions,
) -> CudaModule {
    let mut src = String::new();
    let _ = writeln!(
        src,
        "// liger kernels: {} ({}), gemm dtype {}",
        if g.name.is_empty() { "_" } else { &g.name },
        strategy.name(),
        opts.gemm_dtype.name()
    );
    src += PRELUDE;
    if opts.gemm_dtype == GemmDType::F16 {
        src += "__device__ __forceinline__ float liger_h2f(unsigned short h) {\n    float f;\n    asm(\"cvt.f32.f16 %0, %1;\" : \"=f\"(f) : \"h\"(h));\n    return f;\n}\n";
    }
    let mut kernels = Vec::new();
    // `logits[]` and `outs[]` are indexed by the head's input index.
    let grads: Vec<(usize, ValueId)> = sched
        .heads
        .iter()
        .filter_map(|h| h.grad.map(|gv| (h.input.index(), gv)))
        .collect();
    let mut push = |src: &mut String, name: &str, kind: KernelKind, text: String| {
        src.push('\n');
        src.push_str(&text);
        kernels.push(KernelInfo {
            name: name.into(),
            kind,
            head: None,
        });
    };
    push(
        &mut src,
        "liger_pre",
        KernelKind::Pre,
        array_kernel(g, "liger_pre", &sched.pre),
    );
    let fwd = sched.forward_program(g, strategy);
    let bwd = sched.backward_program(g, strategy);
    match strategy {
        Strategy::Fused => {
            push(
                &mut src,
                "liger_fused",
                KernelKind::Fused,
                stream_kernel(g, "liger_fused", &fwd, &grads, opts),
            );
        }
        Strategy::Deferred => {
            let units: Vec<(usize, ValueId)> = sched
                .factors
                .iter()
                .flatten()
                .map(|f| (f.head.index(), f.unit))
                .collect();
            push(
                &mut src,
                "liger_unit",
                KernelKind::Unit,
                stream_kernel(g, "liger_unit", &fwd, &units, opts),
            );
            push(
                &mut src,
                "liger_group_needed",
                KernelKind::GroupNeeded,
                array_kernel(g, "liger_group_needed", &sched.group_needed),
            );
        }
        Strategy::GroupAligned | Strategy::TwoPass => {
            push(
                &mut src,
                "liger_fwd",
                KernelKind::Forward,
                stream_kernel(g, "liger_fwd", &fwd, &[], opts),
            );
            if strategy == Strategy::GroupAligned {
                push(
                    &mut src,
                    "liger_group_needed",
                    KernelKind::GroupNeeded,
                    array_kernel(g, "liger_group_needed", &sched.group_needed),
                );
            }
            push(
                &mut src,
                "liger_bwd",
                KernelKind::Backward,
                stream_kernel(g, "liger_bwd", &bwd, &grads, opts),
            );
        }
    }
    push(
        &mut src,
        "liger_group",
        KernelKind::Group,
        array_kernel(g, "liger_group", &sched.group),
    );
    push(&mut src, "liger_bias", KernelKind::Bias, bias_kernel(opts));
    if strategy == Strategy::Deferred {
        src.push('\n');
        src += &deferred_kernels(g, sched, opts, &mut kernels);
    }
    CudaModule {
        source: src,
        kernels,
        strategy,
    }
}
