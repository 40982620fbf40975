//! The signature of a `#[chunked_loss]` fn: parameter kinds, `#[default]`, `#[variant]`.
//!
//! Every problem is recorded on its token; a bad parameter is dropped so the rest can still be
//! checked and the typed items generated (so one mistake gives one error).

use liger_ir::InputKind;
use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Expr, FnArg, GenericArgument, Ident, ItemFn, Lit, Pat, PathArguments, Type, UnOp};

use crate::errors::Errors;

/// What a parameter is.
#[derive(Clone, Debug)]
pub enum Kind {
    /// An input of this kind.
    Input(InputKind),
    /// An f32 hyperparameter.
    Hyper,
    /// A `#[variant] bool`.
    Flag,
    /// A `#[variant]` enum of this type.
    Enum(Ident),
}

/// A `#[default(..)]` value.
#[derive(Clone, Debug)]
pub enum DefaultVal {
    /// A number.
    Float(f64),
    /// `true` / `false`.
    Bool(bool),
    /// An enum variant name.
    Variant(Ident),
}

/// A `#[range(..)]` domain of a hyperparameter: bounds (value, inclusive) and, optionally,
/// the variant value under which it applies.
#[derive(Clone, Debug)]
pub struct RangeAttr {
    /// Lower bound.
    pub lo: Option<(f64, bool)>,
    /// Upper bound.
    pub hi: Option<(f64, bool)>,
    /// `when(param = Value)`: the variant parameter and its value.
    pub when: Option<(Ident, Ident)>,
    /// Where it was written.
    pub span: Span,
}

/// One parameter.
#[derive(Clone, Debug)]
pub struct Param {
    /// Its name.
    pub ident: Ident,
    /// Its kind.
    pub kind: Kind,
    /// `Option<…>`.
    pub optional: bool,
    /// Its default.
    pub default: Option<DefaultVal>,
    /// Its domains (`#[range(..)]`, hyperparameters only).
    pub ranges: Vec<RangeAttr>,
    /// The type as written.
    pub type_text: String,
}

/// The analysed signature.
pub struct Sig {
    /// The fn's visibility.
    pub vis: syn::Visibility,
    /// The fn's name.
    pub ident: Ident,
    /// Its doc comment.
    pub doc: String,
    /// Parameters that are well-formed.
    pub params: Vec<Param>,
    /// The body.
    pub block: syn::Block,
}

const KINDS: &[&str] = &[
    "Logits",
    "Frozen<Logits>",
    "Target",
    "Tokens",
    "RowInput",
    "RowMask",
    "SeqInput",
    "SeqMask",
    "VocabInput",
    "ScalarInput",
    "f32",
    "Option<…>",
    "#[variant] bool",
    "#[variant] YourEnum",
];

fn input_kind(name: &str) -> Option<InputKind> {
    Some(match name {
        "Logits" => InputKind::Logits,
        "Target" => InputKind::Target,
        "Tokens" => InputKind::Tokens,
        "RowInput" => InputKind::RowInput,
        "RowMask" => InputKind::RowMask,
        "SeqInput" => InputKind::SeqInput,
        "SeqMask" => InputKind::SeqMask,
        "VocabInput" => InputKind::VocabInput,
        "ScalarInput" => InputKind::ScalarInput,
        _ => return None,
    })
}

/// The single-segment path type `Name<args>` → (`Name`, args).
fn simple_path(ty: &Type) -> Option<(&Ident, &PathArguments)> {
    match ty {
        Type::Path(p) if p.qself.is_none() && p.path.segments.len() == 1 => {
            let s = &p.path.segments[0];
            Some((&s.ident, &s.arguments))
        }
        Type::Group(g) => simple_path(&g.elem),
        Type::Paren(p) => simple_path(&p.elem),
        _ => None,
    }
}

fn single_type_arg(args: &PathArguments) -> Option<&Type> {
    match args {
        PathArguments::AngleBracketed(a) if a.args.len() == 1 => match &a.args[0] {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        },
        _ => None,
    }
}

