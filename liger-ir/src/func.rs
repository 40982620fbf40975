//! The loss function container: inputs, a topologically ordered node arena, outputs.
//!
//! Invariants of a verified [`LossFn`] (checked by `verify`):
//! - every operand of node `i` is a node `j < i` (the arena is in topological order, children
//!   before parents, as in egg's `RecExpr`); the function is pure and control-flow free;
//! - every input has exactly one `Op::Input` node;
//! - `locs` has one entry per node; source locations are not part of the IR's identity
//!   (`canonical_text` leaves them and all names out).

use std::fmt;

use crate::op::Op;
use crate::types::{DType, Level, Type};

/// Index of a node in `LossFn::nodes`; printed `v<n>` with its arena index, as the `.lir`
/// printer, diagnostics and the generated CUDA name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValueId(pub u32);

impl ValueId {
    /// The arena index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// Index of an input in `LossFn::inputs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InputId(pub u32);

impl InputId {
    /// The input index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The kind of an input parameter (`docs/language.md`, "Parameters"). The kind fixes the
/// value's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputKind {
    /// An lm-head output that receives gradients (`x`, `W`, optional `b` at run time).
    Logits,
    /// A forward-only head (reference, teacher).
    Frozen,
    /// Token ids; rows equal to `ignore_index` are invalid.
    Target,
    /// Token ids with no ignore value: every row valid.
    Tokens,
    /// An f32 per row.
    RowInput,
    /// A bool per row.
    RowMask,
    /// An f32 per sequence.
    SeqInput,
    /// A bool per sequence.
    SeqMask,
    /// An f32 per vocab entry, broadcast over rows.
    VocabInput,
    /// An f32 scalar tensor computed elsewhere.
    ScalarInput,
    /// An f32 hyperparameter (a kernel argument).
    Param,
}

impl InputKind {
    /// Every kind, in declaration order.
    pub const ALL: [InputKind; 11] = [
        InputKind::Logits,
        InputKind::Frozen,
        InputKind::Target,
        InputKind::Tokens,
        InputKind::RowInput,
        InputKind::RowMask,
        InputKind::SeqInput,
        InputKind::SeqMask,
        InputKind::VocabInput,
        InputKind::ScalarInput,
        InputKind::Param,
    ];

    /// The text-form name.
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Logits => "logits",
            InputKind::Frozen => "frozen",
            InputKind::Target => "target",
            InputKind::Tokens => "tokens",
            InputKind::RowInput => "row_input",
            InputKind::RowMask => "row_mask",
            InputKind::SeqInput => "seq_input",
            InputKind::SeqMask => "seq_mask",
            InputKind::VocabInput => "vocab_input",
            InputKind::ScalarInput => "scalar_input",
            InputKind::Param => "param",
        }
    }

    /// Parses a text-form kind name.
    pub fn from_name(s: &str) -> Option<InputKind> {
        InputKind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The type of the input's value.
    pub fn ty(self) -> Type {
        match self {
            InputKind::Logits | InputKind::Frozen | InputKind::VocabInput => {
                Type::f32(Level::Vocab)
            }
            InputKind::Target | InputKind::Tokens => Type::idx(Level::Row),
            InputKind::RowInput => Type::f32(Level::Row),
            InputKind::RowMask => Type::bool(Level::Row),
            InputKind::SeqInput => Type::f32(Level::Seq),
            InputKind::SeqMask => Type::bool(Level::Seq),
            InputKind::ScalarInput | InputKind::Param => Type::f32(Level::Batch),
        }
    }

    /// Whether the input is an lm head (its logits come from a GEMM).
    pub fn is_head(self) -> bool {
        matches!(self, InputKind::Logits | InputKind::Frozen)
    }

    /// Whether the value's dtype is a float.
    pub fn is_float(self) -> bool {
        self.ty().dtype == DType::F32
    }
}

/// A declared input.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    /// The parameter's name.
    pub name: String,
    /// Its kind.
    pub kind: InputKind,
}

