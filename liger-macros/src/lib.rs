//! `#[chunked_loss]` and `#[chunked_losses]`: losses written as Rust math, checked and lowered
//! at compile time.
//!
//! A thin wrapper over the front-end library `liger-lang`, which also compiles loss files at
//! run time: parse with syn → `liger_lang::compile_fn` (signature, variant enums, every
//! specialisation lowered to verified IR, helpers inlined) → generate the typed items from the
//! loss's `LossDef` (`expand`). Every error is a `compile_error!` on the user's token, with
//! the generated items still emitted so one mistake gives one error. The language is
//! documented in `docs/language.md` (the `liger::language` rustdoc).

use proc_macro::TokenStream;
use syn::spanned::Spanned;

use liger_lang::source::{split_items, strip_loss_attr};
use liger_lang::{Ctx, Errors, Helpers, compile_fn};

mod expand;

/// Compiles a loss fn: see the language reference (`docs/language.md`, rendered as the
/// `liger::language` module of the `liger` crate).
#[proc_macro_attribute]
pub fn chunked_loss(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand_loss(attr.into(), item.into()).into()
}

/// Compiles every `#[chunked_loss]` fn of a module, with the module's other plain `fn`s as
/// helpers the losses may call (inlined, level-checked at each call). The helpers are removed;
/// every other item of the module stays as written. A loss file given to `liger run --loss`
/// holds exactly what such a module holds.
#[proc_macro_attribute]
pub fn chunked_losses(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand_module(attr.into(), item.into()).into()
}

fn expand_loss(
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    let mut errs = Errors::default();
    if !attr.is_empty() {
        errs.push(attr.span(), "`#[chunked_loss]` takes no arguments");
    }
    let item: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let mut out =
                syn::Error::new(e.span(), "`#[chunked_loss]` applies to a `fn`").to_compile_error();
            if let Ok(i) = syn::parse2::<syn::Item>(item) {
                let (vis, ident) = match &i {
                    syn::Item::Struct(s) => (Some(&s.vis), Some(&s.ident)),
                    syn::Item::Enum(s) => (Some(&s.vis), Some(&s.ident)),
                    _ => (None, None),
                };
                if let (Some(v), Some(id)) = (vis, ident) {
                    out.extend(expand::stub(v, id));
                }
            }
            return out;
        }
    };
    let helpers = Helpers::none();
    let ctx = Ctx {
        helpers: &helpers,
        file: None,
    };
    let compiled = compile_fn(&item, ctx, &mut errs);
    let mut out = errs.to_compile_errors();
    out.extend(expand::expand(&compiled));
    out
}

fn expand_module(
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    let mut errs = Errors::default();
    if !attr.is_empty() {
        errs.push(attr.span(), "`#[chunked_losses]` takes no arguments");
    }
    let mut module: syn::ItemMod = match syn::parse2(item) {
        Ok(m) => m,
        Err(e) => {
            return syn::Error::new(
                e.span(),
                "`#[chunked_losses]` applies to a `mod { … }` holding losses and helper fns",
            )
            .to_compile_error();
        }
    };
    let Some((brace, items)) = module.content.take() else {
        return syn::Error::new(
            module.ident.span(),
            "`#[chunked_losses]` needs the module's items inline: `mod name { … }`",
        )
        .to_compile_error();
    };
    let (losses, helper_fns) = split_items(&items, false, &mut errs);
    let helpers = Helpers::analyze(helper_fns.iter().copied(), &mut errs);
    let ctx = Ctx {
        helpers: &helpers,
        file: None,
    };
    let mut generated = Vec::new();
    for f in &losses {
        let f = strip_loss_attr(f, &mut errs);
        generated.push(expand::expand(&compile_fn(&f, ctx, &mut errs)));
    }
    // Everything but the losses and the helpers stays; a `use` (the prelude, for readers and
    // IDEs) may have no user left once the fns are compiled away.
    let kept: Vec<syn::Item> = items
        .iter()
        .filter(|i| !matches!(i, syn::Item::Fn(_)))
        .cloned()
        .map(|i| match i {
            syn::Item::Use(mut u) => {
                u.attrs.push(syn::parse_quote!(#[allow(unused_imports)]));
                syn::Item::Use(u)
            }
            other => other,
        })
        .collect();
    let errors = errs.to_compile_errors();
    let _ = brace;
    // Outer attributes before `mod`, inner ones (`//!` docs) inside its braces.
    let (inner, outer): (Vec<&syn::Attribute>, Vec<&syn::Attribute>) = module
        .attrs
        .iter()
        .partition(|a| matches!(a.style, syn::AttrStyle::Inner(_)));
    let (vis, unsafety, mod_token, ident) = (
        &module.vis,
        &module.unsafety,
        &module.mod_token,
        &module.ident,
    );
    quote::quote! {
        #(#outer)*
        #vis #unsafety #mod_token #ident {
            #(#inner)*
            #errors
            #(#kept)*
            #(#generated)*
        }
    }
}

#[cfg(test)]
mod tests {
    /// The expansion of a small loss, pretty-printed: the generated items are reviewed like
    /// code when they change (`cargo insta review`).
    fn expanded(item: proc_macro2::TokenStream) -> String {
        let out = super::expand_loss(proc_macro2::TokenStream::new(), item);
        match syn::parse2::<syn::File>(out.clone()) {
            Ok(f) => prettyplease::unparse(&f),
            Err(e) => panic!("the expansion does not parse ({e}):\n{out}"),
        }
    }

    #[test]
    fn expansion_of_a_loss_with_variants_and_an_optional_input() {
        let item: proc_macro2::TokenStream = r#"
            /// A small DPO-like loss.
            pub fn tiny(
                policy: Logits,
                reference: Option<Frozen<Logits>>,
                target: Target,
                #[default(0.1)] beta: f32,
                #[variant] average: bool,
                #[variant] kind: TinyKind,
            ) -> Loss {
                let lp = if average { seq_mean(logprob(policy, target)) } else { seq_sum(logprob(policy, target)) };
                let rf = if let Some(r) = reference { seq_sum(logprob(r, target)) } else { 0.0 * lp };
                let d = beta * ((chosen(lp) - chosen(rf)) - (rejected(lp) - rejected(rf)));
                metric("margin", d);
                match kind {
                    TinyKind::Sigmoid => mean(-log_sigmoid(d)),
                    TinyKind::Square => mean(square(d - 0.5)),
                }
            }
        "#
        .parse()
        .expect("tokens");
        insta::assert_snapshot!(expanded(item));
    }

    #[test]
    fn a_mistake_expands_to_one_error_and_stubs() {
        let item: proc_macro2::TokenStream =
            "pub fn bad(z: Logits, t: Target) -> Loss { mean(unknown_fn(z)) }"
                .parse()
                .expect("tokens");
        let out = super::expand_loss(proc_macro2::TokenStream::new(), item).to_string();
        assert_eq!(out.matches("compile_error").count(), 1, "{out}");
        assert!(out.contains("unknown function `unknown_fn`"), "{out}");
        assert!(
            out.contains("struct Bad"),
            "stub items keep the names: {out}"
        );
    }
}
