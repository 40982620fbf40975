//! Inputs and results by name, as every door outside Rust spells them: `liger run`'s
//! safetensors files and the Python package read a head `policy` from tensors `policy.x`,
//! `policy.w` and (optionally) `policy.b`, every other input by its own name, and write
//! `loss`, `metric.<name>` and `grad.<head>.<x|w|b>`. Defined here once for both.

use std::collections::BTreeSet;

use crate::loss::ChunkedLoss;
use crate::runtime::Error as RtError;
use crate::{Error, GradBuf, Head, InputSet, LossOutput, TensorView};

/// The names a loss's inputs are given by (`policy.x, policy.w, policy.b`, `target`, …).
pub fn input_names(loss: &dyn ChunkedLoss) -> Vec<String> {
    loss.params()
        .iter()
        .filter(|p| p.kind.is_input())
        .map(|p| {
            if p.kind.is_head() {
                format!("{0}.x, {0}.w, {0}.b", p.name)
            } else {
                p.name.to_string()
            }
        })
        .collect()
}

/// One of a loss's inputs found by name: a head from its `.x`, `.w` and optional `.b`
/// tensors, or any other input.
#[derive(Clone, Debug)]
pub enum Named<T> {
    /// Head `name`.
    Head {
        /// Its parameter name (`policy`).
        name: &'static str,
        /// `name.x`.
        x: T,
        /// `name.w`.
        w: T,
        /// `name.b`, if given.
        b: Option<T>,
    },
    /// Input `name`.
    Tensor {
        /// Its parameter name (`target`).
        name: &'static str,
        /// The tensor.
        t: T,
    },
}

/// Finds `loss`'s inputs among named tensors of any kind (host views, device buffers): `view
/// (name)` gives the tensor called `name`, if any, and `names` every name given (a name that is
/// no input of the loss is refused first, so a typo is named as such rather than reported as
/// a missing input). A head needs both `.x` and `.w`; a missing required input is
/// [`RtError::MissingInput`]; the other refusals are `Err(why)` for the caller to wrap (a file
/// error names the file).
pub fn resolve<'n, T>(
    loss: &dyn ChunkedLoss,
    names: impl IntoIterator<Item = &'n str>,
    view: impl Fn(&str) -> Option<Result<T, Error>>,
) -> Result<Result<Vec<Named<T>>, String>, Error> {
    let mut known = BTreeSet::new();
    for p in loss.params().iter().filter(|p| p.kind.is_input()) {
        if p.kind.is_head() {
            known.extend(["x", "w", "b"].map(|part| format!("{}.{part}", p.name)));
        } else {
            known.insert(p.name.to_string());
        }
    }
    if let Some(extra) = names.into_iter().find(|k| !known.contains(*k)) {
        return Ok(Err(format!(
            "tensor `{extra}` is not an input of `{}` (expected: {})",
            loss.name(),
            input_names(loss).join(", ")
        )));
    }
    let mut out = Vec::new();
    for p in loss.params().iter().filter(|p| p.kind.is_input()) {
        if p.kind.is_head() {
            let (xn, wn, bn) = (
                format!("{}.x", p.name),
                format!("{}.w", p.name),
                format!("{}.b", p.name),
            );
            match (view(&xn), view(&wn)) {
                (Some(x), Some(w)) => {
                    let b = match view(&bn) {
                        Some(b) => Some(b?),
                        None => None,
                    };
                    out.push(Named::Head {
                        name: p.name,
                        x: x?,
                        w: w?,
                        b,
                    });
                }
                (None, None) if p.optional => {}
                (x, _) => {
                    let missing = if x.is_none() { xn } else { wn };
                    return Ok(Err(format!(
                        "no tensor `{missing}` for head `{}` of `{}`",
                        p.name,
                        loss.name()
                    )));
                }
            }
        } else if let Some(t) = view(p.name) {
            out.push(Named::Tensor {
                name: p.name,
                t: t?,
            });
        } else if !p.optional {
            return Err(RtError::MissingInput {
                loss: loss.name().into(),
                name: p.name.into(),
                kind: p.kind.name(),
            }
            .into());
        }
    }
    Ok(Ok(out))
}