/// The kind of an input type (no Option, no f32/bool/enum), or an error message.
fn input_type(ty: &Type) -> Result<InputKind, String> {
    let Some((id, args)) = simple_path(ty) else {
        return Err(format!(
            "unsupported parameter type; a parameter is one of: {}",
            KINDS.join(", ")
        ));
    };
    let name = id.to_string();
    if name == "Frozen" {
        return match single_type_arg(args).and_then(simple_path) {
            Some((inner, PathArguments::None)) if inner == "Logits" => Ok(InputKind::Frozen),
            _ => Err("`Frozen` wraps a head: write `Frozen<Logits>`".into()),
        };
    }
    if !matches!(args, PathArguments::None) {
        return Err(format!("`{name}` takes no generic arguments"));
    }
    input_kind(&name).ok_or_else(|| {
        let hint = crate::errors::suggest(&name, KINDS.iter().copied());
        if hint.is_empty() {
            format!(
                "unknown parameter type `{name}`; a parameter is one of: {}",
                KINDS.join(", ")
            )
        } else {
            format!("unknown parameter type `{name}`{hint}")
        }
    })
}

fn parse_default(attr: &syn::Attribute, errs: &mut Errors) -> Option<(DefaultVal, Span)> {
    let syn::Meta::List(list) = &attr.meta else {
        errs.push(
            attr.path().span(),
            "malformed `#[default]`: write `#[default(0.1)]`, `#[default(true)]` or `#[default(Variant)]`",
        );
        return None;
    };
    let e: Expr = match syn::parse2(list.tokens.clone()) {
        Ok(e) => e,
        Err(_) => {
            errs.push(
                list.tokens.span(),
                "`#[default(..)]` takes one value: a number, `true`/`false` or a variant name",
            );
            return None;
        }
    };
    let num = |e: &Expr| -> Option<f64> {
        match e {
            Expr::Lit(l) => match &l.lit {
                Lit::Float(f) => f.base10_parse::<f64>().ok(),
                Lit::Int(i) => i.base10_parse::<f64>().ok(),
                _ => None,
            },
            _ => None,
        }
    };
    match &e {
        Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => {
            if let Some(x) = num(&u.expr) {
                return Some((DefaultVal::Float(-x), e.span()));
            }
        }
        Expr::Lit(l) => {
            if let Some(x) = num(&e) {
                return Some((DefaultVal::Float(x), e.span()));
            }
            if let Lit::Bool(b) = &l.lit {
                return Some((DefaultVal::Bool(b.value), e.span()));
            }
        }
        Expr::Path(p) if p.qself.is_none() => {
            if let Some(id) = p.path.get_ident() {
                return Some((DefaultVal::Variant(id.clone()), e.span()));
            }
            if p.path.segments.len() == 2 {
                let id = p.path.segments[1].ident.clone();
                return Some((DefaultVal::Variant(id.clone()), id.span()));
            }
        }
        _ => {}
    }
    errs.push(
        e.span(),
        "`#[default(..)]` takes a number, `true`/`false` or a variant name",
    );
    None
}

/// A number literal, possibly negated.
fn number(e: &Expr) -> Option<f64> {
    match e {
        Expr::Lit(l) => match &l.lit {
            Lit::Float(f) => f.base10_parse::<f64>().ok(),
            Lit::Int(i) => i.base10_parse::<f64>().ok(),
            _ => None,
        },
        Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => number(&u.expr).map(|x| -x),
        Expr::Paren(p) => number(&p.expr),
        _ => None,
    }
}

const RANGE_HELP: &str = "write `#[range(0.0..=1.0)]`, `#[range(0.0..1.0)]`, `#[range(gt = 0.0)]`, `#[range(ge = 0.0, lt = 0.5)]`, optionally with `when(variant = Value)`";

