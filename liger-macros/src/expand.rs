//! Generating the items of a loss `fn name(…)` (`docs/language.md`, "Generated items"):
//!
//! - `Name`: a unit type implementing `liger::ChunkedLoss` (name, doc, parameter table, every
//!   specialisation with its IR text or the input that refuses it) with `Name::reference`;
//! - one enum per `#[variant]` enum parameter, variants in arm order, `Default` from
//!   `#[default(..)]` or the first arm, with `ALL`, `name()` and `FromStr`;
//! - `NameParams`: hyperparameters and variants; `Default` when every field has one, else
//!   `NameParams::new(required…)`;
//! - `NameInputs<'a>`: one field per input, heads as `liger::Head`, `Option` for optional
//!   inputs, so a missing input is a compile error.
//!
//! On errors the same items are generated with an empty specialisation table, next to the
//! `compile_error!`s, so code using them does not add errors of its own.

use liger_lang::Compiled;
use liger_lang::def::{DefaultDef, LossDef};
use liger_lang::sig::{DefaultVal, Kind};
use liger_lang::table::ParamKind;
use proc_macro2::{Literal, Span, TokenStream};
use quote::{format_ident, quote};
use syn::Ident;

/// `grpo_dapo` → `GrpoDapo`.
pub fn camel(s: &str) -> String {
    s.split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// `::liger::ParamKind::X` for kind `k` (every kind named, so a new kind is a compile error
/// here).
fn kind_tokens(k: ParamKind) -> TokenStream {
    let v = match k {
        ParamKind::Logits => quote!(Logits),
        ParamKind::Frozen => quote!(Frozen),
        ParamKind::Target => quote!(Target),
        ParamKind::Tokens => quote!(Tokens),
        ParamKind::RowInput => quote!(RowInput),
        ParamKind::RowMask => quote!(RowMask),
        ParamKind::SeqInput => quote!(SeqInput),
        ParamKind::SeqMask => quote!(SeqMask),
        ParamKind::VocabInput => quote!(VocabInput),
        ParamKind::ScalarInput => quote!(ScalarInput),
        ParamKind::Hyper => quote!(Hyper),
        ParamKind::VariantBool => quote!(VariantBool),
        ParamKind::VariantEnum => quote!(VariantEnum),
    };
    quote!(::liger::ParamKind::#v)
}

/// The generated items of a compiled fn; the tables come from its [`LossDef`], the same data
/// a loss file compiled at run time is described by.
pub fn expand(c: &Compiled) -> TokenStream {
    let (sig, enums) = (&c.sig, &c.enums);
    let def: LossDef = c.def();
    let vis = &sig.vis;
    let fname = def.name.clone();
    let ty = format_ident!("{}", camel(&fname), span = sig.ident.span());
    let params_ty = format_ident!("{}Params", ty);
    let inputs_ty = format_ident!("{}Inputs", ty);
    let doc = def.doc.clone();

    // Variant enums.
    let mut enum_items = Vec::new();
    for (i, p) in sig.params.iter().enumerate() {
        let Kind::Enum(ety) = &p.kind else { continue };
        let variants: Vec<Ident> = enums.get(&i).cloned().unwrap_or_default();
        let default_idx = match &p.default {
            Some(DefaultVal::Variant(d)) => variants.iter().position(|v| v == d).unwrap_or(0),
            _ => 0,
        };
        let names: Vec<String> = variants.iter().map(ToString::to_string).collect();
        let decls = variants.iter().enumerate().map(|(k, v)| {
            if k == default_idx {
                quote!(#[default] #v)
            } else {
                quote!(#v)
            }
        });
        let edoc = format!(
            "The choices of `{}` of [`{ty}`] (one specialisation each).",
            p.ident
        );
        let default_derive = if variants.is_empty() {
            quote!()
        } else {
            quote!(Default,)
        };
        enum_items.push(quote! {
            #[doc = #edoc]
            #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, #default_derive)]
            #vis enum #ety { #(#[allow(missing_docs)] #decls),* }
            impl #ety {
                /// Every variant, in arm order.
                pub const ALL: &'static [#ety] = &[#(#ety::#variants),*];
                /// The variant's name.
                pub fn name(self) -> &'static str {
                    match self { #(#ety::#variants => #names),* }
                }
            }
            impl ::std::str::FromStr for #ety {
                type Err = ::liger::Error;
                fn from_str(s: &str) -> ::std::result::Result<Self, ::liger::Error> {
                    Self::ALL.iter().copied().find(|v| ::liger::params::same_choice(v.name(), s)).ok_or_else(|| {
                        ::liger::Error::BadVariant {
                            param: ::std::string::String::from(stringify!(#ety)),
                            value: ::std::string::String::from(s),
                            allowed: Self::ALL.iter().map(|v| v.name()).collect::<::std::vec::Vec<_>>().join(", "),
                        }
                    })
                }
            }
        });
    }

    // Parameter table.
    let infos = def.params.iter().map(|p| {
        let name = &p.name;
        let kind = kind_tokens(p.kind);
        let optional = p.optional;
        let default = match &p.default {
            DefaultDef::Float(x) => {
                let lit = Literal::f32_suffixed(*x);
                quote!(::liger::DefaultValue::Float(#lit))
            }
            DefaultDef::Bool(b) => quote!(::liger::DefaultValue::Bool(#b)),
            DefaultDef::Variant(v) => quote!(::liger::DefaultValue::Variant(#v)),
            DefaultDef::None => quote!(::liger::DefaultValue::None),
        };
        let choices = &p.choices;
        let type_text = &p.type_text;
        let bound = |b: Option<(f32, bool)>| match b {
            Some((x, inc)) => quote!(::std::option::Option::Some((#x, #inc))),
            None => quote!(::std::option::Option::None),
        };
        let ranges = p.ranges.iter().map(|r| {
            let (lo, hi) = (bound(r.lo), bound(r.hi));
            let when = match &r.when {
                Some((n, v)) => quote!(::std::option::Option::Some((#n, #v))),
                None => quote!(::std::option::Option::None),
            };
            quote!(::liger::ParamRange { lo: #lo, hi: #hi, when: #when })
        });
        quote! {
            ::liger::ParamInfo {
                name: #name, kind: #kind, optional: #optional, default: #default,
                choices: &[#(#choices),*], type_name: #type_text, ranges: &[#(#ranges),*],
            }
        }
    });

    // Specialisations.
    let spec_items = def.specs.iter().map(|spec| {
        let choices = spec.choices.iter().map(|(n, v)| quote!((#n, #v)));
        let opt = |x: &Option<String>| match x {
            Some(t) => quote!(::std::option::Option::Some(#t)),
            None => quote!(::std::option::Option::None),
        };
        let (ir, refused) = (opt(&spec.ir), opt(&spec.refused));
        quote!(::liger::SpecInfo { choices: &[#(#choices),*], ir: #ir, refused: #refused })
    });

    // Params struct.
    let mut fields = Vec::new();
    let mut defaults = Vec::new();
    let mut required = Vec::new();
    let mut to_set = Vec::new();
    for (i, p) in sig.params.iter().enumerate() {
        let id = &p.ident;
        let name = id.to_string();
        match &p.kind {
            Kind::Hyper => {
                let fdoc = format!(
                    "Hyperparameter `{name}` (a kernel argument: changing it never recompiles)."
                );
                fields.push(quote!(#[doc = #fdoc] pub #id: f32));
                match &p.default {
                    Some(DefaultVal::Float(x)) => {
                        let lit = Literal::f32_suffixed(*x as f32);
                        defaults.push(quote!(#id: #lit));
                    }
                    _ => required.push(id.clone()),
                }
                to_set.push(quote!(let s = s.float(#name, self.#id);));
            }
            Kind::Flag => {
                let fdoc = format!("Variant flag `{name}` (a specialisation).");
                fields.push(quote!(#[doc = #fdoc] pub #id: bool));
                let b = matches!(p.default, Some(DefaultVal::Bool(true)));
                defaults.push(quote!(#id: #b));
                to_set.push(
                    quote!(let s = s.variant(#name, if self.#id { "true" } else { "false" });),
                );
            }
            Kind::Enum(ety) => {
                let fdoc = format!("Variant choice `{name}` (a specialisation).");
                fields.push(quote!(#[doc = #fdoc] pub #id: #ety));
                if enums.get(&i).is_some_and(|v| !v.is_empty()) {
                    defaults.push(quote!(#id: <#ety as ::std::default::Default>::default()));
                } else {
                    required.push(id.clone());
                }
                to_set.push(quote!(let s = s.variant(#name, self.#id.name());));
            }
            Kind::Input(_) => {}
        }
    }
    let pdoc = format!("Hyperparameters and variants of [`{ty}`].");
    let params_impl = if required.is_empty() {
        quote! {
            impl ::std::default::Default for #params_ty {
                fn default() -> Self { Self { #(#defaults),* } }
            }
        }
    } else {
        let tys = required.iter().map(|r| {
            let p = sig.params.iter().find(|p| &p.ident == r);
            match p.map(|p| &p.kind) {
                Some(Kind::Enum(e)) => quote!(#e),
                _ => quote!(f32),
            }
        });
        quote! {
            impl #params_ty {
                /// Parameters with defaults where the loss declares them; the others given here.
                pub fn new(#(#required: #tys),*) -> Self { Self { #(#required,)* #(#defaults),* } }
            }
        }
    };

    // Inputs struct.
    let mut in_fields = Vec::new();
    let mut in_set = Vec::new();
    for p in &sig.params {
        let Kind::Input(k) = &p.kind else { continue };
        let id = &p.ident;
        let name = id.to_string();
        let (fty, wrap) = if k.is_head() {
            (quote!(::liger::Head<'a>), quote!(::liger::InputValue::Head))
        } else {
            (
                quote!(::liger::TensorView<'a>),
                quote!(::liger::InputValue::Tensor),
            )
        };
        let fdoc = format!("Input `{name}` ({}).", p.type_text);
        if p.optional {
            in_fields.push(quote!(#[doc = #fdoc] pub #id: ::std::option::Option<#fty>));
            in_set.push(quote!(if let ::std::option::Option::Some(v) = &self.#id { s.insert(#name, #wrap(v.clone())); }));
        } else {
            in_fields.push(quote!(#[doc = #fdoc] pub #id: #fty));
            in_set.push(quote!(s.insert(#name, #wrap(self.#id.clone()));));
        }
    }
    let idoc = format!("Inputs of [`{ty}`], one field per input parameter.");

    quote! {
        #[doc = #doc]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        #vis struct #ty;

        #(#enum_items)*

        #[doc = #pdoc]
        #[derive(Clone, Debug, PartialEq)]
        #vis struct #params_ty { #(#fields),* }

        #params_impl

        impl #params_ty {
            /// The values by name, for the untyped API.
            pub fn to_param_set(&self) -> ::liger::ParamSet {
                let s = ::liger::ParamSet::new();
                #(#to_set)*
                s
            }
        }

        #[doc = #idoc]
        #[derive(Clone, Debug, PartialEq)]
        #vis struct #inputs_ty<'a> { #(#in_fields),* }

        impl<'a> #inputs_ty<'a> {
            /// The inputs by name, for the untyped API.
            pub fn to_input_set(&self) -> ::liger::InputSet<'a> {
                let mut s = ::liger::InputSet::new();
                #(#in_set)*
                s
            }
        }

        impl ::liger::ChunkedLoss for #ty {
            fn name(&self) -> &'static str { #fname }
            fn doc(&self) -> &'static str { #doc }
            fn params(&self) -> &'static [::liger::ParamInfo] {
                const PARAMS: &[::liger::ParamInfo] = &[#(#infos),*];
                PARAMS
            }
            fn specializations(&self) -> &'static [::liger::SpecInfo] {
                const SPECS: &[::liger::SpecInfo] = &[#(#spec_items),*];
                SPECS
            }
        }

        impl #ty {
            /// Runs the loss on `runtime` (chunked, never materialising the logits): loss,
            /// metrics, head gradients and a report of the schedule that ran.
            pub fn run(
                &self,
                runtime: &::liger::Runtime,
                inputs: &#inputs_ty<'_>,
                params: &#params_ty,
                options: &::liger::RunOptions,
            ) -> ::std::result::Result<::liger::LossOutput, ::liger::Error> {
                ::liger::run(self, runtime, &inputs.to_input_set(), &params.to_param_set(), options)
            }

            /// Evaluates the loss, its metrics and head gradients with the f64 reference
            /// interpreter (`liger::reference`): exact and slow, the oracle for executors.
            pub fn reference(
                &self,
                inputs: &#inputs_ty<'_>,
                params: &#params_ty,
                ignore_index: i64,
            ) -> ::std::result::Result<::liger::reference::Output, ::liger::Error> {
                ::liger::reference::evaluate(self, &inputs.to_input_set(), &params.to_param_set(), ignore_index)
            }
        }
    }
}

/// Items for a fn whose signature could not be read at all: just the loss type.
pub fn stub(vis: &syn::Visibility, ident: &Ident) -> TokenStream {
    let ty = format_ident!("{}", camel(&ident.to_string()), span = Span::call_site());
    quote!(#[allow(dead_code)] #vis struct #ty;)
}
