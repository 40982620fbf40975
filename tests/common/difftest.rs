//! Differential tests (in the manner of Cranelift's `test interpret` + `test run`): one loss
//! IR and one batch, evaluated by the f64 interpreter (the oracle: logits formed in f64, head
//! gradients `dx = dz W`, `dW = dzᵀ x`, `db = Σ dz` from its `dL/dz`) and run by an executor
//! under every strategy the schedule allows, at a budget that gives one chunk and one that
//! gives many. Shared by the CPU file tests (`tests/difftests.rs`) and the GPU suite.

use std::collections::BTreeMap;

use liger::ir::emit::{EmitOptions, GemmDType};
use liger::ir::{HostBatch, HostInput, InputKind, LossFn, Pipeline};
use liger::runtime::Error as RtError;
use liger::{Head, InputSet, RunOptions, Runtime, TensorView};

/// One head's data: `x [S,T,H]` and `W [V,H]` (f32, exact in f64), optional `b [V]`.
pub struct HeadData {
    pub x: Vec<f32>,
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
    pub h: usize,
}

/// A differential case: a surface IR and its data.
pub struct DiffCase {
    pub name: String,
    pub f: LossFn,
    /// Every input but the heads, as the interpreter takes them (heads' logits are added
    /// from `heads`).
    pub batch: HostBatch,
    pub heads: BTreeMap<String, HeadData>,
}

/// `z = x Wᵀ + b` in f64.
fn logits(hd: &HeadData, v: usize) -> Vec<f64> {
    let r = hd.x.len() / hd.h;
    let mut z = vec![0.0; r * v];
    for i in 0..r {
        for j in 0..v {
            let mut acc = hd.b.as_ref().map_or(0.0, |b| f64::from(b[j]));
            for k in 0..hd.h {
                acc += f64::from(hd.x[i * hd.h + k]) * f64::from(hd.w[j * hd.h + k]);
            }
            z[i * v + j] = acc;
        }
    }
    z
}

/// A head's `(dx, dW, db)` in f64.
pub type HeadGrads64 = (Vec<f64>, Vec<f64>, Option<Vec<f64>>);

/// What the oracle computes: loss, metrics by name, and per gradient head `(dx, dW, db)`.
pub struct Oracle {
    pub loss: f64,
    pub metrics: BTreeMap<String, Vec<f64>>,
    pub grads: BTreeMap<String, HeadGrads64>,
}

/// The f64 interpreter on the gradient IR of `p` (`Err`: the interpreter's error, as text).
pub fn oracle(case: &DiffCase, p: &Pipeline) -> Result<Oracle, String> {
    let mut batch = case.batch.clone();
    let v = batch.vocab;
    for (name, hd) in &case.heads {
        batch
            .inputs
            .insert(name.clone(), HostInput::Logits(logits(hd, v)));
    }
    let e = liger::ir::evaluate(p.grad(), &batch).map_err(|e| e.to_string())?;
    let mut grads = BTreeMap::new();
    for (name, dz) in e.grads {
        let hd = &case.heads[&name];
        let r = hd.x.len() / hd.h;
        let (mut dx, mut dw) = (vec![0.0; r * hd.h], vec![0.0; v * hd.h]);
        let mut db = hd.b.as_ref().map(|_| vec![0.0; v]);
        for i in 0..r {
            for j in 0..v {
                let g = dz[i * v + j];
                for k in 0..hd.h {
                    dx[i * hd.h + k] += g * f64::from(hd.w[j * hd.h + k]);
                    dw[j * hd.h + k] += g * f64::from(hd.x[i * hd.h + k]);
                }
                if let Some(db) = db.as_mut() {
                    db[j] += g;
                }
            }
        }
        grads.insert(name, (dx, dw, db));
    }
    Ok(Oracle {
        loss: e.loss,
        metrics: e
            .metrics
            .into_iter()
            .map(|m| (m.name.clone(), m.values))
            .collect(),
        grads,
    })
}

