//! Collecting compile errors: every problem is recorded on its token and reported at once.
//!
//! The same mistake found while lowering several specialisations is reported once (keyed by
//! span and message).

use std::collections::HashSet;

use proc_macro2::{Span, TokenStream};

/// The errors found so far, in the order found.
#[derive(Default)]
pub struct Errors {
    list: Vec<(Span, String)>,
    seen: HashSet<String>,
}

impl Errors {
    /// Records `msg` at `span` (once).
    pub fn push(&mut self, span: Span, msg: impl Into<String>) {
        let msg = msg.into();
        let key = format!("{span:?}|{msg}");
        if self.seen.insert(key) {
            self.list.push((span, msg));
        }
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Number of errors recorded.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Every error: where and what.
    pub fn iter(&self) -> impl Iterator<Item = (Span, &str)> {
        self.list.iter().map(|(s, m)| (*s, m.as_str()))
    }

    /// `compile_error!` invocations for every error (the proc macro's door).
    pub fn to_compile_errors(&self) -> TokenStream {
        self.list
            .iter()
            .map(|(s, m)| syn::Error::new(*s, m).to_compile_error())
            .collect()
    }
}

/// Levenshtein distance, for "did you mean" suggestions.
pub fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `: did you mean `x`?` for the closest candidate, when one is close (else empty).
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let best = candidates
        .into_iter()
        .map(|c| (distance(name, c), c))
        .filter(|(d, c)| *d <= 2.max(name.len() / 3) && *d < c.len())
        .min_by_key(|(d, _)| *d);
    match best {
        Some((_, c)) => format!(": did you mean `{c}`?"),
        None => String::new(),
    }
}
