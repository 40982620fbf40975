//! `#[chunked_loss]`: a loss written as Rust math, checked and lowered at compile time.
//!
//! Pipeline (after thiserror's and serde's derive crates): parse the fn with syn → analyse the
//! signature ([`sig`]) and the variant enums ([`variants`]), collecting every error → lower
//! the body once per specialisation to liger-ir and verify it ([`lower`]) → generate the
//! typed items ([`expand`]). Every error is a `compile_error!` on the user's token, with the
//! generated items still emitted so one mistake gives one error. See SURFACE.md for the
//! language and the items.

use proc_macro::TokenStream;
use syn::spanned::Spanned;

mod errors;
mod expand;
mod lower;
mod sig;
mod variants;

use errors::Errors;
use lower::{Choice, Outcome, Spec};
use sig::Kind;

/// The most specialisations one loss may have.
const MAX_SPECS: usize = 256;

/// Every `when(variant = Value)` of a `#[range]` names a variant parameter and one of its
/// values.
fn check_range_conditions(sig: &sig::Sig, enums: &variants::Enums, errs: &mut Errors) {
    for p in &sig.params {
        for r in &p.ranges {
            let Some((name, value)) = &r.when else {
                continue;
            };
            let target = sig
                .params
                .iter()
                .enumerate()
                .find(|(_, q)| q.ident == *name);
            let (ok, values) = match target {
                Some((_, q)) if matches!(q.kind, Kind::Flag) => (
                    value == "true" || value == "false",
                    "true, false".to_string(),
                ),
                Some((i, q)) if matches!(q.kind, Kind::Enum(_)) => {
                    let vs = enums.get(&i).map(|v| v.as_slice()).unwrap_or(&[]);
                    let names: Vec<String> = vs.iter().map(ToString::to_string).collect();
                    (vs.iter().any(|x| x == value), names.join(", "))
                }
                Some(_) => {
                    errs.push(
                        name.span(),
                        format!("`{name}` is not a `#[variant]` parameter: `when` takes a variant"),
                    );
                    continue;
                }
                None => {
                    errs.push(
                        name.span(),
                        format!("no parameter `{name}` to condition on"),
                    );
                    continue;
                }
            };
            if !ok {
                errs.push(
                    value.span(),
                    format!("`{value}` is not a value of `{name}` ({values})"),
                );
            }
        }
    }
}

/// Compiles a loss fn; see the crate docs and SURFACE.md.
#[proc_macro_attribute]
pub fn chunked_loss(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand_loss(attr.into(), item.into()).into()
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
    let sig = sig::analyze(&item, &mut errs);
    let enums = variants::find(&sig, &mut errs);
    check_range_conditions(&sig, &enums, &mut errs);

    // Every combination of variant values and optional-input presence.
    let mut specs: Vec<Spec> = vec![Spec { choices: vec![] }];
    for (i, p) in sig.params.iter().enumerate() {
        let options: Vec<Choice> = match &p.kind {
            Kind::Flag => vec![Choice::Flag(false), Choice::Flag(true)],
            Kind::Enum(_) => (0..enums.get(&i).map_or(0, Vec::len))
                .map(Choice::Arm)
                .collect(),
            Kind::Input(_) if p.optional => vec![Choice::Present(true), Choice::Present(false)],
            _ => continue,
        };
        if options.is_empty() {
            continue;
        }
        specs = specs
            .into_iter()
            .flat_map(|s| {
                options.iter().map(move |c| {
                    let mut s = s.clone();
                    s.choices.push((i, *c));
                    s
                })
            })
            .collect();
        if specs.len() > MAX_SPECS {
            errs.push(
                sig.ident.span(),
                format!("this loss has more than {MAX_SPECS} specialisations (variants x optional inputs); turn some flags into f32 hyperparameters used with select(…)"),
            );
            specs.truncate(1);
            break;
        }
    }

    let mut lowered = Vec::new();
    if errs.is_empty() {
        for spec in specs {
            let outcome = lower::lower(&sig, &enums, &spec, &mut errs);
            lowered.push((spec, outcome));
        }
        if errs.is_empty()
            && lowered
                .iter()
                .all(|(_, o)| matches!(o, Outcome::Refused(_)))
        {
            errs.push(
                sig.ident.span(),
                "every specialisation unwraps an absent input: give each optional input an `if let Some(x) = …` fallback",
            );
        }
    }
    let ok = errs.is_empty();
    let mut out = errs.to_compile_errors();
    out.extend(expand::expand(&sig, &enums, &lowered, ok));
    out
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