/// Whether the case sits next to a kink of its function (a comparison, `min`/`max`/`clamp`,
/// `abs`/`relu` or an arg-max that f32 rounding can flip): the interpreter's branch signature
/// changes when the logits move by a relative 1e-5. Such cases are run but not compared.
pub fn near_kink(case: &DiffCase, p: &Pipeline) -> bool {
    let v = case.batch.vocab;
    let sig = |scale: f64, seed: u64| -> Option<u64> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut batch = case.batch.clone();
        for (name, hd) in &case.heads {
            let z: Vec<f64> = logits(hd, v)
                .into_iter()
                .map(|x| x * (1.0 + scale * (rng.f64() - 0.5)))
                .collect();
            batch.inputs.insert(name.clone(), HostInput::Logits(z));
        }
        liger::ir::evaluate(p.grad(), &batch)
            .ok()
            .map(|e| e.branch_signature)
    };
    let base = sig(0.0, 0);
    (1..4).any(|k| sig(1e-5, k) != base)
}

/// Owned host tensors of a case, for building an `InputSet`.
pub struct Owned {
    pub shapes: BTreeMap<String, Vec<usize>>,
    pub f32s: BTreeMap<String, Vec<f32>>,
    pub ids: BTreeMap<String, Vec<i64>>,
    pub masks: BTreeMap<String, Vec<bool>>,
    pub hyper: BTreeMap<String, f32>,
}

/// The executor's inputs of a case.
pub fn owned(case: &DiffCase) -> Owned {
    let (s, t, v) = (case.batch.num_seqs, case.batch.seq_len, case.batch.vocab);
    let mut o = Owned {
        shapes: BTreeMap::new(),
        f32s: BTreeMap::new(),
        ids: BTreeMap::new(),
        masks: BTreeMap::new(),
        hyper: BTreeMap::new(),
    };
    for input in &case.f.inputs {
        let name = input.name.clone();
        let shape = match input.kind {
            InputKind::Target | InputKind::Tokens | InputKind::RowInput | InputKind::RowMask => {
                vec![s, t]
            }
            InputKind::SeqInput | InputKind::SeqMask => vec![s],
            InputKind::VocabInput => vec![v],
            InputKind::ScalarInput | InputKind::Param => vec![],
            InputKind::Logits | InputKind::Frozen => continue,
        };
        match case.batch.inputs.get(&name) {
            Some(HostInput::Ids(x)) => {
                o.ids.insert(name.clone(), x.clone());
            }
            Some(HostInput::Mask(x)) => {
                o.masks.insert(name.clone(), x.clone());
            }
            Some(HostInput::Floats(x)) => {
                o.f32s
                    .insert(name.clone(), x.iter().map(|&a| a as f32).collect());
            }
            Some(HostInput::Scalar(x)) if input.kind == InputKind::Param => {
                o.hyper.insert(name.clone(), *x as f32);
                continue;
            }
            Some(HostInput::Scalar(x)) => {
                o.f32s.insert(name.clone(), vec![*x as f32]);
            }
            other => panic!("{}: no data for input `{name}`: {other:?}", case.name),
        }
        o.shapes.insert(name, shape);
    }
    o
}

/// The input set of a case over `o`.
pub fn input_set<'a>(case: &'a DiffCase, o: &'a Owned) -> InputSet<'a> {
    let (s, t) = (case.batch.num_seqs, case.batch.seq_len);
    let v = case.batch.vocab;
    let mut set = InputSet::new();
    for (name, hd) in &case.heads {
        let x = TensorView::new(&hd.x[..], &[s, t, hd.h]).expect("x");
        let w = TensorView::new(&hd.w[..], &[v, hd.h]).expect("w");
        let head = match &hd.b {
            Some(b) => Head::with_bias(x, w, TensorView::new(&b[..], &[v]).expect("b")),
            None => Head::new(x, w),
        };
        set = set.head(name, head);
    }
    for (name, shape) in &o.shapes {
        let view = if let Some(x) = o.ids.get(name) {
            TensorView::new(&x[..], shape)
        } else if let Some(x) = o.masks.get(name) {
            TensorView::new(&x[..], shape)
        } else {
            TensorView::new(&o.f32s[name][..], shape)
        };
        set = set.tensor(name, view.expect("view"));
    }
    set
}

