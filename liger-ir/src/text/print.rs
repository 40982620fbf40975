//! The printer: `LossFn` → canonical `.lir` text.

use std::fmt::Write;

use crate::func::{LossFn, OutputKind, ValueId};
use crate::op::Op;

/// Column at which source-location comments start (when the instruction is shorter).
const LOC_COLUMN: usize = 44;

struct Names {
    names: Vec<String>,
}

impl Names {
    /// Inputs by their names (`in<k>` when anonymous), every other node `v<arena index>` —
    /// the numbering [`ValueId`]'s `Display`, diagnostics and the CUDA comments use too.
    fn new(f: &LossFn, anonymous: bool) -> Names {
        let taken: std::collections::HashSet<&str> =
            f.inputs.iter().map(|i| i.name.as_str()).collect();
        let names = f
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| match n.op {
                Op::Input(id) if anonymous => format!("in{}", id.0),
                Op::Input(id) => f
                    .inputs
                    .get(id.index())
                    .map(|i| i.name.clone())
                    .unwrap_or_else(|| format!("in{}", id.0)),
                _ => {
                    let name = ValueId(i as u32).to_string();
                    // An (invalid) input called like a value: keep printing unambiguous.
                    if !anonymous && taken.contains(name.as_str()) {
                        format!("_{name}")
                    } else {
                        name
                    }
                }
            })
            .collect();
        Names { names }
    }

    fn get(&self, v: ValueId) -> String {
        self.names
            .get(v.index())
            .cloned()
            .unwrap_or_else(|| format!("<bad {}>", v.0))
    }
}

fn write_fn(f: &LossFn, anonymous: bool) -> String {
    let names = Names::new(f, anonymous);
    let mut out = String::new();
    let name = if anonymous || f.name.is_empty() {
        "_"
    } else {
        f.name.as_str()
    };
    let _ = writeln!(out, "{}", super::HEADER);
    let _ = writeln!(out, "loss {name} {{");
    let line = |out: &mut String, body: String, loc: Option<&crate::SrcLoc>| match loc {
        Some(l) if !anonymous => {
            let pad = LOC_COLUMN.saturating_sub(body.len() + 2).max(1);
            let _ = writeln!(out, "  {body}{}; @{l}", " ".repeat(pad));
        }
        _ => {
            let _ = writeln!(out, "  {body}");
        }
    };
    for (i, n) in f.nodes.iter().enumerate() {
        let loc = f.locs.get(i).and_then(|l| l.as_ref());
        let body = match n.op {
            Op::Input(id) => {
                let kind = f
                    .inputs
                    .get(id.index())
                    .map(|i| i.kind.name())
                    .unwrap_or("?");
                format!("input {}: {kind}", names.get(ValueId(i as u32)))
            }
            op => {
                let mut s = format!("{}: {} = ", names.get(ValueId(i as u32)), n.ty);
                match op {
                    Op::Const(c) => {
                        let _ = write!(s, "const {c:?}");
                    }
                    _ => s.push_str(&op.name()),
                }
                for (k, a) in n.args.iter().enumerate() {
                    s.push_str(if k == 0 { " " } else { ", " });
                    s.push_str(&names.get(*a));
                }
                s
            }
        };
        line(&mut out, body, loc);
    }
    for (k, o) in f.outputs.iter().enumerate() {
        let v = names.get(o.value);
        let body = match &o.kind {
            OutputKind::Loss => format!("loss = {v}"),
            OutputKind::Metric(_) if anonymous => format!("metric \"#{k}\" = {v}"),
            OutputKind::Metric(m) => format!("metric \"{m}\" = {v}"),
            OutputKind::Grad(h) => {
                let head = if anonymous {
                    format!("in{}", h.0)
                } else {
                    f.inputs
                        .get(h.index())
                        .map(|i| i.name.clone())
                        .unwrap_or_default()
                };
                format!("grad {head} = {v}")
            }
        };
        line(&mut out, body, o.loc.as_ref());
    }
    out.push_str("}\n");
    out
}

/// The names the printer gives every node of `f` (input names, `v<n>` for the others).
pub fn value_names(f: &LossFn) -> Vec<String> {
    Names::new(f, false).names
}

/// Prints `f` in the canonical text form, with names and source locations.
pub fn print(f: &LossFn) -> String {
    write_fn(f, false)
}

/// The text that defines the IR's identity: the canonical form with the function's name,
/// input and metric names and all source locations left out. Two functions that differ only
/// in those print the same here (the kernel cache hashes this text).
pub fn canonical_text(f: &LossFn) -> String {
    write_fn(f, true)
}
