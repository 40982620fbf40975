//! The parser: `.lir` text → `LossFn`, collecting every error with its line.
//!
//! Parsing is two passes over the lines: the first records every definition (inputs and
//! values, in order), the second resolves operands. Syntax errors, unknown names and duplicate
//! definitions are parse errors; everything semantic (levels, dtypes, a forward reference —
//! "use before definition") is left in the function for the verifier, so one run reports all
//! of them. A node without a type annotation gets the inferred type, or a placeholder the
//! verifier will flag when inference fails.

use std::collections::HashMap;

use crate::diag::{DiagKind, Diagnostic, Diagnostics, Site};
use crate::func::{Input, InputId, InputKind, LossFn, Node, Output, OutputKind, SrcLoc, ValueId};
use crate::op::Op;
use crate::types::{Level, Type};

/// Where each part of a parsed function came from in the text (1-based lines).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceMap {
    /// Line of each node.
    pub node_lines: Vec<u32>,
    /// Line of each input declaration.
    pub input_lines: Vec<u32>,
    /// Line of each output.
    pub output_lines: Vec<u32>,
    /// Line of the closing brace.
    pub end_line: u32,
}

impl SourceMap {
    /// The text line a diagnostic site points at.
    pub fn line_of(&self, site: Site) -> Option<u32> {
        match site {
            Site::Node(v) => self.node_lines.get(v.index()).copied(),
            Site::Input(i) => self.input_lines.get(i.index()).copied(),
            Site::Output(o) => self.output_lines.get(o).copied(),
            Site::Line(l) => Some(l),
            Site::Function => None,
        }
    }
}

enum Stmt {
    Open(String),
    Close,
    Input {
        name: String,
        kind: InputKind,
    },
    Def {
        name: String,
        ty: Option<Type>,
        op: Op,
        args: Vec<(String, u32)>,
    },
    Loss(String),
    Metric(String, String),
    Grad(String, String),
}

