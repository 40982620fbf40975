//! Lowering a loss body to liger-ir, once per specialisation.
//!
//! The body is evaluated symbolically: `let` binds names, `if`/`match` on variants pick a
//! branch, `if let Some(x) = opt` and `opt.unwrap()` follow the specialisation's presence of
//! `opt` (an `unwrap` of an absent input refuses the specialisation), and every function call
//! appends typed IR nodes through [`liger_ir::Builder`], each with the source location of its
//! tokens. Errors are recorded on the user's tokens and lowering continues with a poisoned
//! value, so one run reports every independent mistake. The finished function is verified and
//! each verifier diagnostic is mapped back to the tokens that produced the node.

use std::collections::HashMap;

use liger_ir::op::{Binary, Cmp, EVERY_ROW, Size, SurfaceFn, Unary, surface_functions};
use liger_ir::{Builder, DType, Diagnostic, InputKind, Level, LossFn, Op, Site, SrcLoc, ValueId};
use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{BinOp, Block, Expr, Lit, Pat, Stmt, UnOp};

use crate::errors::{Errors, suggest};
use crate::helpers::{Helper, Helpers};
use crate::sig::{Kind, Sig};
use crate::variants::Enums;

/// What a lowering sees besides the loss: the helpers it may call and the file its tokens
/// come from (`None`: the span's own file, as the proc macro reports it).
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// The helper fns callable from the loss.
    pub helpers: &'a Helpers,
    /// The source file named in the IR's locations.
    pub file: Option<&'a str>,
}

/// The value of one variant or optional input in a specialisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Choice {
    /// A flag's value.
    Flag(bool),
    /// An enum's arm (index into its variants).
    Arm(usize),
    /// Whether an optional input is present.
    Present(bool),
}

/// One specialisation: a choice per variant or optional parameter (by parameter index).
#[derive(Clone, Debug)]
pub struct Spec {
    /// `(parameter index, choice)` in parameter order.
    pub choices: Vec<(usize, Choice)>,
}

/// The result of lowering one specialisation.
pub enum Outcome {
    /// The verified IR.
    Ir(LossFn),
    /// The body unwraps this absent input.
    Refused(String),
    /// Errors were recorded.
    Failed,
}

/// The body unwrapped an absent input.
struct Refused(String);

/// A reduction's mask argument.
enum MaskArg {
    /// A row mask value.
    Value(ValueId),
    /// `every_row()`: no mask.
    Every,
    /// An error was recorded.
    Failed,
}

#[derive(Clone, Copy, Debug)]
enum Val {
    V(ValueId),
    Opt(Option<ValueId>, usize),
    Flag(bool, usize),
    Arm(usize, usize),
    Poison,
}

type R = Result<Val, Refused>;

/// The function of the loss language called `name`, from liger-ir's op table.
fn function(name: &str) -> Option<SurfaceFn> {
    surface_functions().into_iter().find(|f| f.name == name)
}

/// Every function name of the loss language.
fn function_names() -> Vec<&'static str> {
    surface_functions().into_iter().map(|f| f.name).collect()
}

/// Why an expression is not part of the loss language, and what to use instead.
fn construct(e: &Expr) -> &'static str {
    match e {
        Expr::Array(_) | Expr::Repeat(_) => "arrays are not supported in a loss body",
        Expr::Assign(_) => {
            "assignments are not supported in a loss body: bind a new name with `let`"
        }
        Expr::Async(_) | Expr::Await(_) => "async code is not supported in a loss body",
        Expr::Break(_) | Expr::Continue(_) => "`break`/`continue` are not supported in a loss body",
        Expr::Cast(_) => "`as` casts are not supported in a loss body: every value is f32",
        Expr::Closure(_) => "closures are not supported in a loss body",
        Expr::Const(_) => "const blocks are not supported in a loss body",
        Expr::Field(_) => "field access is not supported in a loss body",
        Expr::ForLoop(_) | Expr::Loop(_) | Expr::While(_) => {
            "loops are not supported in a loss body: a loss is a whole-batch expression, and reductions (seq_sum, mean, …) replace loops"
        }
        Expr::Index(_) => {
            "indexing is not supported in a loss body: use at_target(e, t), chosen(s) or rejected(s)"
        }
        Expr::Let(_) => "`let` expressions are only supported as `if let Some(x) = optional_input`",
        Expr::Macro(_) => "macros are not supported in a loss body",
        Expr::Range(_) => "ranges are not supported in a loss body",
        Expr::Reference(_) => "references are not supported in a loss body",
        Expr::Return(_) => "`return` is not supported: the body's last expression is the loss",
        Expr::Struct(_) => "struct literals are not supported in a loss body",
        Expr::Try(_) => "the `?` operator is not supported in a loss body",
        Expr::TryBlock(_) => "try blocks are not supported in a loss body",
        Expr::Tuple(_) => "tuples are not supported in a loss body",
        Expr::Unsafe(_) => "unsafe blocks are not supported in a loss body",
        Expr::Yield(_) => "`yield` is not supported in a loss body",
        _ => "this expression is not supported in a loss body",
    }
}

