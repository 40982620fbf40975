//! The verifier: checks every invariant of a [`LossFn`] and reports all violations at once.
//!
//! Invariants checked, each reported as a [`Diagnostic`] at its node, input or output:
//! 1. **Inputs** (`bad-input`, `duplicate-name`): names are identifiers, unique, and not of the
//!    form `v<digits>` (reserved for values); every input has exactly one `input` node, whose
//!    type is the one its kind fixes.
//! 2. **Definition before use** (`use-before-def`): every operand is an earlier node, so the
//!    arena is topologically ordered and the function is a DAG.
//! 3. **Typing** (`arity`, `dtype-mismatch`, `level-misuse`): each op's operands have the dtypes
//!    and levels its rule ([`crate::Op::infer`]) demands — e.g. `chosen` of a row value,
//!    `seq_sum` of a vocab value, `sum`/`mean` of a vocab value are errors.
//! 4. **Annotations** (`type-annotation`): the recorded type equals the inferred one.
//! 5. **Forward group rule** (`group-dependency`): in the forward (what the loss and metrics
//!    depend on), a vocab-level value may use row-level values of its own row, but nothing
//!    that exists only after the group stage: a seq, pair or batch value derived from logits,
//!    or any value computed from one (see [`after_group`]). Hyperparameters and side inputs
//!    broadcast freely. (The backward may use them.)
//! 6. **Outputs** (`missing-loss`, `multiple-loss`, `output-level`, `duplicate-output`):
//!    exactly one loss, of type `f32[batch]`; metrics are f32 values not at vocab level, with
//!    unique names; at most one gradient per head.
//! 7. **Gradients** (`frozen-gradient`): a `grad` output names a `logits` head (never a
//!    `frozen` head or a non-head input) and is `f32[vocab]`.
//! 8. **Differentiability** (`not-differentiable`): in a forward function (no `grad` outputs),
//!    the loss depends on every `logits` head through differentiable operands (not only
//!    through `argmax`, comparisons, `valid` or `stop_gradient`); otherwise the head should
//!    be declared `frozen`.
//!
//! A node whose operands are broken is not re-checked, so one mistake gives one error.

use std::collections::HashSet;

use crate::diag::{DiagKind, Diagnostic, Diagnostics, Site};
use crate::func::{InputKind, LossFn, OutputKind, ValueId};
use crate::op::Op;
use crate::types::{DType, Level, Type};

/// For every node, whether its value exists only after the group stage: it is a seq, pair or
/// batch value computed from logits, or is computed from one (at any level).
pub fn after_group(f: &LossFn) -> Vec<bool> {
    let n = f.nodes.len();
    let mut from_logits = vec![false; n];
    let mut after = vec![false; n];
    for (i, node) in f.nodes.iter().enumerate() {
        let args = || node.args.iter().filter(|a| a.index() < i);
        from_logits[i] = match node.op {
            Op::Input(id) => f.inputs.get(id.index()).is_some_and(|x| x.kind.is_head()),
            _ => args().any(|a| from_logits[a.index()]),
        };
        after[i] =
            (from_logits[i] && node.ty.level > Level::Row) || args().any(|a| after[a.index()]);
    }
    after
}