struct Line {
    no: u32,
    stmt: Stmt,
    loc: Option<SrcLoc>,
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Splits a line into code and comment at the first `;` outside a string.
fn split_comment(line: &str) -> (&str, Option<&str>) {
    let mut in_str = false;
    for (i, ch) in line.char_indices() {
        match ch {
            '"' => in_str = !in_str,
            ';' if !in_str => return (&line[..i], Some(&line[i + 1..])),
            _ => {}
        }
    }
    (line, None)
}

fn parse_loc(comment: &str) -> Option<Result<SrcLoc, String>> {
    let c = comment.trim();
    let rest = c.strip_prefix('@')?;
    let mut parts = rest.rsplitn(3, ':');
    let (col, line, file) = (parts.next(), parts.next(), parts.next());
    Some(
        match (
            file,
            line.and_then(|l| l.parse().ok()),
            col.and_then(|c| c.parse().ok()),
        ) {
            (Some(file), Some(line), Some(col)) if !file.is_empty() => Ok(SrcLoc {
                file: file.to_string(),
                line,
                col,
            }),
            _ => Err(format!(
                "malformed source location `{c}`: expected `@file:line:col`"
            )),
        },
    )
}

fn parse_stmt(code: &str) -> Result<Stmt, String> {
    let code = code.trim();
    if code == "}" {
        return Ok(Stmt::Close);
    }
    if let Some(rest) = code.strip_prefix("loss ") {
        let rest = rest.trim();
        if let Some(name) = rest.strip_suffix('{') {
            let name = name.trim();
            if !is_ident(name) {
                return Err(format!("`{name}` is not a valid loss name"));
            }
            return Ok(Stmt::Open(name.to_string()));
        }
    }
    if let Some(rest) = code.strip_prefix("input ") {
        let (name, kind) = rest
            .split_once(':')
            .ok_or("expected `input NAME: KIND`".to_string())?;
        let (name, kind) = (name.trim(), kind.trim());
        if !is_ident(name) {
            return Err(format!("`{name}` is not a valid input name"));
        }
        let kind = InputKind::from_name(kind).ok_or_else(|| {
            let all: Vec<_> = InputKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown input kind `{kind}` (one of: {})", all.join(", "))
        })?;
        return Ok(Stmt::Input {
            name: name.to_string(),
            kind,
        });
    }
    let (lhs, rhs) = code
        .split_once('=')
        .ok_or_else(|| format!("cannot parse `{code}`: expected a definition"))?;
    let (lhs, rhs) = (lhs.trim(), rhs.trim());
    let value_name = |s: &str| -> Result<String, String> {
        if is_ident(s) {
            Ok(s.to_string())
        } else {
            Err(format!("`{s}` is not a value name"))
        }
    };
    if lhs == "loss" {
        return Ok(Stmt::Loss(value_name(rhs)?));
    }
    if let Some(m) = lhs.strip_prefix("metric ") {
        let m = m.trim();
        let name = m
            .strip_prefix('"')
            .and_then(|m| m.strip_suffix('"'))
            .ok_or_else(|| format!("metric name `{m}` must be quoted"))?;
        return Ok(Stmt::Metric(name.to_string(), value_name(rhs)?));
    }
    if let Some(h) = lhs.strip_prefix("grad ") {
        return Ok(Stmt::Grad(value_name(h.trim())?, value_name(rhs)?));
    }
    let (name, ty) = match lhs.split_once(':') {
        Some((n, t)) => {
            let t = t.trim();
            (
                n.trim(),
                Some(
                    Type::parse(t)
                        .ok_or_else(|| format!("`{t}` is not a type such as `f32[row]`"))?,
                ),
            )
        }
        None => (lhs, None),
    };
    let name = value_name(name)?;
    let (opname, operands) = match rhs.split_once(char::is_whitespace) {
        Some((o, rest)) => (o, rest.trim()),
        None => (rhs, ""),
    };
    if opname == "const" {
        let c: f64 = operands
            .parse()
            .map_err(|_| format!("`{operands}` is not a float literal"))?;
        return Ok(Stmt::Def {
            name,
            ty,
            op: Op::Const(c),
            args: vec![],
        });
    }
    if opname == "input" {
        return Err("inputs are declared as `input NAME: KIND`".into());
    }
    let op = Op::from_name(opname).ok_or_else(|| format!("unknown op `{opname}`"))?;
    let mut args = Vec::new();
    if !operands.is_empty() {
        for a in operands.split(',') {
            args.push((value_name(a.trim())?, 0));
        }
    }
    Ok(Stmt::Def { name, ty, op, args })
}

/// Parses `.lir` text into a function, or every error found with its line.
pub fn parse(text: &str) -> Result<LossFn, Diagnostics> {
    parse_mapped(text).map(|(f, _)| f)
}

/// Parses `.lir` text and also returns where each node, input and output came from.
pub fn parse_mapped(text: &str) -> Result<(LossFn, SourceMap), Diagnostics> {
    let mut errs = Vec::new();
    let mut err = |line: u32, kind: DiagKind, msg: String| {
        errs.push(Diagnostic::new(kind, Site::Line(line), msg));
    };
    let mut lines = Vec::new();
    let mut saw_header = false;
    for (i, raw) in text.lines().enumerate() {
        let no = i as u32 + 1;
        let (code, comment) = split_comment(raw);
        if !saw_header {
            let t = raw.trim();
            if t.is_empty() {
                continue;
            }
            saw_header = true;
            if t == super::HEADER {
                continue;
            }
            if let Some(v) = t.strip_prefix("; liger-ir ") {
                err(
                    no,
                    DiagKind::Version,
                    format!(
                        "unsupported IR version `{v}`; this build reads `{}`",
                        super::HEADER
                    ),
                );
                continue;
            }
            err(
                no,
                DiagKind::Version,
                format!("missing `{}` header line", super::HEADER),
            );
        }
        let loc = match comment.and_then(parse_loc) {
            Some(Ok(l)) => Some(l),
            Some(Err(m)) => {
                err(no, DiagKind::Syntax, m);
                None
            }
            None => None,
        };
        if code.trim().is_empty() {
            continue;
        }
        match parse_stmt(code) {
            Ok(stmt) => lines.push(Line { no, stmt, loc }),
            Err(m) => {
                let kind = if m.starts_with("unknown") {
                    DiagKind::UnknownName
                } else {
                    DiagKind::Syntax
                };
                err(no, kind, m);
            }
        }
    }
    if !saw_header {
        err(
            1,
            DiagKind::Version,
            format!("missing `{}` header line", super::HEADER),
        );
    }

    // Pass 1: definitions in order.
    let mut f = LossFn::default();
    let mut map = SourceMap::default();
    let mut names: HashMap<String, ValueId> = HashMap::new();
    let mut opened = false;
    let mut closed = false;
    let mut n_defs = 0u32;
    for l in &lines {
        match &l.stmt {
            Stmt::Open(name) => {
                if opened {
                    err(
                        l.no,
                        DiagKind::Syntax,
                        "a file holds one `loss NAME {` block".into(),
                    );
                }
                opened = true;
                f.name = name.clone();
            }
            Stmt::Close => {
                if closed {
                    err(l.no, DiagKind::Syntax, "unmatched `}`".into());
                }
                closed = true;
                map.end_line = l.no;
            }
            Stmt::Input { name, .. } | Stmt::Def { name, .. } => {
                if !opened || closed {
                    err(
                        l.no,
                        DiagKind::Syntax,
                        "definitions go inside `loss NAME { … }`".into(),
                    );
                }
                if names.insert(name.clone(), ValueId(n_defs)).is_some() {
                    err(
                        l.no,
                        DiagKind::DuplicateName,
                        format!("`{name}` is defined twice"),
                    );
                }
                n_defs += 1;
            }
            _ => {
                if !opened || closed {
                    err(
                        l.no,
                        DiagKind::Syntax,
                        "outputs go inside `loss NAME { … }`".into(),
                    );
                }
            }
        }
    }
    if !opened {
        err(1, DiagKind::Syntax, "missing `loss NAME {` line".into());
    } else if !closed {
        err(
            text.lines().count() as u32,
            DiagKind::Syntax,
            "missing closing `}`".into(),
        );
    }

    // Pass 2: build nodes and outputs.
    let resolve = |name: &str, no: u32, errs: &mut Vec<Diagnostic>| -> Option<ValueId> {
        let v = names.get(name).copied();
        if v.is_none() {
            errs.push(Diagnostic::new(
                DiagKind::UnknownName,
                Site::Line(no),
                format!("unknown value `{name}`"),
            ));
        }
        v
    };
    for l in &lines {
        match &l.stmt {
            Stmt::Input { name, kind } => {
                let id = InputId(f.inputs.len() as u32);
                f.inputs.push(Input {
                    name: name.clone(),
                    kind: *kind,
                });
                map.input_lines.push(l.no);
                f.nodes.push(Node {
                    op: Op::Input(id),
                    args: vec![],
                    ty: kind.ty(),
                });
                f.locs.push(l.loc.clone());
                map.node_lines.push(l.no);
            }
            Stmt::Def { ty, op, args, .. } => {
                let ids: Vec<Option<ValueId>> = args
                    .iter()
                    .map(|(a, _)| resolve(a, l.no, &mut errs))
                    .collect();
                let ids: Vec<ValueId> = ids.into_iter().flatten().collect();
                let me = f.nodes.len();
                let inferred = if ids.iter().all(|a| a.index() < me) {
                    let tys: Vec<Type> = ids.iter().map(|a| f.nodes[a.index()].ty).collect();
                    op.infer(&tys).ok()
                } else {
                    None
                };
                let ty = ty.or(inferred).unwrap_or(Type::f32(Level::Batch));
                f.nodes.push(Node {
                    op: *op,
                    args: ids,
                    ty,
                });
                f.locs.push(l.loc.clone());
                map.node_lines.push(l.no);
            }
            Stmt::Loss(v) | Stmt::Metric(_, v) | Stmt::Grad(_, v) => {
                let Some(value) = resolve(v, l.no, &mut errs) else {
                    continue;
                };
                let kind = match &l.stmt {
                    Stmt::Loss(_) => OutputKind::Loss,
                    Stmt::Metric(m, _) => OutputKind::Metric(m.clone()),
                    Stmt::Grad(h, _) => match f.inputs.iter().position(|i| &i.name == h) {
                        Some(i) => OutputKind::Grad(InputId(i as u32)),
                        None => {
                            errs.push(Diagnostic::new(
                                DiagKind::UnknownName,
                                Site::Line(l.no),
                                format!("`grad {h}` names no input"),
                            ));
                            continue;
                        }
                    },
                    _ => unreachable!("matched above"),
                };
                f.outputs.push(Output {
                    kind,
                    value,
                    loc: l.loc.clone(),
                });
                map.output_lines.push(l.no);
            }
            Stmt::Open(_) | Stmt::Close => {}
        }
    }
    if errs.is_empty() {
        Ok((f, map))
    } else {
        errs.sort_by_key(|d| match d.site {
            Site::Line(l) => l,
            _ => 0,
        });
        Err(Diagnostics(errs))
    }
}

/// Renders only the lines of `text` that diagnostics point at, numbered, each followed by its
/// `; error(kind): …` comments, for the first `max` diagnostics (in line order) and a count
/// of the rest: what a command line shows for a file of any length. Linear in the text plus
/// the diagnostics.
pub fn render_excerpt(text: &str, map: &SourceMap, diags: &[Diagnostic], max: usize) -> String {
    let mut sorted: Vec<(Option<u32>, &Diagnostic)> =
        diags.iter().map(|d| (map.line_of(d.site), d)).collect();
    sorted.sort_by_key(|(l, _)| l.unwrap_or(u32::MAX));
    let shown = &sorted[..sorted.len().min(max)];
    let want: std::collections::HashSet<u32> = shown.iter().filter_map(|(l, _)| *l).collect();
    let mut lines: std::collections::HashMap<u32, &str> = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let no = i as u32 + 1;
        if want.contains(&no) {
            lines.insert(no, line);
        }
    }
    let width = shown
        .iter()
        .filter_map(|(l, _)| *l)
        .max()
        .map_or(1, |l| l.to_string().len());
    let mut out = String::new();
    let mut last = None;
    for (l, d) in shown {
        if *l != last {
            if let Some(no) = l
                && let Some(line) = lines.get(no)
            {
                out.push_str(&format!("{no:>width$} | {line}\n"));
            }
            last = *l;
        }
        out.push_str(&format!(
            "{:>width$} ; error({}): {}\n",
            "",
            d.kind.name(),
            d.message
        ));
    }
    if sorted.len() > shown.len() {
        out.push_str(&format!(
            "... and {} more diagnostics\n",
            sorted.len() - shown.len()
        ));
    }
    out
}

