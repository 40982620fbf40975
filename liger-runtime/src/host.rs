//! Host inputs, checked and converted for an executor (the CPU executor and the CUDA host API
//! share this): head shapes and dtypes, finite values, token ranges, masks, side-input shapes,
//! hyperparameter values, and the names given. Heads stay borrowed views (rows are converted
//! per chunk where they are used); every other input becomes a whole-batch [`Arr`] by IR node.

use std::collections::BTreeMap;

use liger_ir::{InputId, InputKind, LossFn, Schedule, ValueId};

use crate::Error;
use crate::check;
use crate::inputs::{InputSet, InputValue};
use crate::plan::RunOptions;
use crate::tensor::{TensorData, TensorView};

/// A whole-batch array of a non-vocab value (the CPU evaluator's storage; the CUDA value
/// table's words are converted from it).
#[derive(Clone, Debug, PartialEq)]
pub enum Arr {
    /// Floats.
    F(Vec<f32>),
    /// Bools.
    B(Vec<bool>),
    /// Indices (`None`: invalid row).
    I(Vec<Option<u32>>),
}

impl Arr {
    /// The value-table words (floats as f32 bits, masks as 1.0/0.0, indices as i32 with -1
    /// for an invalid row: the kernel ABI's layout).
    pub fn words(&self) -> Vec<u32> {
        match self {
            Arr::F(x) => x.iter().map(|f| f.to_bits()).collect(),
            Arr::B(x) => x
                .iter()
                .map(|&b| if b { 1f32 } else { 0f32 }.to_bits())
                .collect(),
            Arr::I(x) => x
                .iter()
                .map(|k| k.map_or(-1i32, |u| u as i32) as u32)
                .collect(),
        }
    }
}

/// One lm head on the host.
pub(crate) struct HostHead<'a> {
    /// Its name.
    pub name: String,
    /// Its input.
    pub input: InputId,
    /// Its input node.
    pub node: ValueId,
    /// `x [S,T,H]`.
    pub x: TensorView<'a>,
    /// `W [V,H]`.
    pub w: TensorView<'a>,
    /// The bias in f32, when given.
    pub b: Option<Vec<f32>>,
    /// Hidden size.
    pub h: usize,
    /// Its gradient output, for a `Logits` head.
    pub grad: Option<ValueId>,
}

/// Every input of a run, checked.
pub(crate) struct HostInputs<'a> {
    /// `(S, T, V)`.
    pub dims: (usize, usize, usize),
    /// The heads, in schedule order.
    pub heads: Vec<HostHead<'a>>,
    /// Every other input (hyperparameters included) by node.
    pub values: BTreeMap<ValueId, Arr>,
}

/// The index and value of the first element that is not finite as the executors compute with
/// it (in f32: an f64 beyond f32's range counts), if any.
pub(crate) fn first_non_finite(data: TensorData<'_>) -> Option<(usize, f64)> {
    match data {
        TensorData::F32(x) => x
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (i, f64::from(x[i]))),
        TensorData::F64(x) => x
            .iter()
            .position(|v| !(*v as f32).is_finite())
            .map(|i| (i, x[i])),
        TensorData::BF16(x) => x
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (i, x[i].to_f64())),
        TensorData::F16(x) => x
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (i, x[i].to_f64())),
        TensorData::I64(_) | TensorData::I32(_) | TensorData::Bool(_) => None,
    }
}

fn check_finite(name: &str, data: TensorData<'_>) -> Result<(), Error> {
    match first_non_finite(data) {
        Some((index, value)) => Err(Error::NonFinite {
            input: name.into(),
            index,
            value,
        }),
        None => Ok(()),
    }
}

/// A float tensor as f32.
pub(crate) fn to_f32(name: &str, t: &TensorView<'_>) -> Result<Vec<f32>, Error> {
    Ok(match t.data() {
        TensorData::F32(x) => x.to_vec(),
        TensorData::F64(x) => x.iter().map(|&v| v as f32).collect(),
        TensorData::BF16(x) => x.iter().map(|v| v.to_f32()).collect(),
        TensorData::F16(x) => x.iter().map(|v| v.to_f32()).collect(),
        TensorData::I64(_) | TensorData::I32(_) | TensorData::Bool(_) => {
            return Err(Error::InputDType {
                input: name.into(),
                expected: "a float type (bf16, f16, f32, f64)",
                got: t.dtype(),
            });
        }
    })
}

