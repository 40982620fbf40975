//! The variants of each `#[variant]` enum, read from the `match` arms on it.
//!
//! Every `match` on an enum parameter must list the same variants, each as `Type::Variant`;
//! `_`, guards and `|` patterns are rejected. The first match fixes the order (the generated
//! enum's declaration order); `#[default(X)]` must name one of them.

use std::collections::BTreeMap;

use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{Expr, Ident, Pat};

use crate::errors::Errors;
use crate::sig::{DefaultVal, Kind, Sig};

/// Variant names per enum parameter index.
pub type Enums = BTreeMap<usize, Vec<Ident>>;

struct Finder<'a> {
    sig: &'a Sig,
    errs: &'a mut Errors,
    found: Enums,
    /// Enum parameters with at least one `match`, well-formed or not.
    matched: std::collections::BTreeSet<usize>,
}

impl Finder<'_> {
    fn param_of(&self, e: &Expr) -> Option<(usize, Ident)> {
        let Expr::Path(p) = e else { return None };
        let id = p.path.get_ident()?;
        let (i, param) = self
            .sig
            .params
            .iter()
            .enumerate()
            .find(|(_, q)| &q.ident == id)?;
        match &param.kind {
            Kind::Enum(ty) => Some((i, ty.clone())),
            _ => None,
        }
    }

    fn arm_variant(&mut self, pat: &Pat, ty: &Ident) -> Option<Ident> {
        match pat {
            Pat::Path(p) if p.qself.is_none() && p.path.segments.len() == 2 => {
                let (t, v) = (&p.path.segments[0].ident, &p.path.segments[1].ident);
                if t != ty {
                    self.errs.push(
                        t.span(),
                        format!("this match is on a `{ty}`: write `{ty}::{v}`"),
                    );
                    return None;
                }
                Some(v.clone())
            }
            Pat::Ident(pi) if pi.subpat.is_none() => {
                self.errs.push(
                    pi.ident.span(),
                    format!(
                        "write the arm as `{ty}::{}` (a bare name would bind any value)",
                        pi.ident
                    ),
                );
                None
            }
            Pat::Wild(w) => {
                self.errs.push(
                    w.span(),
                    format!("`_` arms are not allowed: every `{ty}` variant is an arm, and the macro generates `{ty}` from them"),
                );
                None
            }
            Pat::Guard(g) => {
                self.errs.push(
                    g.if_token.span(),
                    "match guards are not allowed: a variant arm is chosen at compile time; use select(cond, a, b) for data",
                );
                None
            }
            Pat::Or(o) => {
                self.errs.push(
                    o.span(),
                    "`|` patterns are not allowed: give each variant its own arm",
                );
                None
            }
            other => {
                self.errs.push(
                    other.span(),
                    format!("an arm is a variant path such as `{ty}::First`"),
                );
                None
            }
        }
    }
}

impl<'ast> Visit<'ast> for Finder<'_> {
    fn visit_expr_match(&mut self, m: &'ast syn::ExprMatch) {
        if let Some((idx, ty)) = self.param_of(&m.expr) {
            self.matched.insert(idx);
            let mut names: Vec<Ident> = Vec::new();
            let mut ok = true;
            for arm in &m.arms {
                match self.arm_variant(&arm.pat, &ty) {
                    Some(v) => {
                        if names.contains(&v) {
                            self.errs
                                .push(v.span(), format!("`{ty}::{v}` has two arms"));
                            ok = false;
                        } else {
                            names.push(v);
                        }
                    }
                    None => ok = false,
                }
            }
            if ok {
                match self.found.get(&idx) {
                    None => {
                        self.found.insert(idx, names);
                    }
                    Some(prev) => {
                        let mut a: Vec<String> = prev.iter().map(Ident::to_string).collect();
                        let mut b: Vec<String> = names.iter().map(Ident::to_string).collect();
                        a.sort();
                        b.sort();
                        if a != b {
                            self.errs.push(
                                m.match_token.span(),
                                format!(
                                    "every match on `{}` lists the same variants; an earlier one lists {}",
                                    self.sig.params[idx].ident,
                                    a.join(", ")
                                ),
                            );
                        }
                    }
                }
            }
        }
        syn::visit::visit_expr_match(self, m);
    }
}

/// Finds every enum parameter's variants and checks defaults against them.
pub fn find(sig: &Sig, errs: &mut Errors) -> Enums {
    let mut f = Finder {
        sig,
        errs,
        found: Enums::new(),
        matched: Default::default(),
    };
    f.visit_block(&sig.block);
    let (found, matched) = (f.found, f.matched);
    for (i, p) in sig.params.iter().enumerate() {
        let Kind::Enum(ty) = &p.kind else { continue };
        match found.get(&i) {
            None if matched.contains(&i) => {}
            None => errs.push(
                p.ident.span(),
                format!(
                    "`{}` is a `#[variant]` enum but no `match {} {{ {ty}::A => …, {ty}::B => … }}` in the body defines its variants",
                    p.ident, p.ident
                ),
            ),
            Some(vs) => {
                if let Some(DefaultVal::Variant(d)) = &p.default
                    && !vs.contains(d)
                {
                    let names: Vec<String> = vs.iter().map(Ident::to_string).collect();
                    errs.push(
                        d.span(),
                        format!("`{d}` is not a variant of `{ty}` (its arms: {})", names.join(", ")),
                    );
                }
            }
        }
    }
    found
}