/// Renders `text` with each diagnostic as a `; error(kind): …` comment under the line it
/// points at (diagnostics without a line go at the end).
///
/// Linear in the text plus the diagnostics: they are grouped by line once.
pub fn render_diagnostics(text: &str, map: &SourceMap, diags: &[Diagnostic]) -> String {
    // Diagnostics in line order (stable: same-line ones keep their order), then one walk.
    let mut placed: Vec<(u32, &Diagnostic)> = Vec::with_capacity(diags.len());
    let mut unplaced = Vec::new();
    for d in diags {
        match map.line_of(d.site) {
            Some(no) if no >= 1 => placed.push((no, d)),
            _ => unplaced.push(d),
        }
    }
    placed.sort_by_key(|(no, _)| *no);
    let comment = |out: &mut String, d: &Diagnostic| {
        out.push_str("; error(");
        out.push_str(d.kind.name());
        out.push_str("): ");
        out.push_str(&d.message);
        out.push('\n');
    };
    let mut out = String::with_capacity(text.len() + 64 * diags.len());
    let mut next = placed.iter().peekable();
    for (i, line) in text.lines().enumerate() {
        out.push_str(line);
        out.push('\n');
        let no = i as u32 + 1;
        while let Some((_, d)) = next.next_if(|(l, _)| *l == no) {
            comment(&mut out, d);
        }
    }
    // Lines past the end of the text, then diagnostics without a line.
    for (_, d) in next {
        comment(&mut out, d);
    }
    for d in unplaced {
        comment(&mut out, d);
    }
    out
}