/// `|a - b| <= atol + rtol |b|`, relative to the reference's scale.
fn close_all(what: &str, got: &[f32], want: &[f64], tol: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, the oracle has {}",
            got.len(),
            want.len()
        ));
    }
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let a = f64::from(*a);
        let ok = (a - b).abs() <= tol * (1.0 + scale) + tol * b.abs();
        if !ok {
            return Err(format!(
                "{what}[{i}] = {a}, the oracle says {b} (scale {scale:.3e})"
            ));
        }
    }
    Ok(())
}

/// What [`check`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Checked {
    /// Executor runs.
    pub runs: usize,
    /// Whether the results were compared (not next to a kink, see [`near_kink`]).
    pub compared: bool,
}

/// Runs `case` on `rt` under every applicable strategy at two budgets (one chunk; a few rows
/// per chunk), comparing everything with the oracle within `tol`; also emits the CUDA module of
/// every strategy (bf16 and f32 GEMMs), which must succeed.
pub fn check(case: &DiffCase, rt: &Runtime, tol: f64) -> Result<Checked, String> {
    let p = Pipeline::new(case.f.clone()).map_err(|e| format!("{}: {e}", case.name))?;
    for s in &p.schedule().candidates {
        for dt in [GemmDType::BF16, GemmDType::F32] {
            p.module(*s, &EmitOptions::new(dt))
                .map_err(|e| format!("{} {s}: {e}", case.name))?;
        }
    }
    let want = oracle(case, &p);
    let compare = !near_kink(case, &p);
    let o = owned(case);
    let set = input_set(case, &o);
    let mut runs = 0;
    for s in p.schedule().candidates.clone() {
        for budget in [64usize << 20, 5 << 20] {
            let opts = RunOptions {
                ignore_index: case.batch.ignore_index,
                chunk_memory: budget,
                schedule: Some(s),
                ..RunOptions::default()
            };
            let what = format!("{} {s} budget {budget}", case.name);
            if std::env::var("DIFF_DEBUG").is_ok() {
                eprintln!("running {what}");
            }
            let got = match (rt.run(&p, &set, &o.hyper, &opts), &want) {
                (Err(RtError::Budget { .. }), _) => continue,
                (Err(e), Err(w)) => {
                    // Both refuse the data (e.g. a sequence with no valid row).
                    let _ = (e, w);
                    runs += 1;
                    continue;
                }
                (Err(e), Ok(_)) => return Err(format!("{what}: the executor failed: {e}")),
                (Ok(_), Err(w)) => {
                    return Err(format!("{what}: the executor ran, the oracle refused: {w}"));
                }
                (Ok(g), Ok(_)) => g,
            };
            let Ok(want) = &want else { unreachable!() };
            runs += 1;
            if !compare {
                continue;
            }
            close_all(&format!("{what}: loss"), &[got.loss], &[want.loss], tol)?;
            for m in &got.metrics {
                close_all(
                    &format!("{what}: metric {}", m.name),
                    &m.values,
                    &want.metrics[&m.name],
                    tol,
                )?;
            }
            for g in &got.grads {
                let (dx, dw, db) = &want.grads[&g.head];
                close_all(
                    &format!("{what}: dx of {}", g.head),
                    &g.x.as_ref().expect("gradient").to_f32(),
                    dx,
                    tol,
                )?;
                close_all(
                    &format!("{what}: dW of {}", g.head),
                    &g.w.as_ref().expect("gradient").to_f32(),
                    dw,
                    tol,
                )?;
                if let (Some(a), Some(b)) = (&g.b, db) {
                    close_all(&format!("{what}: db of {}", g.head), &a.to_f32(), b, tol)?;
                }
            }
        }
    }
    Ok(Checked {
        runs,
        compared: compare,
    })
}

