//! The run-time door: a loss file (`.rs` text holding `#[chunked_loss]` fns, helper fns and
//! `use` items, as the body of a `#[chunked_losses]` module would) compiled to [`LossDef`]s
//! with the proc macro's own front-end, so both doors give the same IR and the same
//! diagnostics. Errors are rendered against the file with its path, line, column and a caret
//! (annotate-snippets, the renderer rustc's own diagnostics come from).

use std::fmt;

use annotate_snippets::{AnnotationKind, Level, Renderer, Snippet};
use proc_macro2::{LineColumn, Span};
use syn::spanned::Spanned;
use syn::{Item, ItemFn};

use crate::compile::compile_fn;
use crate::def::LossDef;
use crate::errors::Errors;
use crate::helpers::Helpers;
use crate::lower::Ctx;

/// One error in a loss file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceDiagnostic {
    /// What is wrong and what to do.
    pub message: String,
    /// 1-based line of its first character.
    pub line: usize,
    /// 1-based column (in characters) of its first character.
    pub column: usize,
}

/// Every error found in a loss file, with the rendered report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceErrors {
    /// The file's name as given.
    pub origin: String,
    /// The errors, in the order found.
    pub diagnostics: Vec<SourceDiagnostic>,
    /// Every error rendered against the source (path, line, column, caret).
    pub rendered: String,
}

impl fmt::Display for SourceErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.rendered.trim_end())
    }
}

impl std::error::Error for SourceErrors {}

/// Whether `attr` is `#[chunked_loss]` (or a path ending in it, `#[liger::chunked_loss]`).
pub fn is_loss_attr(attr: &syn::Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "chunked_loss")
}

/// The losses and helpers among `items`, in order; other items are errors when `strict`
/// (a loss file) and left alone otherwise (a module, whose other items stay Rust).
pub fn split_items<'a>(
    items: &'a [Item],
    strict: bool,
    errs: &mut Errors,
) -> (Vec<&'a ItemFn>, Vec<&'a ItemFn>) {
    let (mut losses, mut helpers) = (Vec::new(), Vec::new());
    for item in items {
        match item {
            Item::Fn(f) if f.attrs.iter().any(is_loss_attr) => losses.push(f),
            Item::Fn(f) => helpers.push(f),
            Item::Use(_) => {}
            other if strict => errs.push(
                other.span(),
                "a loss file holds `#[chunked_loss]` fns, helper fns and `use` items only",
            ),
            _ => {}
        }
    }
    (losses, helpers)
}

/// The loss fn with its `#[chunked_loss]` attribute taken off (as the compiler hands it to the
/// proc macro), after checking the attribute takes no arguments.
pub fn strip_loss_attr(f: &ItemFn, errs: &mut Errors) -> ItemFn {
    let mut f = f.clone();
    for a in f.attrs.iter().filter(|a| is_loss_attr(a)) {
        // On the arguments, where the macro door (which receives only them) reports it.
        let args = match &a.meta {
            syn::Meta::Path(_) => continue,
            syn::Meta::List(l) => l.tokens.span(),
            syn::Meta::NameValue(nv) => nv.value.span(),
        };
        errs.push(args, "`#[chunked_loss]` takes no arguments");
    }
    f.attrs.retain(|a| !is_loss_attr(a));
    f
}

/// Compiles every loss of the loss file `text` (named `origin` in diagnostics and in the IR's
/// source locations).
pub fn compile_source(text: &str, origin: &str) -> Result<Vec<LossDef>, SourceErrors> {
    let mut errs = Errors::default();
    let file = match syn::parse_file(text) {
        Ok(f) => f,
        Err(e) => {
            // The lexer's own message for unbalanced delimiters says nothing useful; find them.
            if let Some((at, msg)) = unbalanced(text) {
                return Err(render_at(text, origin, at, &msg));
            }
            for one in e {
                errs.push(one.span(), one.to_string());
            }
            return Err(render(text, origin, &errs));
        }
    };
    let (losses, helper_fns) = split_items(&file.items, true, &mut errs);
    let helpers = Helpers::analyze(helper_fns, &mut errs);
    let ctx = Ctx {
        helpers: &helpers,
        file: Some(origin),
    };
    let mut defs: Vec<LossDef> = Vec::new();
    for f in &losses {
        let f = strip_loss_attr(f, &mut errs);
        let compiled = compile_fn(&f, ctx, &mut errs);
        let def = compiled.def();
        if defs.iter().any(|d| d.name == def.name) {
            errs.push(
                f.sig.ident.span(),
                format!("loss `{}` is defined twice", def.name),
            );
        }
        defs.push(def);
    }
    if losses.is_empty() && errs.is_empty() {
        errs.push(
            Span::call_site(),
            "no `#[chunked_loss]` fn in this file: mark each loss with `#[chunked_loss]`",
        );
    }
    if errs.is_empty() {
        Ok(defs)
    } else {
        Err(render(text, origin, &errs))
    }
}