/// Rows `rows` of `x [R,H]` as f32 `[c,H]` (a float view: checked when loaded).
pub(crate) fn gather_rows(
    x: &TensorView<'_>,
    rows: impl Iterator<Item = usize>,
    h: usize,
) -> Vec<f32> {
    let mut out = Vec::new();
    for r in rows {
        let range = r * h..(r + 1) * h;
        match x.data() {
            TensorData::F32(d) => out.extend_from_slice(&d[range]),
            TensorData::F64(d) => out.extend(d[range].iter().map(|&v| v as f32)),
            TensorData::BF16(d) => out.extend(d[range].iter().map(|v| v.to_f32())),
            TensorData::F16(d) => out.extend(d[range].iter().map(|v| v.to_f32())),
            TensorData::I64(_) | TensorData::I32(_) | TensorData::Bool(_) => {
                out.extend(std::iter::repeat_n(0.0, h));
            }
        }
    }
    out
}

/// Checks and converts every input that is not a head (and the hyperparameters).
pub(crate) fn side_inputs(
    g: &LossFn,
    inputs: &InputSet<'_>,
    hyper: &BTreeMap<String, f32>,
    opts: &RunOptions,
    dims: (usize, usize, usize),
) -> Result<BTreeMap<ValueId, Arr>, Error> {
    side_inputs_ids(g, inputs, hyper, opts, dims, dims.2)
}

/// [`side_inputs`] with token ids checked against a vocabulary of `ids` (the whole
/// vocabulary where the heads hold one shard of it: vocab parallel).
pub(crate) fn side_inputs_ids(
    g: &LossFn,
    inputs: &InputSet<'_>,
    hyper: &BTreeMap<String, f32>,
    opts: &RunOptions,
    (s, t, v): (usize, usize, usize),
    vocab_ids: usize,
) -> Result<BTreeMap<ValueId, Arr>, Error> {
    let mut out = BTreeMap::new();
    for (k, input) in g.inputs.iter().enumerate() {
        if input.kind.is_head() {
            continue;
        }
        let name = input.name.as_str();
        let Some(node) = g.input_node(InputId(k as u32)) else {
            continue;
        };
        if input.kind == InputKind::Param {
            let x = hyper
                .get(name)
                .copied()
                .ok_or_else(|| Error::MissingHyper { name: name.into() })?;
            out.insert(node, Arr::F(vec![x]));
            continue;
        }
        let tv = match inputs.get(name) {
            Some(InputValue::Tensor(t)) => t,
            other => {
                return Err(check::tensor_missing(
                    &g.name,
                    input,
                    matches!(other, Some(InputValue::Head(_))),
                ));
            }
        };
        check::side_shape(input, tv.shape(), (s, t, v))?;
        let arr = match input.kind {
            InputKind::Target | InputKind::Tokens => {
                let ids: Vec<i64> = match tv.data() {
                    TensorData::I64(x) => x.to_vec(),
                    TensorData::I32(x) => x.iter().map(|&v| i64::from(v)).collect(),
                    _ => {
                        return Err(Error::InputDType {
                            input: name.into(),
                            expected: "token ids (i64 or i32)",
                            got: tv.dtype(),
                        });
                    }
                };
                let mut ix = Vec::with_capacity(ids.len());
                for (i, &id) in ids.iter().enumerate() {
                    if input.kind == InputKind::Target && id == opts.ignore_index {
                        ix.push(None);
                    } else if id < 0 || id as u64 >= vocab_ids as u64 {
                        return Err(Error::TargetOutOfRange {
                            input: name.into(),
                            seq: i / t,
                            pos: i % t,
                            value: id,
                            vocab: vocab_ids,
                            ignore_index: opts.ignore_index,
                        });
                    } else {
                        ix.push(Some(id as u32));
                    }
                }
                Arr::I(ix)
            }
            InputKind::RowMask | InputKind::SeqMask => Arr::B(tv.to_bool(name)?),
            InputKind::RowInput
            | InputKind::SeqInput
            | InputKind::VocabInput
            | InputKind::ScalarInput => {
                check_finite(name, tv.data())?;
                Arr::F(to_f32(name, tv)?)
            }
            InputKind::Logits | InputKind::Frozen | InputKind::Param => {
                return Err(Error::Internal(format!(
                    "input `{name}` of kind {} reached the side-input loader",
                    input.kind.name()
                )));
            }
        };
        out.insert(node, arr);
    }
    Ok(out)
}

