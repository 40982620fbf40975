//! The reference path: any [`ChunkedLoss`] on host arrays through the liger-ir f64
//! interpreter, with gradients for every `Logits` head.
//!
//! Logits are formed in f64 (`z = x Wᵀ + b`), the specialisation's IR is differentiated and
//! simplified, the interpreter evaluates loss, metrics and `dL/dz`, and the head gradients
//! follow in f64: `dx = dz W`, `dW = dzᵀ x`, `db = Σ_rows dz`. This is slow and exact; it is
//! the oracle the executors are tested against, never a production path.

use std::collections::BTreeMap;

use liger_ir::interp::{EvalWarning, MetricValue};
use liger_ir::{HostBatch, HostInput, InputKind};

use crate::loss::ChunkedLoss;
use crate::params::ParamSet;
use crate::runtime::Error as RtError;
use crate::{Error, Head, InputSet, InputValue, TensorView};

/// The gradients of one `Logits` head.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadGrad {
    /// The head's parameter name.
    pub head: String,
    /// `dL/dlogits`, `[S,T,V]`.
    pub logits: Vec<f64>,
    /// `dL/dx`, `[S,T,H]`.
    pub x: Vec<f64>,
    /// `dL/dW`, `[V,H]`.
    pub w: Vec<f64>,
    /// `dL/db`, `[V]`, when the head has a bias.
    pub b: Option<Vec<f64>>,
}

/// What the reference path computes.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// The loss.
    pub loss: f64,
    /// Metrics, in the order the body reports them.
    pub metrics: Vec<MetricValue>,
    /// Gradients of every `Logits` head.
    pub grads: Vec<HeadGrad>,
    /// The specialisation that ran (`name=value, …`).
    pub spec: String,
    /// Non-fatal findings (e.g. a mean over no valid row).
    pub warnings: Vec<EvalWarning>,
}

impl Output {
    /// The metric called `name`.
    pub fn metric(&self, name: &str) -> Option<&MetricValue> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// The gradients of head `name`.
    pub fn grad(&self, name: &str) -> Option<&HeadGrad> {
        self.grads.iter().find(|g| g.head == name)
    }
}

struct Dims {
    s: usize,
    t: usize,
    v: usize,
}

fn shape_err(input: String, expected: String, got: &[usize]) -> Error {
    RtError::Shape {
        input,
        expected,
        got: got.to_vec(),
    }
    .into()
}

/// A head's f64 data with its checked sizes.
struct HeadData {
    x: Vec<f64>,
    w: Vec<f64>,
    b: Option<Vec<f64>>,
    h: usize,
}

fn head_data(name: &str, head: &Head<'_>, d: &Dims) -> Result<HeadData, Error> {
    let xs = head.x.shape();
    if xs.len() != 3 || xs[0] != d.s || xs[1] != d.t {
        return Err(shape_err(
            format!("{name}.x"),
            format!("[S,T,H] with S={}, T={}", d.s, d.t),
            xs,
        ));
    }
    let h = xs[2];
    let ws = head.w.shape();
    if ws != [d.v, h] {
        return Err(shape_err(
            format!("{name}.w"),
            format!("[V,H] = [{},{h}]", d.v),
            ws,
        ));
    }
    let b = match &head.b {
        Some(b) => {
            if b.shape() != [d.v] {
                return Err(shape_err(
                    format!("{name}.b"),
                    format!("[V] = [{}]", d.v),
                    b.shape(),
                ));
            }
            Some(b.to_f64(&format!("{name}.b"))?)
        }
        None => None,
    };
    Ok(HeadData {
        x: head.x.to_f64(&format!("{name}.x"))?,
        w: head.w.to_f64(&format!("{name}.w"))?,
        b,
        h,
    })
}

fn logits(hd: &HeadData, d: &Dims) -> Vec<f64> {
    let r = d.s * d.t;
    let mut z = vec![0.0; r * d.v];
    for i in 0..r {
        let xr = &hd.x[i * hd.h..(i + 1) * hd.h];
        for v in 0..d.v {
            let wv = &hd.w[v * hd.h..(v + 1) * hd.h];
            let dot: f64 = xr.iter().zip(wv).map(|(a, b)| a * b).sum();
            z[i * d.v + v] = dot + hd.b.as_ref().map_or(0.0, |b| b[v]);
        }
    }
    z
}

fn expect_tensor<'a>(
    loss: &dyn ChunkedLoss,
    name: &str,
    kind: InputKind,
    v: &'a InputValue<'_>,
) -> Result<&'a TensorView<'a>, Error> {
    match v {
        InputValue::Tensor(t) => Ok(t),
        InputValue::Head(_) => Err(RtError::InputKind {
            loss: loss.name().into(),
            name: name.into(),
            kind: kind.name(),
            want: "a tensor, not a head",
        }
        .into()),
    }
}

