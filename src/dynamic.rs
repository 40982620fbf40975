//! Losses compiled from source at run time: [`compile_loss`] and [`compile_loss_file`] run the
//! proc macro's own front-end (`liger-lang`) on a loss file and return [`DynLoss`]es that
//! implement [`ChunkedLoss`] exactly as the macro's types do: the same parameter tables, the
//! same specialisations, the same IR text, so the same kernel-cache entries.
//!
//! A loss file holds `#[chunked_loss]` fns, helper fns and `use` items: what the body of a
//! `#[chunked_losses]` module holds. The tables a [`ChunkedLoss`] hands out are `'static`;
//! a run-time loss interns its strings and leaks its tables once per distinct loss text, for
//! the life of the process (as a JIT keeps its code): compiling the same file again leaks
//! nothing new.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use liger_lang::def::{DefaultDef, LossDef};

use crate::Error;
use crate::loss::{ChunkedLoss, DefaultValue, ParamInfo, ParamRange, SpecInfo};

/// A loss compiled from source at run time.
#[derive(Clone, Copy)]
pub struct DynLoss {
    name: &'static str,
    doc: &'static str,
    params: &'static [ParamInfo],
    specs: &'static [SpecInfo],
}

impl std::fmt::Debug for DynLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DynLoss({})", self.name)
    }
}

impl ChunkedLoss for DynLoss {
    fn name(&self) -> &'static str {
        self.name
    }
    fn doc(&self) -> &'static str {
        self.doc
    }
    fn params(&self) -> &'static [ParamInfo] {
        self.params
    }
    fn specializations(&self) -> &'static [SpecInfo] {
        self.specs
    }
}

/// Interned strings: each distinct text leaked once.
fn intern(s: &str) -> &'static str {
    static TABLE: OnceLock<Mutex<std::collections::HashSet<&'static str>>> = OnceLock::new();
    let table = TABLE.get_or_init(Default::default);
    let mut t = match table.lock() {
        Ok(t) => t,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(&k) = t.get(s) {
        return k;
    }
    let k: &'static str = Box::leak(s.to_owned().into_boxed_str());
    t.insert(k);
    k
}

/// The tables of `def`, leaked once per distinct definition.
fn tables(def: &LossDef) -> DynLoss {
    static BUILT: OnceLock<Mutex<HashMap<String, DynLoss>>> = OnceLock::new();
    let key = format!("{def:?}");
    let built = BUILT.get_or_init(Default::default);
    if let Some(d) = built.lock().ok().and_then(|m| m.get(&key).copied()) {
        return d;
    }
    let params: Vec<ParamInfo> = def
        .params
        .iter()
        .map(|p| ParamInfo {
            name: intern(&p.name),
            kind: p.kind,
            optional: p.optional,
            default: match &p.default {
                DefaultDef::None => DefaultValue::None,
                DefaultDef::Float(x) => DefaultValue::Float(*x),
                DefaultDef::Bool(b) => DefaultValue::Bool(*b),
                DefaultDef::Variant(v) => DefaultValue::Variant(intern(v)),
            },
            choices: Box::leak(
                p.choices
                    .iter()
                    .map(|c| intern(c))
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            ),
            type_name: intern(&p.type_text),
            ranges: Box::leak(
                p.ranges
                    .iter()
                    .map(|r| ParamRange {
                        lo: r.lo,
                        hi: r.hi,
                        when: r.when.as_ref().map(|(n, v)| (intern(n), intern(v))),
                    })
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            ),
        })
        .collect();
    let specs: Vec<SpecInfo> = def
        .specs
        .iter()
        .map(|s| SpecInfo {
            choices: Box::leak(
                s.choices
                    .iter()
                    .map(|(n, v)| (intern(n), intern(v)))
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            ),
            ir: s.ir.as_deref().map(intern),
            refused: s.refused.as_deref().map(intern),
        })
        .collect();
    let d = DynLoss {
        name: intern(&def.name),
        doc: intern(&def.doc),
        params: Box::leak(params.into_boxed_slice()),
        specs: Box::leak(specs.into_boxed_slice()),
    };
    if let Ok(mut m) = built.lock() {
        m.insert(key, d);
    }
    d
}

/// Compiles every `#[chunked_loss]` fn of the loss-file text `source` (`origin` names it in
/// diagnostics and in the IR's source locations). Errors are the macro's, rendered against the
/// text with line, column and caret ([`Error::LossSource`]).
pub fn compile_loss(source: &str, origin: &str) -> Result<Vec<DynLoss>, Error> {
    let defs = liger_lang::compile_source(source, origin).map_err(Error::LossSource)?;
    Ok(defs.iter().map(tables).collect())
}

/// [`compile_loss`] of the file at `path`.
pub fn compile_loss_file(path: &str) -> Result<Vec<DynLoss>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.into(),
        why: e.to_string(),
    })?;
    compile_loss(&text, path)
}

/// The loss called `name` among `losses` (the only one when `name` is `None`).
pub fn pick<'a>(
    losses: &'a [DynLoss],
    name: Option<&str>,
    origin: &str,
) -> Result<&'a DynLoss, Error> {
    let names = || losses.iter().map(|l| l.name).collect::<Vec<_>>().join(", ");
    match name {
        Some(n) => losses
            .iter()
            .find(|l| l.name == n)
            .ok_or_else(|| Error::UnknownLoss {
                name: n.into(),
                known: format!("{} (in {origin})", names()),
            }),
        None if losses.len() == 1 => Ok(&losses[0]),
        None => Err(Error::File {
            path: origin.into(),
            why: format!(
                "holds several losses ({}): pick one with --fn NAME",
                names()
            ),
        }),
    }
}
