//! Reverse-mode autodiff as an IR → IR pass.
//!
//! `differentiate(f)` returns `f` with one more output per `logits` head: `grad <head>`, the
//! Vocab-level `dL/dlogits` (printed `d_<head>`). Only nodes that depend differentiably on a
//! `logits` head and lie on a path to the loss get an adjoint, so frozen heads, side inputs
//! and metrics cost nothing. Adjoints may be held at a coarser level than their value (an
//! implicit broadcast); an elementwise operand that was broadcast gets its contribution
//! summed back to its own level. The result is unsimplified: run `simplify` after it.

use crate::builder::Builder;
use crate::diag::{DiagKind, Diagnostic, Diagnostics, Site};
use crate::func::{InputKind, LossFn, OutputKind};
use crate::op::Op;
use crate::types::Level;

use super::vjp::{Ctx, vjp};

/// Differentiates `f` (which must verify and have no `grad` outputs yet).
pub fn differentiate(f: &LossFn) -> Result<LossFn, Diagnostics> {
    crate::verify::verify(f)?;
    if f.grads().next().is_some() {
        return Err(Diagnostics(vec![Diagnostic::new(
            DiagKind::Internal,
            Site::Function,
            "the function already has gradient outputs",
        )]));
    }
    let n = f.nodes.len();
    let loss = f.loss().ok_or_else(|| {
        Diagnostics(vec![Diagnostic::new(
            DiagKind::MissingLoss,
            Site::Function,
            "no loss",
        )])
    })?;

    // Forward: which nodes depend differentiably on a `logits` head.
    let mut needs = vec![false; n];
    for (i, node) in f.nodes.iter().enumerate() {
        needs[i] = match node.op {
            Op::Input(id) => f.inputs[id.index()].kind == InputKind::Logits,
            op => op
                .differentiable_args()
                .iter()
                .any(|&k| needs[node.args[k].index()]),
        };
    }

    let mut b = Builder::from_fn(f.clone());
    let mut adj: Vec<Option<crate::ValueId>> = vec![None; n];
    if needs[loss.index()] {
        adj[loss.index()] = Some(b.constant(1.0));
    }
    let internal = |d: Diagnostic| Diagnostics(vec![d]);
    for i in (0..n).rev() {
        let (Some(g), true) = (adj[i], needs[i]) else {
            continue;
        };
        let y = crate::ValueId(i as u32);
        let node = f.nodes[i].clone();
        b.set_loc(f.locs.get(i).cloned().flatten());
        let arg_needs: Vec<bool> = node.args.iter().map(|a| needs[a.index()]).collect();
        let mut cx = Ctx { b: &mut b };
        let contributions = vjp(&mut cx, y, g, &arg_needs).map_err(internal)?;
        for (k, c) in contributions {
            let a = node.args[k];
            let la = f.ty(a).level;
            let lz = node.ty.level;
            let c = if node.op.is_elementwise() && la > lz {
                cx.reduce(c, lz, la).map_err(internal)?
            } else if cx.b.ty(c).level < la {
                return Err(internal(Diagnostic::new(
                    DiagKind::Internal,
                    Site::Node(y),
                    format!(
                        "the VJP of `{}` gave a contribution finer than its operand",
                        node.op.name()
                    ),
                )));
            } else {
                c
            };
            adj[a.index()] = Some(match adj[a.index()] {
                Some(prev) => cx
                    .op(Op::Binary(crate::op::Binary::Add), &[prev, c])
                    .map_err(internal)?,
                None => c,
            });
        }
    }
    b.set_loc(None);
    for (h, input) in f.inputs.iter().enumerate() {
        if input.kind != InputKind::Logits {
            continue;
        }
        let head = crate::InputId(h as u32);
        let Some(v) = f.input_node(head) else {
            continue;
        };
        let mut cx = Ctx { b: &mut b };
        let g = match adj[v.index()] {
            Some(g) => cx.exact(g, Level::Vocab).map_err(internal)?,
            None => {
                let z = cx.b.constant(0.0);
                cx.exact(z, Level::Vocab).map_err(internal)?
            }
        };
        b.grad(head, g);
    }
    let out = b.finish();
    debug_assert!(
        out.outputs
            .iter()
            .filter(|o| o.kind == OutputKind::Loss)
            .count()
            == 1
    );
    crate::verify::verify(&out)?;
    Ok(out)
}