/// A node: an op applied to earlier nodes, with its type.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// Operands (earlier nodes).
    pub args: Vec<ValueId>,
    /// The result type.
    pub ty: Type,
}

/// A position in the user's source (`file:line:col`), kept for diagnostics only.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SrcLoc {
    /// File name as the user wrote it.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub col: u32,
}

impl fmt::Display for SrcLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// What an output is.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputKind {
    /// The loss (Batch level; exactly one).
    Loss,
    /// A named metric (returned without gradient).
    Metric(String),
    /// `dL/dlogits` of a `logits` head (Vocab level), named `d_<head>`.
    Grad(InputId),
}

/// An output of the function.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// Loss, metric or gradient.
    pub kind: OutputKind,
    /// The node holding the value.
    pub value: ValueId,
    /// Where the user wrote it.
    pub loc: Option<SrcLoc>,
}

/// A loss function: the unit every pass transforms.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct LossFn {
    /// The loss's name (not part of its identity).
    pub name: String,
    /// Declared inputs, in parameter order.
    pub inputs: Vec<Input>,
    /// The node arena, in topological order.
    pub nodes: Vec<Node>,
    /// One optional source location per node.
    pub locs: Vec<Option<SrcLoc>>,
    /// Loss, metrics and gradients.
    pub outputs: Vec<Output>,
}

impl LossFn {
    /// An empty function called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        LossFn {
            name: name.into(),
            ..Default::default()
        }
    }

    /// The node `v`.
    pub fn node(&self, v: ValueId) -> &Node {
        &self.nodes[v.index()]
    }

    /// The type of `v`.
    pub fn ty(&self, v: ValueId) -> Type {
        self.nodes[v.index()].ty
    }

    /// Node ids in arena order.
    pub fn ids(&self) -> impl Iterator<Item = ValueId> + use<> {
        (0..self.nodes.len() as u32).map(ValueId)
    }

    /// The input called `name`.
    pub fn input_by_name(&self, name: &str) -> Option<InputId> {
        self.inputs
            .iter()
            .position(|i| i.name == name)
            .map(|i| InputId(i as u32))
    }

    /// The node holding input `id`, if any.
    pub fn input_node(&self, id: InputId) -> Option<ValueId> {
        self.ids().find(|&v| self.node(v).op == Op::Input(id))
    }

    /// The loss output's value, if there is one.
    pub fn loss(&self) -> Option<ValueId> {
        self.outputs
            .iter()
            .find(|o| o.kind == OutputKind::Loss)
            .map(|o| o.value)
    }

    /// Metric outputs as `(name, value)`.
    pub fn metrics(&self) -> impl Iterator<Item = (&str, ValueId)> {
        self.outputs.iter().filter_map(|o| match &o.kind {
            OutputKind::Metric(n) => Some((n.as_str(), o.value)),
            _ => None,
        })
    }

    /// Gradient outputs as `(head, value)`.
    pub fn grads(&self) -> impl Iterator<Item = (InputId, ValueId)> + '_ {
        self.outputs.iter().filter_map(|o| match o.kind {
            OutputKind::Grad(h) => Some((h, o.value)),
            _ => None,
        })
    }

    /// The printed name of an output (`loss`, the metric's name, `d_<head>`).
    pub fn output_name(&self, o: &Output) -> String {
        match &o.kind {
            OutputKind::Loss => "loss".into(),
            OutputKind::Metric(n) => n.clone(),
            OutputKind::Grad(h) => format!(
                "d_{}",
                self.inputs
                    .get(h.index())
                    .map(|i| i.name.as_str())
                    .unwrap_or("?")
            ),
        }
    }

    /// Number of uses of every node by other nodes and by outputs.
    pub fn use_counts(&self) -> Vec<u32> {
        let mut uses = vec![0u32; self.nodes.len()];
        for n in &self.nodes {
            for a in &n.args {
                if let Some(u) = uses.get_mut(a.index()) {
                    *u += 1;
                }
            }
        }
        for o in &self.outputs {
            if let Some(u) = uses.get_mut(o.value.index()) {
                *u += 1;
            }
        }
        uses
    }
}