/// Evaluates `loss` on host inputs with the f64 interpreter.
pub fn evaluate(
    loss: &dyn ChunkedLoss,
    inputs: &InputSet<'_>,
    params: &ParamSet,
    ignore_index: i64,
) -> Result<Output, Error> {
    let (resolved, spec, p) =
        crate::run::specialise(loss, &inputs.names().collect::<Vec<_>>(), params)?;
    let g = p.grad();
    let f = p.surface().unwrap_or(g);

    // Sizes from the first head.
    let first_head =
        f.inputs
            .iter()
            .find(|i| i.kind.is_head())
            .and_then(|i| match inputs.get(&i.name) {
                Some(InputValue::Head(h)) => Some((i.name.clone(), h)),
                _ => None,
            });
    let Some((hname, h0)) = first_head else {
        return Err(RtError::MissingInput {
            loss: loss.name().into(),
            name: "a head".into(),
            kind: "logits",
        }
        .into());
    };
    let xs = h0.x.shape();
    let ws = h0.w.shape();
    if xs.len() != 3 {
        return Err(shape_err(format!("{hname}.x"), "[S,T,H]".into(), xs));
    }
    if ws.len() != 2 {
        return Err(shape_err(format!("{hname}.w"), "[V,H]".into(), ws));
    }
    let d = Dims {
        s: xs[0],
        t: xs[1],
        v: ws[0],
    };
    let mut batch = HostBatch::new(d.s, d.t, d.v);
    batch.ignore_index = ignore_index;
    let mut heads: BTreeMap<String, HeadData> = BTreeMap::new();
    for input in &f.inputs {
        let name = input.name.as_str();
        let Some(v) = inputs.get(name) else {
            // Hyperparameters are not inputs of the caller.
            if input.kind == InputKind::Param {
                let x = resolved.float(name).ok_or(Error::MissingParam {
                    loss: loss.name().into(),
                    name: loss.param(name).map_or("?", |p| p.name),
                })?;
                batch
                    .inputs
                    .insert(name.into(), HostInput::Scalar(f64::from(x)));
                continue;
            }
            return Err(RtError::MissingInput {
                loss: loss.name().into(),
                name: name.into(),
                kind: input.kind.name(),
            }
            .into());
        };
        let host = match input.kind {
            InputKind::Logits | InputKind::Frozen => {
                let InputValue::Head(h) = v else {
                    return Err(RtError::InputKind {
                        loss: loss.name().into(),
                        name: name.into(),
                        kind: input.kind.name(),
                        want: "a head (x, w, optional b)",
                    }
                    .into());
                };
                let hd = head_data(name, h, &d)?;
                let z = logits(&hd, &d);
                heads.insert(name.into(), hd);
                HostInput::Logits(z)
            }
            InputKind::Target | InputKind::Tokens => {
                let t = expect_tensor(loss, name, input.kind, v)?;
                if t.shape() != [d.s, d.t] {
                    return Err(shape_err(
                        name.into(),
                        format!("[S,T] = [{},{}]", d.s, d.t),
                        t.shape(),
                    ));
                }
                HostInput::Ids(t.to_i64(name)?)
            }
            InputKind::RowInput | InputKind::RowMask => {
                let t = expect_tensor(loss, name, input.kind, v)?;
                if t.shape() != [d.s, d.t] {
                    return Err(shape_err(
                        name.into(),
                        format!("[S,T] = [{},{}]", d.s, d.t),
                        t.shape(),
                    ));
                }
                if input.kind == InputKind::RowMask {
                    HostInput::Mask(t.to_bool(name)?)
                } else {
                    HostInput::Floats(t.to_f64(name)?)
                }
            }
            InputKind::SeqInput | InputKind::SeqMask => {
                let t = expect_tensor(loss, name, input.kind, v)?;
                if t.shape() != [d.s] {
                    return Err(shape_err(
                        name.into(),
                        format!("[S] = [{}]", d.s),
                        t.shape(),
                    ));
                }
                if input.kind == InputKind::SeqMask {
                    HostInput::Mask(t.to_bool(name)?)
                } else {
                    HostInput::Floats(t.to_f64(name)?)
                }
            }
            InputKind::VocabInput => {
                let t = expect_tensor(loss, name, input.kind, v)?;
                if t.shape() != [d.v] {
                    return Err(shape_err(
                        name.into(),
                        format!("[V] = [{}]", d.v),
                        t.shape(),
                    ));
                }
                HostInput::Floats(t.to_f64(name)?)
            }
            InputKind::ScalarInput | InputKind::Param => {
                let t = expect_tensor(loss, name, input.kind, v)?;
                if t.shape().iter().product::<usize>() != 1 {
                    return Err(shape_err(
                        name.into(),
                        "a scalar ([] or [1])".into(),
                        t.shape(),
                    ));
                }
                HostInput::Scalar(t.to_f64(name)?[0])
            }
        };
        batch.inputs.insert(name.into(), host);
    }
    let e = liger_ir::evaluate(g, &batch)?;
    let mut grads = Vec::new();
    for (name, dz) in e.grads {
        let Some(hd) = heads.get(&name) else { continue };
        let r = d.s * d.t;
        let mut dx = vec![0.0; r * hd.h];
        let mut dw = vec![0.0; d.v * hd.h];
        let mut db = hd.b.as_ref().map(|_| vec![0.0; d.v]);
        for i in 0..r {
            let xr = &hd.x[i * hd.h..(i + 1) * hd.h];
            for v in 0..d.v {
                let g = dz[i * d.v + v];
                if g == 0.0 {
                    continue;
                }
                let wv = &hd.w[v * hd.h..(v + 1) * hd.h];
                for k in 0..hd.h {
                    dx[i * hd.h + k] += g * wv[k];
                    dw[v * hd.h + k] += g * xr[k];
                }
                if let Some(db) = db.as_mut() {
                    db[v] += g;
                }
            }
        }
        grads.push(HeadGrad {
            head: name,
            logits: dz,
            x: dx,
            w: dw,
            b: db,
        });
    }
    Ok(Output {
        loss: e.loss,
        metrics: e.metrics,
        grads,
        spec: spec.describe(),
        warnings: e.warnings,
    })
}