/// Builds `loss`'s host inputs from named tensors ([`resolve`]).
pub fn inputs_by_name<'a, 'n>(
    loss: &dyn ChunkedLoss,
    names: impl IntoIterator<Item = &'n str>,
    view: impl Fn(&str) -> Option<Result<TensorView<'a>, Error>>,
) -> Result<Result<InputSet<'a>, String>, Error> {
    Ok(resolve(loss, names, view)?.map(|found| {
        found.into_iter().fold(InputSet::new(), |set, n| match n {
            Named::Head { name, x, w, b } => set.head(name, Head { x, w, b }),
            Named::Tensor { name, t } => set.tensor(name, t),
        })
    }))
}

/// One named result tensor: its name (`loss`, `metric.<name>`, `grad.<head>.<part>`), shape
/// and values.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// `loss`, `metric.<name>` or `grad.<head>.<x|w|b>`.
    pub name: String,
    /// Its shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// Its values (metrics and the loss in f32; gradients in the dtype asked for).
    pub data: GradBuf,
}

/// The shape of a metric of `level` holding `len` values in a batch of `s` sequences of `t`
/// rows: a row-level metric is `[s, t]`, a batch-level one a scalar, others a vector.
pub fn metric_shape(level: liger_ir::Level, (s, t): (usize, usize), len: usize) -> Vec<usize> {
    match level {
        liger_ir::Level::Batch => vec![],
        liger_ir::Level::Row => vec![s, t],
        _ => vec![len],
    }
}

/// A run's results by name, in the order `loss`, the metrics as the loss reports them, then
/// each head's `x`, `w`, `b` gradients (those computed). `shape(name)` gives the shape of input
/// tensor `name` (a gradient has its input's shape); `(s, t)` are the batch's sequences and
/// rows per sequence (a row-level metric is `[s, t]`, a batch-level one a scalar, others a
/// vector).
pub fn named_outputs(
    out: LossOutput,
    (s, t): (usize, usize),
    shape: impl Fn(&str) -> Option<Vec<usize>>,
) -> Vec<NamedTensor> {
    let mut v = vec![NamedTensor {
        name: "loss".into(),
        shape: vec![],
        data: GradBuf::F32(vec![out.loss]),
    }];
    for m in out.metrics {
        let shape = metric_shape(m.level, (s, t), m.values.len());
        v.push(NamedTensor {
            name: format!("metric.{}", m.name),
            shape,
            data: GradBuf::F32(m.values),
        });
    }
    for g in out.grads {
        for (part, buf) in [("x", g.x), ("w", g.w), ("b", g.b)] {
            let Some(buf) = buf else { continue };
            let input = format!("{}.{part}", g.head);
            let shape = shape(&input).unwrap_or_else(|| vec![buf.len()]);
            v.push(NamedTensor {
                name: format!("grad.{input}"),
                shape,
                data: buf,
            });
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::Flce;

    #[test]
    fn names_map_to_heads_and_typos_are_refused() {
        let x = [0f32; 2 * 3 * 4];
        let w = [0f32; 5 * 4];
        let t = [0i64; 2 * 3];
        let view = |n: &str| -> Option<Result<TensorView<'_>, Error>> {
            match n {
                "logits.x" => Some(TensorView::new(&x[..], &[2, 3, 4]).map_err(Error::from)),
                "logits.w" => Some(TensorView::new(&w[..], &[5, 4]).map_err(Error::from)),
                "target" => Some(TensorView::new(&t[..], &[2, 3]).map_err(Error::from)),
                _ => None,
            }
        };
        let set = inputs_by_name(&Flce, ["logits.x", "logits.w", "target"], view)
            .expect("no error")
            .expect("inputs");
        assert!(set.get("logits").is_some() && set.get("target").is_some());
        let why = inputs_by_name(&Flce, ["logits.x", "logits.w", "target", "tagret"], view)
            .expect("no error")
            .expect_err("typo");
        assert!(why.contains("`tagret` is not an input of `flce`"), "{why}");
        let only_x = |n: &str| if n == "logits.w" { None } else { view(n) };
        let why = inputs_by_name(&Flce, ["logits.x", "target"], only_x)
            .expect("no error")
            .expect_err("no w");
        assert!(why.contains("no tensor `logits.w`"), "{why}");
    }
}
