//! Helper functions: plain `fn`s written in the loss language, inlined where a loss (or
//! another helper) calls them.
//!
//! A helper's parameters and result are typed with the level of value they accept: `Value`
//! (any value: any level, f32, a mask or token ids), or one of `Vocab`, `Row`, `Seq`, `Pair`,
//! `Batch` (a value of exactly that level). The body is a loss-language block that sees only
//! its parameters (no loss parameters, no variants); the loss's default mask applies to its
//! reductions. Calls are checked at the call: the argument count, each argument's level
//! against the parameter's, and the result's level against the declared one; recursion is an
//! error. Helpers are found where a proc-macro attribute can see them: the items of one
//! `#[chunked_losses] mod` (the macro door) or of one loss file (the run-time door).

use std::collections::BTreeMap;

use liger_ir::Level;
use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, Pat, ReturnType, Type};

use crate::errors::Errors;

/// The names a helper's parameter and result types may have.
pub const HELPER_TYPES: &[&str] = &["Value", "Vocab", "Row", "Seq", "Pair", "Batch"];

/// One helper.
#[derive(Clone)]
pub struct Helper {
    /// Its name.
    pub ident: Ident,
    /// Parameters: name and the level it accepts (`None`: any).
    pub params: Vec<(Ident, Option<Level>)>,
    /// The level of its result (`None`: any).
    pub ret: Option<Level>,
    /// Its body.
    pub block: syn::Block,
}

/// The helpers one loss can call, by name.
#[derive(Clone, Default)]
pub struct Helpers {
    by_name: BTreeMap<String, Helper>,
    /// Helpers with errors of their own: calls to them add no error.
    broken: std::collections::BTreeSet<String>,
}

impl Helpers {
    /// No helpers (a lone `#[chunked_loss]` fn).
    pub fn none() -> Helpers {
        Helpers::default()
    }

    /// Reads the helper fns `items`, recording every mistake in `errs` (a malformed helper is
    /// left out, so calls to it report "unknown function" only after its own error).
    pub fn analyze<'a>(items: impl IntoIterator<Item = &'a ItemFn>, errs: &mut Errors) -> Helpers {
        let mut h = Helpers::default();
        for f in items {
            let Some(helper) = analyze_one(f, errs) else {
                h.broken.insert(f.sig.ident.to_string());
                continue;
            };
            {
                let name = helper.ident.to_string();
                if h.by_name.contains_key(&name) {
                    errs.push(
                        helper.ident.span(),
                        format!("helper `{name}` is defined twice"),
                    );
                    continue;
                }
                h.by_name.insert(name, helper);
            }
        }
        h
    }

    /// The helper called `name`.
    pub fn get(&self, name: &str) -> Option<&Helper> {
        self.by_name.get(name)
    }

    /// Whether `name` is a helper whose own definition has errors (already reported).
    pub fn is_broken(&self, name: &str) -> bool {
        self.broken.contains(name)
    }

    /// Every helper name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

/// The level a helper type names (`Ok(None)`: `Value`, any level).
fn level_of(ty: &Type) -> Result<Option<Level>, Span> {
    let Type::Path(p) = ty else {
        return Err(ty.span());
    };
    let Some(id) = p.path.get_ident().filter(|_| p.qself.is_none()) else {
        return Err(ty.span());
    };
    Ok(Some(match id.to_string().as_str() {
        "Value" => return Ok(None),
        "Vocab" => Level::Vocab,
        "Row" => Level::Row,
        "Seq" => Level::Seq,
        "Pair" => Level::Pair,
        "Batch" => Level::Batch,
        _ => return Err(ty.span()),
    }))
}

fn type_help() -> String {
    format!(
        "a helper's parameters and result are typed with the level they accept: {}",
        HELPER_TYPES
            .iter()
            .map(|t| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn not_a_type(ty: &Type) -> String {
    let text = quote::quote!(#ty).to_string().replace(' ', "");
    format!("`{text}` is not a helper type: {}", type_help())
}

fn analyze_one(f: &ItemFn, errs: &mut Errors) -> Option<Helper> {
    let before = errs.len();
    let name = f.sig.ident.to_string();
    if liger_ir::op::surface_functions()
        .iter()
        .any(|s| s.name == name)
    {
        errs.push(
            f.sig.ident.span(),
            format!("`{name}` is a function of the loss language: give the helper another name"),
        );
    }
    if let Some(a) = f.attrs.iter().find(|a| !a.path().is_ident("doc")) {
        errs.push(
            a.span(),
            "a helper takes no attributes (a loss is marked `#[chunked_loss]`)",
        );
    }
    let s = &f.sig;
    if !s.generics.params.is_empty() || s.generics.where_clause.is_some() {
        errs.push(
            s.generics.span(),
            "helpers are not generic: type their parameters with a level",
        );
    }
    for (present, span, what) in [
        (s.asyncness.is_some(), s.asyncness.span(), "`async`"),
        (
            !matches!(s.safety, syn::Safety::Default),
            s.fn_token.span(),
            "`unsafe`",
        ),
        (s.constness.is_some(), s.constness.span(), "`const`"),
        (s.abi.is_some(), s.abi.span(), "an ABI"),
        (s.variadic.is_some(), s.variadic.span(), "variadics"),
    ] {
        if present {
            errs.push(span, format!("{what} does not apply to a helper"));
        }
    }
    let mut params = Vec::new();
    for arg in &s.inputs {
        match arg {
            FnArg::Receiver(r) => errs.push(r.span(), "a helper takes values, not `self`"),
            FnArg::Typed(pt) => {
                let ident = match &*pt.pat {
                    Pat::Ident(pi) if pi.subpat.is_none() && pi.by_ref.is_none() => {
                        if let Some(m) = &pi.mutability {
                            errs.push(m.span(), "helper parameters are immutable: remove `mut`");
                        }
                        pi.ident.clone()
                    }
                    other => {
                        errs.push(other.span(), "a helper parameter is a plain name: `x: Row`");
                        continue;
                    }
                };
                match level_of(&pt.ty) {
                    Ok(l) => params.push((ident, l)),
                    Err(sp) => errs.push(sp, not_a_type(&pt.ty)),
                }
            }
        }
    }
    let ret = match &s.output {
        ReturnType::Default => {
            errs.push(
                s.ident.span(),
                format!(
                    "a helper returns a value: add `-> Value` (or a level); {}",
                    type_help()
                ),
            );
            None
        }
        ReturnType::Type(_, ty) => match level_of(ty) {
            Ok(l) => l,
            Err(sp) => {
                errs.push(sp, not_a_type(ty));
                None
            }
        },
    };
    (errs.len() == before).then(|| Helper {
        ident: s.ident.clone(),
        params,
        ret,
        block: (*f.block).clone(),
    })
}
