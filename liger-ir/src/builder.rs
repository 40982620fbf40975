//! Building IR functions with type inference.
//!
//! [`Builder`] appends nodes to a [`LossFn`] and infers each node's type with [`Op::infer`],
//! so every function it builds is well-typed node by node (the verifier still checks the
//! whole-function rules: outputs, the forward group rule, differentiability). Passes
//! (autodiff, simplify) build their output with it too.

use crate::diag::{DiagKind, Diagnostic, Site};
use crate::func::{Input, InputId, InputKind, LossFn, Node, Output, OutputKind, SrcLoc, ValueId};
use crate::op::{Binary, Op, Unary, VocabReduce};
use crate::types::Type;

/// Appends typed nodes to a function.
#[derive(Clone, Debug)]
pub struct Builder {
    f: LossFn,
    loc: Option<SrcLoc>,
}

/// The error of a builder call: one diagnostic.
pub type BuildResult<T> = Result<T, Diagnostic>;

macro_rules! unary_methods {
    ($($(#[$m:meta])* $fname:ident => $op:expr),* $(,)?) => {
        $( $(#[$m])* pub fn $fname(&mut self, x: ValueId) -> BuildResult<ValueId> {
            self.op($op, &[x])
        } )*
    };
}
macro_rules! binary_methods {
    ($($(#[$m:meta])* $fname:ident => $op:expr),* $(,)?) => {
        $( $(#[$m])* pub fn $fname(&mut self, a: ValueId, b: ValueId) -> BuildResult<ValueId> {
            self.op($op, &[a, b])
        } )*
    };
}

impl Builder {
    /// A builder for a new, empty function.
    pub fn new(name: impl Into<String>) -> Self {
        Builder {
            f: LossFn::new(name),
            loc: None,
        }
    }

    /// A builder that continues `f` (its nodes and outputs are kept).
    pub fn from_fn(mut f: LossFn) -> Self {
        f.locs.resize(f.nodes.len(), None);
        Builder { f, loc: None }
    }

    /// The function built so far.
    pub fn func(&self) -> &LossFn {
        &self.f
    }

    /// Sets the source location given to the nodes and outputs added from now on.
    pub fn set_loc(&mut self, loc: Option<SrcLoc>) {
        self.loc = loc;
    }

    /// The type of `v`.
    pub fn ty(&self, v: ValueId) -> Type {
        self.f.ty(v)
    }

    /// Declares an input and returns its value.
    pub fn input(&mut self, name: &str, kind: InputKind) -> BuildResult<ValueId> {
        if self.f.input_by_name(name).is_some() {
            return Err(Diagnostic::new(
                DiagKind::DuplicateName,
                Site::Function,
                format!("input `{name}` is declared twice"),
            ));
        }
        let id = InputId(self.f.inputs.len() as u32);
        self.f.inputs.push(Input {
            name: name.to_string(),
            kind,
        });
        Ok(self.push(Node {
            op: Op::Input(id),
            args: vec![],
            ty: kind.ty(),
        }))
    }

    /// The value of a declared input.
    pub fn input_value(&self, name: &str) -> Option<ValueId> {
        self.f
            .input_by_name(name)
            .and_then(|id| self.f.input_node(id))
    }

    /// Appends `op(args)` after inferring its type.
    pub fn op(&mut self, op: Op, args: &[ValueId]) -> BuildResult<ValueId> {
        if let Op::Input(_) = op {
            return Err(Diagnostic::new(
                DiagKind::Internal,
                Site::Function,
                "inputs are declared with `Builder::input`",
            ));
        }
        let n = self.f.nodes.len() as u32;
        if let Some(bad) = args.iter().find(|a| a.0 >= n) {
            return Err(Diagnostic::new(
                DiagKind::UseBeforeDef,
                Site::Function,
                format!("{bad} is used before its definition"),
            ));
        }
        let tys: Vec<Type> = args.iter().map(|&a| self.f.ty(a)).collect();
        let ty = op
            .infer(&tys)
            .map_err(|(kind, msg)| Diagnostic::new(kind, Site::Node(ValueId(n)), msg))?;
        Ok(self.push(Node {
            op,
            args: args.to_vec(),
            ty,
        }))
    }

    /// Appends a node whose type is already known (used by passes that copy verified nodes).
    pub(crate) fn push(&mut self, node: Node) -> ValueId {
        let id = ValueId(self.f.nodes.len() as u32);
        self.f.nodes.push(node);
        self.f.locs.push(self.loc.clone());
        id
    }

    /// A float literal.
    pub fn constant(&mut self, c: f64) -> ValueId {
        self.push(Node {
            op: Op::Const(c),
            args: vec![],
            ty: Type::f32(crate::Level::Batch),
        })
    }

    unary_methods! {
        /// `-x`.
        neg => Op::Unary(Unary::Neg),
        /// `exp(x)`.
        exp => Op::Unary(Unary::Exp),
        /// `log(x)`.
        log => Op::Unary(Unary::Log),
        /// `sigmoid(x)`.
        sigmoid => Op::Unary(Unary::Sigmoid),
        /// `log_sigmoid(x)`.
        log_sigmoid => Op::Unary(Unary::LogSigmoid),
        /// `log_softmax(z)`.
        log_softmax => Op::LogSoftmax,
        /// `softmax(z)`.
        softmax => Op::Softmax,
        /// `sum_vocab(e)`.
        sum_vocab => Op::VocabReduce(VocabReduce::Sum),
        /// `logsumexp(e)`.
        logsumexp => Op::VocabReduce(VocabReduce::LogSumExp),
        /// `valid(t)`.
        valid => Op::Valid,
        /// `chosen(s)`.
        chosen => Op::Chosen,
        /// `rejected(s)`.
        rejected => Op::Rejected,
    }

    binary_methods! {
        /// `a + b`.
        add => Op::Binary(Binary::Add),
        /// `a - b`.
        sub => Op::Binary(Binary::Sub),
        /// `a * b`.
        mul => Op::Binary(Binary::Mul),
        /// `a / b`.
        div => Op::Binary(Binary::Div),
        /// `logprob(z, t)`.
        logprob => Op::LogProb,
        /// `at_target(e, t)`.
        at_target => Op::AtTarget,
    }

    /// Adds an output.
    fn output(&mut self, kind: OutputKind, value: ValueId) {
        self.f.outputs.push(Output {
            kind,
            value,
            loc: self.loc.clone(),
        });
    }

    /// Marks `v` as the loss.
    pub fn loss(&mut self, v: ValueId) {
        self.output(OutputKind::Loss, v);
    }

    /// Adds a metric.
    pub fn metric(&mut self, name: &str, v: ValueId) {
        self.output(OutputKind::Metric(name.to_string()), v);
    }

    /// Adds the gradient output of a head.
    pub fn grad(&mut self, head: InputId, v: ValueId) {
        self.output(OutputKind::Grad(head), v);
    }

    /// The finished function.
    pub fn finish(self) -> LossFn {
        self.f
    }
}