/// Checks and loads every input of `g`, with token ids checked against a vocabulary of `ids`
/// when given (vocab parallel: the heads hold one shard), else against the heads' own.
pub(crate) fn load_ids<'a>(
    g: &LossFn,
    sched: &Schedule,
    inputs: &InputSet<'a>,
    hyper: &BTreeMap<String, f32>,
    opts: &RunOptions,
    ids: Option<usize>,
) -> Result<HostInputs<'a>, Error> {
    let mut heads = Vec::new();
    let mut dims: Option<(usize, usize, usize)> = None;
    for hp in &sched.heads {
        let name = hp.name.as_str();
        let head = match inputs.get(name) {
            Some(InputValue::Head(h)) => h,
            other => {
                return Err(check::head_missing(
                    &g.name,
                    name,
                    matches!(other, Some(InputValue::Tensor(_))),
                ));
            }
        };
        let (_, _, v, h) = check::head_shapes(
            name,
            head.x.shape(),
            head.w.shape(),
            head.b.as_ref().map(TensorView::shape),
            &mut dims,
            check::VocabRule {
                prefix: opts.vocab_prefix,
                trainable: hp.grad.is_some(),
            },
        )?;
        // A frozen head with a larger vocabulary (allowed by `vocab_prefix`) is read through
        // its first `v` rows; the check above guarantees they exist.
        let prefix = |t: &TensorView<'a>, what: &str| {
            t.leading(v)
                .ok_or_else(|| Error::Internal(format!("{name}.{what} has fewer than {v} rows")))
        };
        let w = prefix(&head.w, "w")?;
        let head_b = head.b.as_ref().map(|b| prefix(b, "b")).transpose()?;
        for (part, view) in [("x", &head.x), ("w", &w)] {
            if !view.dtype().is_float() {
                return Err(Error::InputDType {
                    input: format!("{name}.{part}"),
                    expected: "a float type (bf16, f16, f32, f64)",
                    got: view.dtype(),
                });
            }
            check_finite(&format!("{name}.{part}"), view.data())?;
        }
        let b = match &head_b {
            Some(b) => {
                check_finite(&format!("{name}.b"), b.data())?;
                Some(to_f32(&format!("{name}.b"), b)?)
            }
            None => None,
        };
        heads.push(HostHead {
            name: name.into(),
            input: hp.input,
            node: hp.node,
            x: head.x.clone(),
            w,
            b,
            h,
            grad: hp.grad,
        });
    }
    let Some(dims) = dims else {
        return Err(Error::MissingInput {
            loss: g.name.clone(),
            name: "a head".into(),
            kind: "logits",
        });
    };
    let values = side_inputs_ids(g, inputs, hyper, opts, dims, ids.unwrap_or(dims.2))?;
    check::names_and_pairs(g, sched, inputs.names(), dims.0)?;
    Ok(HostInputs {
        dims,
        heads,
        values,
    })
}

/// The rows the chunk loop runs when the loss lets dead rows go ([`liger_ir::rowskip`]): a
/// row is live unless every skippable mask is false at it (a `Target`'s ignored rows, a
/// `RowMask`'s false rows) in a run of at least [`MIN_DEAD_RUN`] such rows. `None` (every row
/// runs) when the loss keeps every row, when
/// `RunOptions::skip_dead_rows` is off, or when no row is dead.
pub(crate) fn live_rows(
    sched: &Schedule,
    values: &BTreeMap<ValueId, Arr>,
    rows: usize,
    opts: &RunOptions,
) -> Result<Option<Vec<bool>>, Error> {
    let Some(sk) = sched.skippable.as_ref().filter(|_| opts.skip_dead_rows) else {
        return Ok(None);
    };
    let mut live = vec![false; rows];
    for m in &sk.masks {
        let on: Vec<bool> = match values.get(m) {
            Some(Arr::I(ix)) => ix.iter().map(Option::is_some).collect(),
            Some(Arr::B(b)) => b.clone(),
            // An optional mask input not given: its rows cannot be told apart, keep all.
            None => return Ok(None),
            Some(Arr::F(_)) => {
                return Err(Error::Internal("a skippable-row mask holds floats".into()));
            }
        };
        if on.len() != rows {
            return Err(Error::Internal(format!(
                "a skippable-row mask of {} rows for {rows}",
                on.len()
            )));
        }
        for (l, o) in live.iter_mut().zip(on) {
            *l |= o;
        }
    }
    // A short dead run costs more as a break between GEMMs (a launch, a smaller GEMM) than
    // its rows cost to compute: only runs of `MIN_DEAD_RUN` rows or more are left out.
    let mut r = 0;
    while r < rows {
        if live[r] {
            r += 1;
            continue;
        }
        let start = r;
        while r < rows && !live[r] {
            r += 1;
        }
        if r - start < MIN_DEAD_RUN {
            live[start..r].fill(true);
        }
    }
    Ok((!live.iter().all(|&l| l)).then_some(live))
}

/// The shortest run of dead rows the chunk loop leaves out (shorter runs are computed: their
/// results are the same, masked out).
pub const MIN_DEAD_RUN: usize = 16;