/// Parses `#[range(..)]`.
fn parse_range(attr: &syn::Attribute, errs: &mut Errors) -> Option<RangeAttr> {
    let args = match attr
        .parse_args_with(syn::punctuated::Punctuated::<Expr, syn::Token![,]>::parse_terminated)
    {
        Ok(a) => a,
        Err(_) => {
            errs.push(
                attr.path().span(),
                format!("malformed `#[range]`: {RANGE_HELP}"),
            );
            return None;
        }
    };
    let mut r = RangeAttr {
        lo: None,
        hi: None,
        when: None,
        span: attr.path().span(),
    };
    for a in &args {
        match a {
            Expr::Range(rg) => {
                let bound = |e: &Option<Box<Expr>>| -> Result<Option<f64>, Span> {
                    match e {
                        None => Ok(None),
                        Some(e) => number(e).map(Some).ok_or(e.span()),
                    }
                };
                match (bound(&rg.start), bound(&rg.end)) {
                    (Ok(lo), Ok(hi)) => {
                        r.lo = lo.map(|x| (x, true));
                        r.hi = hi.map(|x| (x, matches!(rg.limits, syn::RangeLimits::Closed(_))));
                    }
                    (Err(sp), _) | (_, Err(sp)) => {
                        errs.push(sp, format!("a range bound is a number: {RANGE_HELP}"));
                        return None;
                    }
                }
            }
            Expr::Assign(asg) => {
                let key = match &*asg.left {
                    Expr::Path(p) => p.path.get_ident().map(ToString::to_string),
                    _ => None,
                };
                let Some(x) = number(&asg.right) else {
                    errs.push(
                        asg.right.span(),
                        format!("a bound is a number: {RANGE_HELP}"),
                    );
                    return None;
                };
                match key.as_deref() {
                    Some("gt") => r.lo = Some((x, false)),
                    Some("ge") => r.lo = Some((x, true)),
                    Some("lt") => r.hi = Some((x, false)),
                    Some("le") => r.hi = Some((x, true)),
                    _ => {
                        errs.push(
                            asg.left.span(),
                            format!("a bound is `gt`, `ge`, `lt` or `le`: {RANGE_HELP}"),
                        );
                        return None;
                    }
                }
            }
            Expr::Call(c) if matches!(&*c.func, Expr::Path(p) if p.path.is_ident("when")) => {
                let cond = c.args.first().and_then(|e| match e {
                    Expr::Assign(asg) => {
                        let name = match &*asg.left {
                            Expr::Path(p) => p.path.get_ident().cloned(),
                            _ => None,
                        }?;
                        let value = match &*asg.right {
                            Expr::Path(p) => p.path.segments.last().map(|s| s.ident.clone()),
                            Expr::Lit(l) => match &l.lit {
                                Lit::Bool(b) => Some(Ident::new(
                                    if b.value { "true" } else { "false" },
                                    b.span(),
                                )),
                                _ => None,
                            },
                            _ => None,
                        }?;
                        Some((name, value))
                    }
                    _ => None,
                });
                match (cond, c.args.len()) {
                    (Some(w), 1) => r.when = Some(w),
                    _ => {
                        errs.push(c.span(), "`when` takes one `variant = Value` condition");
                        return None;
                    }
                }
            }
            other => {
                errs.push(other.span(), format!("unknown range syntax: {RANGE_HELP}"));
                return None;
            }
        }
    }
    if r.lo.is_none() && r.hi.is_none() {
        errs.push(
            attr.path().span(),
            format!("`#[range]` gives no bound: {RANGE_HELP}"),
        );
        return None;
    }
    if let (Some((lo, li)), Some((hi, hi_inc))) = (r.lo, r.hi)
        && (lo > hi || (lo == hi && !(li && hi_inc)))
    {
        errs.push(
            attr.path().span(),
            "this range is empty: no value satisfies both bounds",
        );
        return None;
    }
    Some(r)
}

fn doc_of(attrs: &[syn::Attribute]) -> String {
    let mut lines = Vec::new();
    for a in attrs {
        if a.path().is_ident("doc")
            && let syn::Meta::NameValue(nv) = &a.meta
            && let Expr::Lit(l) = &nv.value
            && let Lit::Str(s) = &l.lit
        {
            lines.push(s.value().trim().to_string());
        }
    }
    lines.join("\n").trim().to_string()
}