/// Checks `f`; `Ok` when every invariant of the module doc holds.
pub fn verify(f: &LossFn) -> Result<(), Diagnostics> {
    let mut d = Vec::new();
    let n = f.nodes.len();
    let mut poisoned = vec![false; n];

    // 1. Inputs.
    let mut seen = HashSet::new();
    let mut input_nodes = vec![0u32; f.inputs.len()];
    for (i, input) in f.inputs.iter().enumerate() {
        let site = Site::Input(crate::InputId(i as u32));
        let reserved = input.name.len() > 1
            && input.name.starts_with('v')
            && input.name[1..].chars().all(|c| c.is_ascii_digit());
        let ident = input
            .name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && input
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident || reserved {
            d.push(Diagnostic::new(
                DiagKind::BadInput,
                site,
                format!(
                    "`{}` cannot name an input: use an identifier that is not of the form v<digits>",
                    input.name
                ),
            ));
        }
        if !seen.insert(input.name.as_str()) {
            d.push(Diagnostic::new(
                DiagKind::DuplicateName,
                site,
                format!("input `{}` is declared twice", input.name),
            ));
        }
    }
    for (i, node) in f.nodes.iter().enumerate() {
        if let Op::Input(id) = node.op {
            let site = Site::Node(ValueId(i as u32));
            match f.inputs.get(id.index()) {
                None => {
                    d.push(Diagnostic::new(
                        DiagKind::BadInput,
                        site,
                        "input node of no input",
                    ));
                    poisoned[i] = true;
                }
                Some(input) => {
                    input_nodes[id.index()] += 1;
                    if node.ty != input.kind.ty() || !node.args.is_empty() {
                        d.push(Diagnostic::new(
                            DiagKind::BadInput,
                            site,
                            format!(
                                "input `{}` of kind {} has type {}, not {}",
                                input.name,
                                input.kind.name(),
                                input.kind.ty(),
                                node.ty
                            ),
                        ));
                    }
                }
            }
        }
    }
    for (i, count) in input_nodes.iter().enumerate() {
        if *count != 1 {
            d.push(Diagnostic::new(
                DiagKind::BadInput,
                Site::Input(crate::InputId(i as u32)),
                format!(
                    "input `{}` has {count} input nodes, not one",
                    f.inputs[i].name
                ),
            ));
        }
    }

    // 2-4. Operands, typing, annotations.
    for (i, node) in f.nodes.iter().enumerate() {
        if let Op::Input(_) = node.op {
            continue;
        }
        let site = Site::Node(ValueId(i as u32));
        let mut ok = true;
        for a in &node.args {
            if a.index() >= n {
                d.push(Diagnostic::new(
                    DiagKind::UseBeforeDef,
                    site,
                    format!("{a} does not exist"),
                ));
                ok = false;
            } else if a.index() >= i {
                d.push(Diagnostic::new(
                    DiagKind::UseBeforeDef,
                    site,
                    format!(
                        "operand {} is used before its definition (at {a}); define values before their uses",
                        node.args.iter().position(|x| x == a).map_or(0, |p| p + 1)
                    ),
                ));
                ok = false;
            } else if poisoned[a.index()] {
                ok = false;
            }
        }
        if !ok {
            poisoned[i] = true;
            continue;
        }
        let tys: Vec<Type> = node.args.iter().map(|a| f.nodes[a.index()].ty).collect();
        match node.op.infer(&tys) {
            Err((kind, msg)) => {
                d.push(Diagnostic::new(kind, site, msg));
                poisoned[i] = true;
            }
            Ok(t) if t != node.ty => {
                d.push(Diagnostic::new(
                    DiagKind::TypeAnnotation,
                    site,
                    format!("annotated {}, but `{}` gives {t}", node.ty, node.op.name()),
                ));
            }
            Ok(_) => {}
        }
    }

    // 6-7. Outputs.
    let losses: Vec<usize> = (0..f.outputs.len())
        .filter(|&k| f.outputs[k].kind == OutputKind::Loss)
        .collect();
    if losses.is_empty() {
        d.push(Diagnostic::new(
            DiagKind::MissingLoss,
            Site::Function,
            "the function has no `loss = …` output",
        ));
    }
    for &k in losses.iter().skip(1) {
        d.push(Diagnostic::new(
            DiagKind::MultipleLoss,
            Site::Output(k),
            "a function has exactly one loss; report other values as metrics",
        ));
    }
    let mut names = HashSet::new();
    let mut grad_heads = HashSet::new();
    for (k, o) in f.outputs.iter().enumerate() {
        let site = Site::Output(k);
        let Some(node) = f.nodes.get(o.value.index()) else {
            d.push(Diagnostic::new(
                DiagKind::UseBeforeDef,
                site,
                format!("{} does not exist", o.value),
            ));
            continue;
        };
        let ty = node.ty;
        if poisoned[o.value.index()] {
            continue;
        }
        match &o.kind {
            OutputKind::Loss => {
                if ty != Type::f32(Level::Batch) {
                    d.push(Diagnostic::new(
                        DiagKind::OutputLevel,
                        site,
                        format!(
                            "the loss must be f32[batch], got {ty}{}",
                            match ty.level {
                                Level::Batch => "",
                                Level::Vocab => ": reduce over the vocab, then with `mean`/`sum`",
                                _ => ": reduce it with `mean` or `sum`",
                            }
                        ),
                    ));
                }
            }
            OutputKind::Metric(m) => {
                if m.is_empty() || m.contains('"') || m.contains('\n') {
                    d.push(Diagnostic::new(
                        DiagKind::BadInput,
                        site,
                        format!("metric name {m:?} is empty or holds a quote or newline"),
                    ));
                }
                if !names.insert(m.clone()) {
                    d.push(Diagnostic::new(
                        DiagKind::DuplicateOutput,
                        site,
                        format!("metric \"{m}\" is reported twice"),
                    ));
                }
                if ty.dtype != DType::F32 || ty.level == Level::Vocab {
                    d.push(Diagnostic::new(
                        DiagKind::OutputLevel,
                        site,
                        format!("metric \"{m}\" is {ty}: metrics are f32 at row level or coarser (reduce over the vocab first)"),
                    ));
                }
            }
            OutputKind::Grad(h) => {
                let Some(input) = f.inputs.get(h.index()) else {
                    d.push(Diagnostic::new(
                        DiagKind::UnknownName,
                        site,
                        "gradient of no input",
                    ));
                    continue;
                };
                if input.kind != InputKind::Logits {
                    let why = if input.kind == InputKind::Frozen {
                        "a frozen head is forward only and has no gradient; declare it `logits` to train it"
                    } else {
                        "only `logits` heads receive gradients"
                    };
                    d.push(Diagnostic::new(
                        DiagKind::FrozenGradient,
                        site,
                        format!(
                            "gradient demanded through `{}` ({}): {why}",
                            input.name,
                            input.kind.name()
                        ),
                    ));
                } else if !grad_heads.insert(*h) {
                    d.push(Diagnostic::new(
                        DiagKind::DuplicateOutput,
                        site,
                        format!("two gradients of `{}`", input.name),
                    ));
                }
                if ty != Type::f32(Level::Vocab) {
                    d.push(Diagnostic::new(
                        DiagKind::OutputLevel,
                        site,
                        format!("a head gradient is f32[vocab], got {ty}"),
                    ));
                }
            }
        }
    }

    if d.iter().any(|x| matches!(x.kind, DiagKind::UseBeforeDef)) {
        return Err(Diagnostics(d));
    }

    // 5. Forward group rule.
    let mut forward = vec![false; n];
    for o in &f.outputs {
        if !matches!(o.kind, OutputKind::Grad(_)) && o.value.index() < n {
            forward[o.value.index()] = true;
        }
    }
    for i in (0..n).rev() {
        if forward[i] {
            for a in &f.nodes[i].args {
                forward[a.index()] = true;
            }
        }
    }
    let after_group = after_group(f);
    for (i, node) in f.nodes.iter().enumerate() {
        if !forward[i] || poisoned[i] || node.ty.level != Level::Vocab {
            continue;
        }
        if let Some(a) = node.args.iter().find(|a| after_group[a.index()]) {
            let at = f.nodes[a.index()].ty.level;
            let how = if at > Level::Row {
                format!("a {at}-level value computed from logits")
            } else {
                "a row-level value computed from a seq, pair or batch reduction of logits".into()
            };
            d.push(Diagnostic::new(
                DiagKind::GroupDependency,
                Site::Node(ValueId(i as u32)),
                format!(
                    "a vocab-level value cannot use {how} in the forward: it exists only after the group stage; use row-level values of the same row, or move the term above the reduction"
                ),
            ));
        }
    }

    // 8. Differentiability from every `logits` head.
    // (A gradient IR is exempt: simplification may have proven a gradient zero.)
    if let Some(loss) = f
        .loss()
        .filter(|l| l.index() < n && f.grads().next().is_none())
    {
        let mut reach = vec![false; n];
        reach[loss.index()] = true;
        for i in (0..n).rev() {
            if reach[i] {
                let node = &f.nodes[i];
                for &p in node.op.differentiable_args() {
                    if let Some(a) = node.args.get(p) {
                        reach[a.index()] = true;
                    }
                }
            }
        }
        for (i, input) in f.inputs.iter().enumerate() {
            if input.kind != InputKind::Logits {
                continue;
            }
            let id = crate::InputId(i as u32);
            if let Some(v) = f.input_node(id)
                && !reach[v.index()]
            {
                d.push(Diagnostic::new(
                        DiagKind::NotDifferentiable,
                        Site::Input(id),
                        format!(
                            "the loss does not depend differentiably on `{}` (only through argmax, comparisons, masks or stop_gradient, or not at all): declare it `frozen`, or use it in the loss",
                            input.name
                        ),
                    ));
            }
        }
    }

    if d.is_empty() {
        Ok(())
    } else {
        Err(Diagnostics(d))
    }
}