/// A `.lir` file test: the file's loss with random data for every input kind, sizes and
/// hyperparameters from its `; data:` and `; param:` lines (`; data: S=4 T=5 V=7 H=3 bias`
/// and `; param: beta=0.1`), targets ignored at about 30% of the rows (`ignore_index` 42
/// with `; data: … ignore=42`).
pub fn lir_case(path: &std::path::Path, seed: u64) -> DiffCase {
    let text = std::fs::read_to_string(path).expect("readable");
    let f = liger::ir::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let field = |line: &str, key: &str| -> Option<String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
    };
    let data = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("; data:"))
        .unwrap_or("");
    let num = |k: &str, d: usize| field(data, k).map_or(d, |x| x.parse().expect("size"));
    let (s, t, v, h) = (num("S", 4), num("T", 5), num("V", 7), num("H", 3));
    let ignore: i64 = field(data, "ignore").map_or(-100, |x| x.parse().expect("ignore"));
    let bias = data.split_whitespace().any(|w| w == "bias");
    let params: BTreeMap<String, f64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("; param:"))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, x)| (k.to_string(), x.parse().expect("param value")))
        .collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut batch = HostBatch::new(s, t, v);
    batch.ignore_index = ignore;
    let mut heads = BTreeMap::new();
    let r = s * t;
    let nrm = |rng: &mut fastrand::Rng, sd: f64| super::normal(rng, sd);
    for input in &f.inputs {
        let name = input.name.clone();
        let val = match input.kind {
            InputKind::Logits | InputKind::Frozen => {
                heads.insert(
                    name,
                    HeadData {
                        x: (0..r * h).map(|_| nrm(&mut rng, 1.0) as f32).collect(),
                        w: (0..v * h).map(|_| nrm(&mut rng, 0.7) as f32).collect(),
                        b: bias.then(|| (0..v).map(|_| nrm(&mut rng, 0.3) as f32).collect()),
                        h,
                    },
                );
                continue;
            }
            InputKind::Target => HostInput::Ids(super::targets(&mut rng, s, t, v, ignore)),
            InputKind::Tokens => HostInput::Ids((0..r).map(|_| rng.usize(0..v) as i64).collect()),
            InputKind::RowInput => HostInput::Floats(
                (0..r)
                    .map(|_| f64::from(nrm(&mut rng, 1.0) as f32))
                    .collect(),
            ),
            InputKind::RowMask => {
                HostInput::Mask((0..r).map(|i| i % t == 0 || rng.f64() < 0.6).collect())
            }
            InputKind::SeqInput => HostInput::Floats(
                (0..s)
                    .map(|_| f64::from(nrm(&mut rng, 1.0) as f32))
                    .collect(),
            ),
            InputKind::SeqMask => HostInput::Mask((0..s).map(|_| rng.bool()).collect()),
            InputKind::VocabInput => {
                HostInput::Floats((0..v).map(|_| f64::from(0.5 + rng.f32())).collect())
            }
            InputKind::ScalarInput => HostInput::Scalar(f64::from(nrm(&mut rng, 1.0) as f32)),
            InputKind::Param => {
                HostInput::Scalar(f64::from(params.get(&name).copied().unwrap_or(0.3) as f32))
            }
        };
        batch.inputs.insert(name, val);
    }
    DiffCase {
        name: path
            .file_name()
            .map_or("?".into(), |n| n.to_string_lossy().into_owned()),
        f,
        batch,
        heads,
    }
}

/// A generated case (`liger-ir`'s random loss generator) as a differential case: each head's
/// logits become `x` with `W = I` (so `H = V` and the executor's logits are the generator's,
/// rounded to f32).
pub fn generated_case(seed: u64, focus: Option<&str>) -> DiffCase {
    let c = super::ircommon::generator::random_case(seed, focus);
    let v = c.batch.vocab;
    let mut batch = c.batch.clone();
    let mut heads = BTreeMap::new();
    for input in &c.f.inputs {
        if !input.kind.is_head() {
            continue;
        }
        let Some(HostInput::Logits(z)) = batch.inputs.remove(&input.name) else {
            panic!("generated head without logits");
        };
        let mut w = vec![0f32; v * v];
        for j in 0..v {
            w[j * v + j] = 1.0;
        }
        heads.insert(
            input.name.clone(),
            HeadData {
                x: z.iter().map(|&a| a as f32).collect(),
                w,
                b: None,
                h: v,
            },
        );
    }
    // The oracle sees exactly the f32 data the executor gets.
    for val in batch.inputs.values_mut() {
        match val {
            HostInput::Floats(x) => x.iter_mut().for_each(|a| *a = f64::from(*a as f32)),
            HostInput::Scalar(a) => *a = f64::from(*a as f32),
            _ => {}
        }
    }
    DiffCase {
        name: format!("generated seed {seed}"),
        f: c.f,
        batch,
        heads,
    }
}