/// Analyses the fn signature; `None` when it is unusable (no name to generate items for).
pub fn analyze(item: &ItemFn, errs: &mut Errors) -> Sig {
    let sig = &item.sig;
    if let Some(c) = &sig.constness {
        errs.push(c.span(), "a loss cannot be a `const fn`");
    }
    if let Some(a) = &sig.asyncness {
        errs.push(a.span(), "a loss cannot be `async`");
    }
    if let syn::Safety::Unsafe(u) = &sig.safety {
        errs.push(u.span(), "a loss cannot be `unsafe`");
    }
    if let Some(a) = &sig.abi {
        errs.push(a.span(), "a loss cannot have an ABI");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errs.push(
            sig.generics.span(),
            "a loss cannot be generic: its parameters have fixed kinds",
        );
    }
    if let Some(v) = &sig.variadic {
        errs.push(v.span(), "a loss cannot be variadic");
    }
    match &sig.output {
        syn::ReturnType::Type(_, ty)
            if simple_path(ty)
                .is_some_and(|(i, a)| i == "Loss" && matches!(a, PathArguments::None)) => {}
        syn::ReturnType::Type(_, ty) => {
            errs.push(ty.span(), "a `#[chunked_loss]` fn returns `Loss`")
        }
        syn::ReturnType::Default => errs.push(
            sig.ident.span(),
            "a `#[chunked_loss]` fn returns `Loss`: add `-> Loss`",
        ),
    }
    let mut params: Vec<Param> = Vec::new();
    let mut dropped = false;
    for arg in &sig.inputs {
        let pt = match arg {
            FnArg::Receiver(r) => {
                errs.push(r.span(), "a loss is a free fn: remove `self`");
                continue;
            }
            FnArg::Typed(pt) => pt,
        };
        let ident = match &*pt.pat {
            Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => {
                if let Some(m) = &pi.mutability {
                    errs.push(m.span(), "loss parameters are immutable: remove `mut`");
                }
                pi.ident.clone()
            }
            other => {
                errs.push(other.span(), "a loss parameter is a plain name");
                continue;
            }
        };
        if params.iter().any(|p| p.ident == ident) {
            errs.push(
                ident.span(),
                format!("parameter `{ident}` is declared twice"),
            );
            continue;
        }
        let mut default = None;
        let mut variant = None;
        let mut ranges = Vec::new();
        let mut bad_attr = false;
        for a in &pt.attrs {
            if a.path().is_ident("range") {
                match parse_range(a, errs) {
                    Some(r) => ranges.push(r),
                    None => bad_attr = true,
                }
            } else if a.path().is_ident("default") {
                if default.is_some() {
                    errs.push(a.path().span(), "`#[default]` given twice");
                    bad_attr = true;
                }
                match parse_default(a, errs) {
                    Some(d) => default = Some(d),
                    None => bad_attr = true,
                }
            } else if a.path().is_ident("variant") {
                if !matches!(a.meta, syn::Meta::Path(_)) {
                    errs.push(
                        a.path().span(),
                        "`#[variant]` takes no arguments (the choices come from the type)",
                    );
                    bad_attr = true;
                }
                variant = Some(a.path().span());
            } else if a.path().is_ident("doc") {
            } else {
                let name = a
                    .path()
                    .get_ident()
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "…".into());
                errs.push(
                    a.path().span(),
                    format!("unknown attribute `#[{name}]` on a loss parameter: only `#[default(..)]`, `#[range(..)]` and `#[variant]` apply"),
                );
                bad_attr = true;
            }
        }
        let ty = &*pt.ty;
        let type_text = quote::quote!(#ty).to_string().replace(' ', "");
        let (kind, optional) = match simple_path(ty) {
            Some((id, args)) if id == "Option" => match single_type_arg(args) {
                Some(inner) => match simple_path(inner) {
                    Some((i, _)) if i == "f32" => {
                        errs.push(ty.span(), "a hyperparameter is never optional: give it a `#[default(..)]` instead of `Option`");
                        continue;
                    }
                    Some((i, _)) if i == "Option" => {
                        errs.push(ty.span(), "`Option<Option<…>>` is not a parameter kind");
                        continue;
                    }
                    _ => match input_type(inner) {
                        Ok(k) => (Kind::Input(k), true),
                        Err(m) => {
                            errs.push(inner.span(), m);
                            continue;
                        }
                    },
                },
                None => {
                    errs.push(
                        ty.span(),
                        "`Option` wraps one input kind: `Option<SeqInput>`",
                    );
                    continue;
                }
            },
            Some((id, PathArguments::None)) if id == "f32" => (Kind::Hyper, false),
            Some((id, PathArguments::None)) if id == "bool" => {
                if variant.is_none() {
                    errs.push(
                        ty.span(),
                        "a `bool` parameter is a compile-time flag: mark it `#[variant]` (per-row masks are `RowMask`/`SeqMask`)",
                    );
                    continue;
                }
                (Kind::Flag, false)
            }
            Some((id, PathArguments::None))
                if matches!(
                    id.to_string().as_str(),
                    "f64" | "f16" | "bf16" | "i32" | "i64" | "u32" | "usize"
                ) =>
            {
                errs.push(ty.span(), format!("hyperparameters are `f32`, not `{id}`"));
                continue;
            }
            Some((id, PathArguments::None))
                if variant.is_some() && input_kind(&id.to_string()).is_none() && id != "Frozen" =>
            {
                (Kind::Enum(id.clone()), false)
            }
            _ => match input_type(ty) {
                Ok(k) => (Kind::Input(k), false),
                Err(m) => {
                    errs.push(ty.span(), m);
                    continue;
                }
            },
        };
        if let Some(vspan) = variant {
            if matches!(kind, Kind::Hyper) {
                errs.push(vspan, "an `f32` is a hyperparameter, passed at run time without recompiling; `#[variant]` is for `bool` flags and enum choices");
                bad_attr = true;
            } else if matches!(kind, Kind::Input(_)) {
                errs.push(
                    vspan,
                    "`#[variant]` applies to `bool` flags and enum choices, not to inputs",
                );
                bad_attr = true;
            }
        }
        let default = match (default, &kind) {
            (None, _) => None,
            (Some((d @ DefaultVal::Float(_), _)), Kind::Hyper) => Some(d),
            (Some((d @ DefaultVal::Bool(_), _)), Kind::Flag) => Some(d),
            (Some((d @ DefaultVal::Variant(_), _)), Kind::Enum(_)) => Some(d),
            (Some((_, span)), Kind::Hyper) => {
                errs.push(span, format!("`{ident}` is an f32 hyperparameter: its default is a number such as `#[default(0.1)]`"));
                None
            }
            (Some((_, span)), Kind::Flag) => {
                errs.push(span, format!("`{ident}` is a flag: its default is `#[default(true)]` or `#[default(false)]`"));
                None
            }
            (Some((_, span)), Kind::Enum(e)) => {
                errs.push(span, format!("`{ident}` is a `{e}` choice: its default names a variant, e.g. `#[default(First)]`"));
                None
            }
            (Some((_, span)), Kind::Input(_)) => {
                errs.push(
                    span,
                    "inputs have no default; make the parameter `Option<…>` if it may be absent",
                );
                None
            }
        };
        if let (Some(r), false) = (ranges.first(), matches!(kind, Kind::Hyper)) {
            errs.push(
                r.span,
                format!("`#[range]` applies to f32 hyperparameters; `{ident}` is not one"),
            );
            bad_attr = true;
        }
        if let (Some(DefaultVal::Float(d)), Some(r)) =
            (&default, ranges.iter().find(|r| r.when.is_none()))
        {
            let ok =
                r.lo.is_none_or(|(lo, inc)| if inc { *d >= lo } else { *d > lo })
                    && r.hi
                        .is_none_or(|(hi, inc)| if inc { *d <= hi } else { *d < hi });
            if !ok {
                errs.push(
                    r.span,
                    format!("the default {d:?} of `{ident}` is outside its range"),
                );
                bad_attr = true;
            }
        }
        if bad_attr {
            dropped = true;
            continue;
        }
        params.push(Param {
            ident,
            kind,
            optional,
            default,
            ranges,
            type_text,
        });
    }
    dropped |= params.len() < sig.inputs.len();
    if !dropped
        && !params
            .iter()
            .any(|p| matches!(p.kind, Kind::Input(InputKind::Logits)))
    {
        errs.push(
            sig.ident.span(),
            "a loss needs a `Logits` parameter: the head whose gradient it computes",
        );
    }
    Sig {
        vis: item.vis.clone(),
        ident: sig.ident.clone(),
        doc: doc_of(&item.attrs),
        params,
        block: (*item.block).clone(),
    }
}