/// The byte offset of `at` in `text` (`LineColumn`: 1-based line, 0-based column in chars);
/// `None` for a position outside the text (a span with no location).
fn offset(text: &str, starts: &[usize], at: LineColumn) -> Option<usize> {
    let start = *starts.get(at.line.checked_sub(1)?)?;
    let line = &text[start..];
    let line = &line[..line.find('\n').unwrap_or(line.len())];
    let within = line
        .char_indices()
        .nth(at.column)
        .map_or(line.len(), |(b, _)| b);
    Some(start + within)
}

/// Every error of `errs` rendered against `text`.
pub fn render(text: &str, origin: &str, errs: &Errors) -> SourceErrors {
    let mut starts = vec![0];
    starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
    let renderer = Renderer::plain();
    let mut rendered = String::new();
    let mut diagnostics = Vec::new();
    for (span, msg) in errs.iter() {
        let (s, e) = (span.start(), span.end());
        diagnostics.push(SourceDiagnostic {
            message: msg.to_string(),
            line: s.line,
            column: s.column + 1,
        });
        let report = match offset(text, &starts, s) {
            Some(a) => {
                let b = offset(text, &starts, e)
                    .filter(|b| *b > a)
                    .unwrap_or_else(|| a + text[a..].chars().next().map_or(0, char::len_utf8));
                let title = Level::ERROR.primary_title(msg);
                let snippet = Snippet::source(text)
                    .path(origin)
                    .annotation(AnnotationKind::Primary.span(a..b));
                renderer.render(&[title.element(snippet)])
            }
            None => format!("error: {msg}\n --> {origin}"),
        };
        rendered.push_str(&report);
        rendered.push_str("\n\n");
    }
    SourceErrors {
        origin: origin.to_string(),
        diagnostics,
        rendered,
    }
}

/// The first unbalanced delimiter of `text` (skipping comments, string and char literals): its
/// byte offset and what is wrong.
pub fn unbalanced(text: &str) -> Option<(usize, String)> {
    let b = text.as_bytes();
    let mut stack: Vec<(u8, usize)> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while i < b.len() && depth > 0 {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 1;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 1;
                    }
                    i += 1;
                }
                continue;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'\'' if b.get(i + 2) == Some(&b'\'') => i += 2,
            c @ (b'(' | b'[' | b'{') => stack.push((c, i)),
            c @ (b')' | b']' | b'}') => {
                let open = match c {
                    b')' => b'(',
                    b']' => b'[',
                    _ => b'{',
                };
                match stack.pop() {
                    Some((o, _)) if o == open => {}
                    Some((o, at)) => {
                        let (line, col) = line_col(text, at);
                        return Some((
                            i,
                            format!(
                                "mismatched `{}`: the `{}` opened at line {line}, column {col} is not closed",
                                c as char, o as char
                            ),
                        ));
                    }
                    None => {
                        return Some((i, format!("unmatched `{}`: nothing to close", c as char)));
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    stack
        .pop()
        .map(|(o, at)| (at, format!("unclosed `{}`", o as char)))
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// One error at byte offset `at`.
fn render_at(text: &str, origin: &str, at: usize, msg: &str) -> SourceErrors {
    let (line, column) = line_col(text, at);
    let end = at + text[at..].chars().next().map_or(0, char::len_utf8);
    let report = Renderer::plain().render(&[Level::ERROR.primary_title(msg).element(
        Snippet::source(text)
            .path(origin)
            .annotation(AnnotationKind::Primary.span(at..end)),
    )]);
    SourceErrors {
        origin: origin.to_string(),
        diagnostics: vec![SourceDiagnostic {
            message: msg.to_string(),
            line,
            column,
        }],
        rendered: report + "\n",
    }
}