struct Lowerer<'a> {
    ctx: Ctx<'a>,
    /// The helpers being inlined, innermost last (recursion is an error).
    stack: Vec<String>,
    sig: &'a Sig,
    enums: &'a Enums,
    spec: &'a Spec,
    errs: &'a mut Errors,
    failed: bool,
    b: Builder,
    spans: Vec<Span>,
    input_spans: Vec<Span>,
    output_spans: Vec<Span>,
    scopes: Vec<HashMap<String, Val>>,
    default_target: Option<ValueId>,
    default_mask: Option<ValueId>,
    has_tokens: bool,
}

fn srcloc(span: Span, file: Option<&str>) -> Option<SrcLoc> {
    let s = span.start();
    if s.line == 0 {
        return None;
    }
    let file = match file {
        Some(f) => f.to_string(),
        None => span.file(),
    };
    Some(SrcLoc {
        file: if file.is_empty() {
            "<unknown>".into()
        } else {
            file
        },
        line: s.line as u32,
        col: s.column as u32 + 1,
    })
}

impl Lowerer<'_> {
    fn loc(&self, span: Span) -> Option<SrcLoc> {
        srcloc(span, self.ctx.file)
    }

    fn err(&mut self, span: Span, msg: impl Into<String>) -> Val {
        self.errs.push(span, msg);
        self.failed = true;
        Val::Poison
    }

    fn sync(&mut self, span: Span) {
        while self.spans.len() < self.b.func().nodes.len() {
            self.spans.push(span);
        }
    }

    /// Appends `op(args)`; `arg_spans` place operand errors on the offending argument.
    fn build(&mut self, op: Op, args: &[Option<ValueId>], span: Span, arg_spans: &[Span]) -> Val {
        let Some(args) = args.iter().copied().collect::<Option<Vec<ValueId>>>() else {
            return Val::Poison;
        };
        self.b.set_loc(self.loc(span));
        let r = self.b.op(op, &args);
        self.sync(span);
        match r {
            Ok(v) => Val::V(v),
            Err(d) => {
                let at = if arg_spans.len() == 1 {
                    arg_spans[0]
                } else {
                    span
                };
                let msg = d.message.replace("operand", "argument");
                self.err(at, msg)
            }
        }
    }

    fn constant(&mut self, x: f64, span: Span) -> ValueId {
        self.b.set_loc(self.loc(span));
        let v = self.b.constant(x);
        self.sync(span);
        v
    }

    fn lookup(&self, name: &str) -> Option<Val> {
        self.scopes.iter().rev().find_map(|s| s.get(name).copied())
    }

    fn bind(&mut self, name: String, v: Val) {
        if let Some(s) = self.scopes.last_mut() {
            s.insert(name, v);
        }
    }

    fn param_name(&self, i: usize) -> String {
        self.sig.params[i].ident.to_string()
    }

    /// A value usable in arithmetic; `None` after an error.
    fn value(&mut self, e: &Expr) -> Result<Option<ValueId>, Refused> {
        let v = self.expr(e)?;
        Ok(match v {
            Val::V(v) => Some(v),
            Val::Poison => None,
            Val::Opt(_, p) => {
                let n = self.param_name(p);
                self.err(
                    e.span(),
                    format!("`{n}` is optional: use `if let Some(x) = {n} {{ … }} else {{ … }}` or `{n}.unwrap()`"),
                );
                None
            }
            Val::Flag(_, p) => {
                let n = self.param_name(p);
                self.err(e.span(), format!("`{n}` is a `#[variant]` flag: it chooses a branch, `if {n} {{ … }} else {{ … }}`"));
                None
            }
            Val::Arm(_, p) => {
                let n = self.param_name(p);
                self.err(
                    e.span(),
                    format!("`{n}` is a `#[variant]` choice: use it in `match {n} {{ … }}`"),
                );
                None
            }
        })
    }

    fn expr(&mut self, e: &Expr) -> R {
        Ok(match e {
            Expr::Lit(l) => match &l.lit {
                Lit::Float(f) => match f.base10_parse::<f64>() {
                    Ok(x) if matches!(f.suffix(), "" | "f32" | "f64") => Val::V(self.constant(x, f.span())),
                    _ => self.err(f.span(), "a float literal such as `0.5`"),
                },
                Lit::Int(i) => match i.base10_parse::<f64>() {
                    Ok(x) if i.suffix().is_empty() => Val::V(self.constant(x, i.span())),
                    _ => self.err(i.span(), "write numbers without a type suffix, such as `2.0`"),
                },
                Lit::Bool(b) => self.err(b.span(), "`true`/`false` are not loss values; a `#[variant] bool` chooses branches, `select(cond, a, b)` chooses values"),
                other => self.err(other.span(), "only number literals are values in a loss body"),
            },
            Expr::Path(p) => {
                let Some(id) = p.path.get_ident().filter(|_| p.qself.is_none()) else {
                    return Ok(self.err(p.span(), "paths are only allowed as `match` arms (`Type::Variant`)"));
                };
                let name = id.to_string();
                match self.lookup(&name) {
                    Some(v) => v,
                    None => {
                        if function(&name).is_some() {
                            return Ok(self.err(id.span(), format!("`{name}` is a function: call it, `{name}(…)`")));
                        }
                        let mut known: Vec<String> = Vec::new();
                        for s in &self.scopes {
                            known.extend(s.keys().cloned());
                        }
                        let hint = suggest(&name, known.iter().map(String::as_str));
                        self.err(id.span(), format!("unknown name `{name}`{hint}"))
                    }
                }
            }
            Expr::Paren(p) => self.expr(&p.expr)?,
            Expr::Group(g) => self.expr(&g.expr)?,
            Expr::Unary(u) => match u.op {
                UnOp::Neg(_) => {
                    let x = self.value(&u.expr)?;
                    self.build(Op::Unary(Unary::Neg), &[x], e.span(), &[u.expr.span()])
                }
                UnOp::Not(t) => self.err(t.span(), "`!` is not supported: swap the branches of select(cond, a, b)"),
                _ => self.err(u.span(), "only unary `-` is supported"),
            },
            Expr::Binary(b) => {
                let op = match b.op {
                    BinOp::Add(_) => Op::Binary(Binary::Add),
                    BinOp::Sub(_) => Op::Binary(Binary::Sub),
                    BinOp::Mul(_) => Op::Binary(Binary::Mul),
                    BinOp::Div(_) => Op::Binary(Binary::Div),
                    BinOp::Lt(_) | BinOp::Le(_) | BinOp::Gt(_) | BinOp::Ge(_) | BinOp::Eq(_) | BinOp::Ne(_) => {
                        return Ok(self.err(b.op.span(), "comparisons are only allowed as the condition of `select(cond, a, b)`"));
                    }
                    BinOp::And(_) | BinOp::Or(_) => {
                        return Ok(self.err(b.op.span(), "`&&`/`||` are not supported: nest `select`s"));
                    }
                    _ => {
                        return Ok(self.err(b.op.span(), "only `+ - * /` are supported (assignments: bind a new name with `let`)"));
                    }
                };
                let x = self.value(&b.left)?;
                let y = self.value(&b.right)?;
                self.build(op, &[x, y], e.span(), &[])
            }
            Expr::Call(c) => self.call(c)?,
            Expr::MethodCall(m) => self.method(m)?,
            Expr::If(i) => self.if_(i)?,
            Expr::Match(m) => self.match_(m)?,
            Expr::Block(b) => {
                if b.label.is_some() {
                    return Ok(self.err(b.span(), "labelled blocks are not supported"));
                }
                self.block(&b.block)?
            }
            other => {
                let msg = construct(other);
                self.err(other.span(), msg)
            }
        })
    }

    /// A reduction's mask argument: `every_row()` (no mask), or a row mask value.
    fn mask_arg(&mut self, e: &Expr) -> Result<MaskArg, Refused> {
        if let Expr::Call(c) = e
            && matches!(&*c.func, Expr::Path(p) if p.path.is_ident(EVERY_ROW))
        {
            if !c.args.is_empty() {
                self.err(c.args.span(), "`every_row()` takes no arguments");
                return Ok(MaskArg::Failed);
            }
            return Ok(MaskArg::Every);
        }
        Ok(match self.mask(e)? {
            Some(v) => MaskArg::Value(v),
            None => MaskArg::Failed,
        })
    }

    fn mask(&mut self, e: &Expr) -> Result<Option<ValueId>, Refused> {
        let Some(v) = self.value(e)? else {
            return Ok(None);
        };
        let t = self.b.ty(v);
        if t.dtype != DType::Bool || t.level != Level::Row {
            self.err(
                e.span(),
                format!("expected a row mask (a `RowMask` parameter or `valid(target)`), got {t}"),
            );
            return Ok(None);
        }
        Ok(Some(v))
    }

    /// The default row mask: `valid` of the first `Target`; `Ok(None)` means "every row"
    /// (only `Tokens`); an error when the loss has neither.
    fn default_mask(&mut self, func: &str, span: Span) -> Result<Option<ValueId>, ()> {
        if let Some(m) = self.default_mask {
            return Ok(Some(m));
        }
        if let Some(t) = self.default_target {
            if let Val::V(m) = self.build(Op::Valid, &[Some(t)], span, &[]) {
                self.default_mask = Some(m);
                return Ok(Some(m));
            }
            return Err(());
        }
        if self.has_tokens {
            return Ok(None);
        }
        self.err(
            span,
            format!("`{func}` has no default mask here: the loss has no `Target` (or `Tokens`) parameter; pass one, `{func}(x, mask)`"),
        );
        Err(())
    }

    fn cond(&mut self, e: &Expr) -> Result<Option<ValueId>, Refused> {
        match e {
            Expr::Paren(p) => return self.cond(&p.expr),
            Expr::Binary(b) => {
                let op = match b.op {
                    BinOp::Lt(_) => Some(Op::Compare(Cmp::Lt)),
                    BinOp::Le(_) => Some(Op::Compare(Cmp::Le)),
                    BinOp::Gt(_) => Some(Op::Compare(Cmp::Gt)),
                    BinOp::Ge(_) => Some(Op::Compare(Cmp::Ge)),
                    BinOp::Eq(_) => Some(Op::Compare(Cmp::Eq)),
                    BinOp::Ne(_) => Some(Op::Compare(Cmp::Ne)),
                    _ => None,
                };
                if let Some(op) = op {
                    let x = self.value(&b.left)?;
                    let y = self.value(&b.right)?;
                    return Ok(match self.build(op, &[x, y], e.span(), &[]) {
                        Val::V(v) => Some(v),
                        _ => None,
                    });
                }
            }
            _ => {}
        }
        let Some(v) = self.value(e)? else {
            return Ok(None);
        };
        let t = self.b.ty(v);
        if t.dtype != DType::Bool {
            self.err(e.span(), format!("the condition of `select` is a comparison (`a < b`), a mask or `valid(t)`; this is {t}"));
            return Ok(None);
        }
        Ok(Some(v))
    }

    fn call(&mut self, c: &syn::ExprCall) -> R {
        let span = c.span();
        let name = match &*c.func {
            Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => p
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default(),
            other => {
                return Ok(self.err(
                    other.span(),
                    "only the functions of the loss language can be called, by name",
                ));
            }
        };
        let fspan = c.func.span();
        let Some(sf) = function(&name) else {
            if let Some(h) = self.ctx.helpers.get(&name) {
                return self.call_helper(h, c);
            }
            if self.ctx.helpers.is_broken(&name) {
                self.failed = true;
                return Ok(Val::Poison);
            }
            let hint = suggest(
                &name,
                function_names().into_iter().chain(self.ctx.helpers.names()),
            );
            let msg = if self.lookup(&name).is_some() {
                format!("`{name}` is a value, not a function")
            } else if hint.is_empty() {
                format!(
                    "unknown function `{name}`: no function of the loss language and no helper has this name (helpers are plain `fn`s next to the loss, in a `#[chunked_losses]` module or a loss file)"
                )
            } else {
                format!("unknown function `{name}`{hint}")
            };
            return Ok(self.err(fspan, msg));
        };
        let args: Vec<&Expr> = c.args.iter().collect();
        if args.len() < sf.min_args || args.len() > sf.max_args {
            return Ok(self.err(
                span,
                format!(
                    "`{name}` takes ({}), got {} argument(s)",
                    sf.signature,
                    args.len()
                ),
            ));
        }
        let Some(op) = sf.op else {
            if name == EVERY_ROW {
                return Ok(self.err(
                    fspan,
                    "`every_row()` is a mask, not a value: pass it as a reduction's mask, `seq_sum(x, every_row())`",
                ));
            }
            return Ok(self.err(
                fspan,
                "`metric(\"name\", value)` is a statement: end it with `;`",
            ));
        };
        let arg_spans: Vec<Span> = args.iter().map(|a| a.span()).collect();
        Ok(match op {
            Op::Select => {
                let cnd = self.cond(args[0])?;
                let a = self.value(args[1])?;
                let b = self.value(args[2])?;
                self.build(Op::Select, &[cnd, a, b], span, &[])
            }
            Op::SeqReduce(_) | Op::SeqCount => {
                let mut ops = Vec::new();
                let takes_x = op != Op::SeqCount;
                if takes_x {
                    ops.push(self.value(args[0])?);
                }
                let mask_arg = if takes_x { args.get(1) } else { args.first() };
                match mask_arg {
                    Some(m) => match self.mask_arg(m)? {
                        MaskArg::Value(v) => ops.push(Some(v)),
                        MaskArg::Every => {}
                        MaskArg::Failed => ops.push(None),
                    },
                    None => match self.default_mask(&name, span) {
                        Ok(Some(m)) => ops.push(Some(m)),
                        Ok(None) => {}
                        Err(()) => return Ok(Val::Poison),
                    },
                }
                let spans = if takes_x { vec![arg_spans[0]] } else { vec![] };
                self.build(op, &ops, span, &spans)
            }
            Op::Sum | Op::Mean => {
                let Some(x) = self.value(args[0])? else {
                    return Ok(Val::Poison);
                };
                let level = self.b.ty(x).level;
                let all = if op == Op::Sum {
                    Op::SumAll
                } else {
                    Op::MeanAll
                };
                if level == Level::Row {
                    let m = match args.get(1) {
                        Some(m) => match self.mask_arg(m)? {
                            MaskArg::Value(v) => Some(v),
                            MaskArg::Every => return Ok(self.build(all, &[Some(x)], span, &[])),
                            MaskArg::Failed => None,
                        },
                        None => match self.default_mask(&name, span) {
                            Ok(Some(m)) => Some(m),
                            Ok(None) => {
                                return Ok(self.build(all, &[Some(x)], span, &[]));
                            }
                            Err(()) => return Ok(Val::Poison),
                        },
                    };
                    self.build(op, &[Some(x), m], span, &[])
                } else if let Some(m) = args.get(1) {
                    self.err(
                        m.span(),
                        format!(
                            "a mask applies to a row-level `{name}`; this value is {level}-level"
                        ),
                    )
                } else {
                    self.build(op, &[Some(x)], span, &[arg_spans[0]])
                }
            }
            Op::NumValid => {
                let mask = match args.first() {
                    Some(m) => match self.mask_arg(m)? {
                        MaskArg::Value(v) => Ok(Some(v)),
                        MaskArg::Every => Ok(None),
                        MaskArg::Failed => return Ok(Val::Poison),
                    },
                    None => self.default_mask(&name, span),
                };
                match mask {
                    Ok(Some(m)) => self.build(Op::NumValid, &[Some(m)], span, &[]),
                    // Every row: S·T.
                    Ok(None) => {
                        let s = self.build(Op::Size(Size::NumSeqs), &[], span, &[]);
                        let t = self.build(Op::Size(Size::SeqLen), &[], span, &[]);
                        let (Val::V(s), Val::V(t)) = (s, t) else {
                            return Ok(Val::Poison);
                        };
                        self.build(Op::Binary(Binary::Mul), &[Some(s), Some(t)], span, &[])
                    }
                    Err(()) => Val::Poison,
                }
            }
            op => {
                let mut ops = Vec::new();
                for a in &args {
                    ops.push(self.value(a)?);
                }
                let spans = if args.len() == 1 {
                    vec![arg_spans[0]]
                } else {
                    vec![]
                };
                self.build(op, &ops, span, &spans)
            }
        })
    }

    /// Inlines helper `h` at call `c`: arguments evaluated in the caller's scope and checked
    /// against the helper's levels, the body lowered in a scope holding only its parameters.
    fn call_helper(&mut self, h: &Helper, c: &syn::ExprCall) -> R {
        let name = h.ident.to_string();
        if self.stack.contains(&name) {
            let chain = self.stack.join(" → ");
            return Ok(self.err(
                c.func.span(),
                format!("helper `{name}` calls itself ({chain} → {name}): helpers are inlined, so they cannot recurse"),
            ));
        }
        if c.args.len() != h.params.len() {
            let names: Vec<String> = h.params.iter().map(|(p, _)| p.to_string()).collect();
            return Ok(self.err(
                c.span(),
                format!(
                    "helper `{name}` takes ({}), got {} argument(s)",
                    names.join(", "),
                    c.args.len()
                ),
            ));
        }
        let mut scope = HashMap::new();
        let mut ok = true;
        for (a, (p, level)) in c.args.iter().zip(&h.params) {
            match self.value(a)? {
                Some(v) => {
                    let t = self.b.ty(v);
                    if let Some(l) = level
                        && t.level != *l
                    {
                        self.err(
                            a.span(),
                            format!("helper `{name}` takes a {l}-level value for `{p}`, got {t}"),
                        );
                        ok = false;
                    }
                    scope.insert(p.to_string(), Val::V(v));
                }
                None => ok = false,
            }
        }
        if !ok {
            return Ok(Val::Poison);
        }
        let saved = std::mem::replace(&mut self.scopes, vec![scope]);
        self.stack.push(name.clone());
        let r = self.block(&h.block);
        self.stack.pop();
        self.scopes = saved;
        let v = r?;
        if let (Val::V(v), Some(l)) = (v, h.ret) {
            let t = self.b.ty(v);
            if t.level != l {
                return Ok(self.err(
                    c.span(),
                    format!(
                        "helper `{name}` is declared to return a {l}-level value but returns {t}"
                    ),
                ));
            }
        }
        Ok(v)
    }

    fn method(&mut self, m: &syn::ExprMethodCall) -> R {
        let name = m.method.to_string();
        if name == "unwrap" && m.args.is_empty() {
            let recv = self.expr(&m.receiver)?;
            return match recv {
                Val::Opt(Some(v), _) => Ok(Val::V(v)),
                Val::Opt(None, p) => Err(Refused(self.param_name(p))),
                Val::Poison => Ok(Val::Poison),
                _ => Ok(self.err(
                    m.method.span(),
                    "`unwrap()` applies to `Option` parameters only",
                )),
            };
        }
        if function(&name).is_some() {
            return Ok(self.err(
                m.method.span(),
                format!("method calls are not supported: write the function form, `{name}(x)`"),
            ));
        }
        Ok(self.err(
            m.method.span(),
            format!("method calls are not supported (`.{name}()`)"),
        ))
    }

    fn if_(&mut self, i: &syn::ExprIf) -> R {
        let Some((_, else_branch)) = &i.else_branch else {
            return Ok(self.err(
                i.if_token.span(),
                "an `if` in a loss is an expression: add an `else` branch",
            ));
        };
        if let Expr::Let(l) = &*i.cond {
            let binding = match &*l.pat {
                Pat::TupleStruct(ts) if ts.path.is_ident("Some") && ts.elems.len() == 1 => {
                    match &ts.elems[0] {
                        Pat::Ident(pi) if pi.subpat.is_none() && pi.by_ref.is_none() => {
                            Some(pi.ident.to_string())
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            let Some(binding) = binding else {
                return Ok(self.err(
                    l.pat.span(),
                    "only `if let Some(name) = optional_input` is supported",
                ));
            };
            return Ok(match self.expr(&l.expr)? {
                Val::Opt(Some(v), _) => {
                    self.scopes.push(HashMap::new());
                    self.bind(binding, Val::V(v));
                    let r = self.block(&i.then_branch);
                    self.scopes.pop();
                    r?
                }
                Val::Opt(None, _) => self.expr(else_branch)?,
                Val::Poison => Val::Poison,
                _ => self.err(
                    l.expr.span(),
                    "`if let Some(x) = …` takes an `Option` parameter",
                ),
            });
        }
        let is_cmp = matches!(&*i.cond, Expr::Binary(b) if matches!(b.op, BinOp::Lt(_) | BinOp::Le(_) | BinOp::Gt(_) | BinOp::Ge(_) | BinOp::Eq(_) | BinOp::Ne(_)));
        if is_cmp {
            return Ok(self.err(
                i.cond.span(),
                "`if` chooses at compile time on a `#[variant] bool`; for a choice per value use `select(cond, a, b)`",
            ));
        }
        Ok(match self.expr(&i.cond)? {
            Val::Flag(true, _) => self.block(&i.then_branch)?,
            Val::Flag(false, _) => self.expr(else_branch)?,
            Val::Poison => Val::Poison,
            _ => self.err(
                i.cond.span(),
                "an `if` condition is a `#[variant] bool` parameter; for a choice per value use `select(cond, a, b)`",
            ),
        })
    }

    fn match_(&mut self, m: &syn::ExprMatch) -> R {
        let scrutinee = self.expr(&m.expr)?;
        let (arm, param) = match scrutinee {
            Val::Arm(a, p) => (a, p),
            Val::Poison => return Ok(Val::Poison),
            _ => {
                return Ok(self.err(
                    m.expr.span(),
                    "`match` works on `#[variant]` enum parameters; for a choice per value use `select(cond, a, b)`",
                ));
            }
        };
        let Some(variant) = self.enums.get(&param).and_then(|v| v.get(arm)) else {
            return Ok(Val::Poison);
        };
        let variant = variant.to_string();
        for a in &m.arms {
            if let Pat::Path(p) = &a.pat
                && p.path.segments.last().is_some_and(|s| s.ident == variant)
            {
                return self.expr(&a.body);
            }
        }
        Ok(Val::Poison)
    }

    fn stmt(&mut self, s: &Stmt) -> Result<(), Refused> {
        match s {
            Stmt::Local(l) => {
                let name = match &l.pat {
                    Pat::Ident(pi) if pi.subpat.is_none() && pi.by_ref.is_none() => {
                        if let Some(m) = &pi.mutability {
                            self.err(m.span(), "bindings in a loss are immutable: remove `mut` and bind a new name");
                        }
                        pi.ident.to_string()
                    }
                    Pat::Type(pt) => {
                        self.err(
                            pt.ty.span(),
                            "type annotations are not needed in a loss body: remove `: …`",
                        );
                        return Ok(());
                    }
                    other => {
                        self.err(
                            other.span(),
                            "only `let name = value;` bindings are supported",
                        );
                        return Ok(());
                    }
                };
                let Some(init) = &l.init else {
                    self.err(l.span(), "a `let` in a loss binds a value: `let name = …;`");
                    return Ok(());
                };
                if let Some((e, _)) = &init.diverge {
                    self.err(e.span(), "`let … else` is not supported");
                }
                let v = self.expr(&init.expr)?;
                self.bind(name, v);
            }
            Stmt::Expr(Expr::Call(c), Some(_)) if matches!(&*c.func, Expr::Path(p) if p.path.is_ident("metric")) =>
            {
                self.metric(c)?;
            }
            // A statement `if` (metrics under a variant): its branches hold statements.
            Stmt::Expr(Expr::If(i), _) => self.if_stmt(i)?,
            Stmt::Expr(e, _) => {
                let msg = match e {
                    Expr::ForLoop(_)
                    | Expr::Loop(_)
                    | Expr::While(_)
                    | Expr::Return(_)
                    | Expr::Assign(_)
                    | Expr::Macro(_) => construct(e),
                    _ => {
                        "this statement has no effect: a loss body holds `let` bindings and `metric(…);` statements and ends with the loss"
                    }
                };
                self.err(e.span(), msg);
            }
            Stmt::Macro(m) => {
                self.err(m.span(), "macros are not supported in a loss body");
            }
            Stmt::Item(i) => {
                self.err(
                    i.span(),
                    "items (fn, struct, use, …) cannot be declared in a loss body",
                );
            }
        }
        Ok(())
    }

    /// An `if` used as a statement: the branch the specialisation picks (a `#[variant] bool`
    /// or `if let Some(x) = optional_input`) runs as statements; `else` is optional.
    fn if_stmt(&mut self, i: &syn::ExprIf) -> Result<(), Refused> {
        let take = |this: &mut Self, then: bool, bind: Option<(String, ValueId)>| {
            if then {
                this.scopes.push(HashMap::new());
                if let Some((n, v)) = bind {
                    this.bind(n, Val::V(v));
                }
                let r = this.stmts_only(&i.then_branch);
                this.scopes.pop();
                r
            } else {
                match &i.else_branch {
                    None => Ok(()),
                    Some((_, e)) => match &**e {
                        Expr::If(inner) => this.if_stmt(inner),
                        Expr::Block(b) => {
                            this.scopes.push(HashMap::new());
                            let r = this.stmts_only(&b.block);
                            this.scopes.pop();
                            r
                        }
                        other => {
                            this.err(other.span(), "an `else` branch is a block");
                            Ok(())
                        }
                    },
                }
            }
        };
        if let Expr::Let(l) = &*i.cond {
            let binding = match &*l.pat {
                Pat::TupleStruct(ts) if ts.path.is_ident("Some") && ts.elems.len() == 1 => {
                    match &ts.elems[0] {
                        Pat::Ident(pi) if pi.subpat.is_none() && pi.by_ref.is_none() => {
                            Some(pi.ident.to_string())
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            let Some(binding) = binding else {
                self.err(
                    l.pat.span(),
                    "only `if let Some(name) = optional_input` is supported",
                );
                return Ok(());
            };
            return match self.expr(&l.expr)? {
                Val::Opt(Some(v), _) => take(self, true, Some((binding, v))),
                Val::Opt(None, _) => take(self, false, None),
                Val::Poison => Ok(()),
                _ => {
                    self.err(
                        l.expr.span(),
                        "`if let Some(x) = …` takes an `Option` parameter",
                    );
                    Ok(())
                }
            };
        }
        match self.expr(&i.cond)? {
            Val::Flag(b, _) => take(self, b, None),
            Val::Poison => Ok(()),
            _ => {
                self.err(
                    i.cond.span(),
                    "an `if` condition is a `#[variant] bool` parameter; for a choice per value use `select(cond, a, b)`",
                );
                Ok(())
            }
        }
    }

    /// A block of statements with no value (a statement `if`'s branch).
    fn stmts_only(&mut self, b: &Block) -> Result<(), Refused> {
        for s in &b.stmts {
            if let Stmt::Expr(e, None) = s
                && !matches!(e, Expr::If(_))
            {
                self.err(
                    e.span(),
                    "this `if` is a statement, so its blocks hold statements (`let`, `metric(…);`): end this with `;` or make the `if` the value of a `let`",
                );
                continue;
            }
            self.stmt(s)?;
        }
        Ok(())
    }

    fn metric(&mut self, c: &syn::ExprCall) -> Result<(), Refused> {
        if c.args.len() != 2 {
            self.err(c.span(), "`metric` takes (\"name\", value)");
            return Ok(());
        }
        let name = match &c.args[0] {
            Expr::Lit(syn::ExprLit {
                lit: Lit::Str(s), ..
            }) if !s.value().is_empty() && !s.value().contains(['"', '\n']) => s.value(),
            other => {
                self.err(
                    other.span(),
                    "the first argument of `metric` is its name, a non-empty string literal",
                );
                return Ok(());
            }
        };
        if let Some(v) = self.value(&c.args[1])? {
            self.b.set_loc(self.loc(c.span()));
            self.b.metric(&name, v);
            self.output_spans.push(c.span());
        }
        Ok(())
    }

    fn block(&mut self, b: &Block) -> R {
        self.scopes.push(HashMap::new());
        let r = self.block_inner(b);
        self.scopes.pop();
        r
    }

    fn block_inner(&mut self, b: &Block) -> R {
        let Some((last, init)) = b.stmts.split_last() else {
            return Ok(self.err(
                b.brace_token.span.join(),
                "an empty block has no value: end it with an expression",
            ));
        };
        for s in init {
            self.stmt(s)?;
        }
        match last {
            Stmt::Expr(e, None) => self.expr(e),
            other => {
                let before = self.errs.len();
                self.stmt(other)?;
                if self.errs.len() > before {
                    return Ok(Val::Poison);
                }
                Ok(self.err(
                    b.brace_token.span.close(),
                    "this block must end with an expression without `;` (the body's last expression is the loss)",
                ))
            }
        }
    }
}

/// Lowers `sig`'s body for one specialisation.
pub fn lower(sig: &Sig, enums: &Enums, spec: &Spec, ctx: Ctx<'_>, errs: &mut Errors) -> Outcome {
    let mut l = Lowerer {
        ctx,
        stack: Vec::new(),
        sig,
        enums,
        spec,
        errs,
        failed: false,
        b: Builder::new(sig.ident.to_string()),
        spans: Vec::new(),
        input_spans: Vec::new(),
        output_spans: Vec::new(),
        scopes: vec![HashMap::new()],
        default_target: None,
        default_mask: None,
        has_tokens: false,
    };
    let choice = |i: usize| {
        l.spec
            .choices
            .iter()
            .find(|(p, _)| *p == i)
            .map(|(_, c)| *c)
    };
    for (i, p) in sig.params.iter().enumerate() {
        let name = p.ident.to_string();
        let val = match &p.kind {
            Kind::Flag => Val::Flag(matches!(choice(i), Some(Choice::Flag(true))), i),
            Kind::Enum(_) => match choice(i) {
                Some(Choice::Arm(a)) => Val::Arm(a, i),
                _ => Val::Poison,
            },
            Kind::Hyper | Kind::Input(_) => {
                let kind = match &p.kind {
                    Kind::Input(k) => *k,
                    _ => InputKind::Param,
                };
                if p.optional && matches!(choice(i), Some(Choice::Present(false))) {
                    l.bind(name, Val::Opt(None, i));
                    continue;
                }
                l.b.set_loc(l.loc(p.ident.span()));
                let v = match l.b.input(&name, kind) {
                    Ok(v) => v,
                    Err(d) => {
                        l.err(p.ident.span(), d.message);
                        continue;
                    }
                };
                l.sync(p.ident.span());
                l.input_spans.push(p.ident.span());
                if kind == InputKind::Target && l.default_target.is_none() {
                    l.default_target = Some(v);
                }
                if kind == InputKind::Tokens {
                    l.has_tokens = true;
                }
                if p.optional {
                    Val::Opt(Some(v), i)
                } else {
                    Val::V(v)
                }
            }
        };
        l.bind(p.ident.to_string(), val);
    }
    let result = match l.block_inner(&sig.block) {
        Ok(v) => v,
        Err(Refused(input)) => return Outcome::Refused(input),
    };
    let last_span = match sig.block.stmts.last() {
        Some(Stmt::Expr(e, None)) => e.span(),
        _ => sig.block.brace_token.span.close(),
    };
    match result {
        Val::V(v) => {
            l.b.set_loc(l.loc(last_span));
            l.b.loss(v);
            l.output_spans.push(last_span);
        }
        Val::Poison => {}
        _ => {
            l.err(last_span, "the body must end with the loss value");
        }
    }
    if l.failed {
        return Outcome::Failed;
    }
    let f = l.b.finish();
    match liger_ir::verify(&f) {
        Ok(()) => Outcome::Ir(f),
        Err(ds) => {
            for d in ds.0 {
                let span = site_span(&d, &l.spans, &l.input_spans, &l.output_spans, sig);
                let msg = match d.kind {
                    liger_ir::DiagKind::OutputLevel if matches!(d.site, Site::Output(k) if k + 1 == l.output_spans.len()) => {
                        d.message.replace(
                            "the loss must be",
                            "the body must end at batch level: the loss must be",
                        )
                    }
                    _ => d.message,
                };
                l.errs.push(span, msg);
            }
            Outcome::Failed
        }
    }
}

fn site_span(d: &Diagnostic, nodes: &[Span], inputs: &[Span], outputs: &[Span], sig: &Sig) -> Span {
    let fallback = sig.ident.span();
    match d.site {
        Site::Node(v) => nodes.get(v.index()).copied().unwrap_or(fallback),
        Site::Input(i) => inputs.get(i.index()).copied().unwrap_or(fallback),
        Site::Output(o) => outputs.get(o).copied().unwrap_or(fallback),
        Site::Line(_) | Site::Function => fallback,
    }
}
