//! Several ranks as threads of one process (`LocalGroup`): batches of every built-in loss, split
//! by sequences (by pairs for the paired losses), each rank's run against the single-device
//! run of the whole batch; and batches split by vocabulary shards. Shared by the CPU suite
//! (`tests/parallel.rs`) and the GPU suite (both modes on the CUDA executor).
#![allow(dead_code)]

use super::{randn, targets};
use liger::runtime::comm::{Communicator, GradShare, LocalGroup, LocalRank};
use liger::{ChunkedLoss, Head, InputSet, LossOutput, ParamSet, RunOptions, TensorView};

/// A side input's values.
#[derive(Clone, Debug)]
pub enum Data {
    F(Vec<f32>),
    I(Vec<i64>),
    B(Vec<bool>),
}

/// A batch: heads `(name, h, x [S,T,h], W [V,h])` and side inputs `(name, data, per-sequence
/// block or 0 for a whole-batch input, shape past S)`.
#[derive(Clone, Debug)]
pub struct Batch {
    pub s: usize,
    pub t: usize,
    pub v: usize,
    pub heads: Vec<(&'static str, usize, Vec<f32>, Vec<f32>)>,
    pub side: Vec<(&'static str, Data, usize, Vec<usize>)>,
}

pub fn batch(loss: &str, s: usize, t: usize, h: usize, v: usize, seed: u64) -> Batch {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut head = |name: &'static str| {
        (
            name,
            h,
            randn(&mut rng, s * t * h, 1.0),
            randn(&mut rng, v * h, 0.6),
        )
    };
    let heads = match loss {
        "dpo" | "kto" => vec![head("policy"), head("reference")],
        "cpo" | "simpo" | "orpo" | "grpo" => vec![head("policy")],
        "jsd" | "kl_distill" | "cosine_distill" => vec![head("student"), head("teacher")],
        _ => vec![head("logits")],
    };
    let mut rng = fastrand::Rng::with_seed(seed + 1);
    let mut side = Vec::new();
    if loss == "grpo" {
        let tokens: Vec<i64> = (0..s * t).map(|_| rng.usize(0..v) as i64).collect();
        let mask: Vec<bool> = (0..s * t).map(|i| i % t >= 2 && rng.f32() < 0.8).collect();
        let adv: Vec<f32> = (0..s).map(|i| i as f32 * 0.7 - 2.0).collect();
        side.push(("target", Data::I(tokens), t, vec![t]));
        side.push(("mask", Data::B(mask), t, vec![t]));
        side.push(("advantages", Data::F(adv), 1, vec![]));
    } else {
        side.push((
            "target",
            Data::I(targets(&mut rng, s, t, v, -100)),
            t,
            vec![t],
        ));
    }
    if loss == "kto" {
        let pref: Vec<bool> = (0..s).map(|i| i % 3 != 1).collect();
        side.push(("preference", Data::B(pref), 1, vec![]));
        side.push(("kl", Data::F(vec![0.3]), 0, vec![]));
    }
    Batch {
        s,
        t,
        v,
        heads,
        side,
    }
}

/// The sequences of each of `world` ranks: contiguous, or for pair losses the chosen and
/// rejected sequences of contiguous pairs (chosen first, as every rank lays a batch out).
pub fn split(s: usize, world: usize, pairs: bool) -> Vec<Vec<usize>> {
    let n = if pairs { s / 2 } else { s };
    (0..world)
        .map(|r| {
            let (a, b) = (r * n / world, (r + 1) * n / world);
            if pairs {
                (a..b).chain((a..b).map(|i| i + n)).collect()
            } else {
                (a..b).collect()
            }
        })
        .collect()
}

/// The batch of sequences `seqs`.
pub fn select(b: &Batch, seqs: &[usize]) -> Batch {
    fn pick<T: Clone>(x: &[T], seqs: &[usize], block: usize) -> Vec<T> {
        seqs.iter()
            .flat_map(|&q| x[q * block..(q + 1) * block].to_vec())
            .collect()
    }
    Batch {
        s: seqs.len(),
        t: b.t,
        v: b.v,
        heads: b
            .heads
            .iter()
            .map(|(n, h, x, w)| (*n, *h, pick(x, seqs, b.t * h), w.clone()))
            .collect(),
        side: b
            .side
            .iter()
            .map(|(n, d, block, tail)| {
                let d = match (d, *block) {
                    (d, 0) => d.clone(),
                    (Data::F(x), k) => Data::F(pick(x, seqs, k)),
                    (Data::I(x), k) => Data::I(pick(x, seqs, k)),
                    (Data::B(x), k) => Data::B(pick(x, seqs, k)),
                };
                (*n, d, *block, tail.clone())
            })
            .collect(),
    }
}

/// Runs `f` on the batch's inputs (shapes kept alive here).
pub fn with_inputs<R>(b: &Batch, f: impl FnOnce(&InputSet<'_>) -> R) -> R {
    let xs: Vec<[usize; 3]> = b.heads.iter().map(|h| [b.s, b.t, h.1]).collect();
    let ws: Vec<[usize; 2]> = b.heads.iter().map(|h| [b.v, h.1]).collect();
    let shapes: Vec<Vec<usize>> = b
        .side
        .iter()
        .map(|(_, _, block, tail)| {
            if *block == 0 {
                tail.clone()
            } else {
                std::iter::once(b.s).chain(tail.iter().copied()).collect()
            }
        })
        .collect();
    let mut set = InputSet::new();
    for (k, (name, _, x, w)) in b.heads.iter().enumerate() {
        set = set.head(
            name,
            Head::new(
                TensorView::new(x, &xs[k]).expect("x"),
                TensorView::new(w, &ws[k]).expect("w"),
            ),
        );
    }
    for ((name, d, _, _), sh) in b.side.iter().zip(&shapes) {
        let view = match d {
            Data::F(x) => TensorView::new(x, sh),
            Data::I(x) => TensorView::new(x, sh),
            Data::B(x) => TensorView::new(x, sh),
        };
        set = set.tensor(name, view.expect("side input"));
    }
    f(&set)
}

/// The built-in loss `name`, shareable between the rank threads.
pub fn builtin(name: &str) -> &'static (dyn ChunkedLoss + Sync) {
    use liger::losses::*;
    match name {
        "dpo" => &Dpo,
        "cpo" => &Cpo,
        "simpo" => &Simpo,
        "orpo" => &Orpo,
        "kto" => &Kto,
        "grpo" => &Grpo,
        "flce" => &Flce,
        "jsd" => &Jsd,
        "kl_distill" => &KlDistill,
        "cosine_distill" => &CosineDistill,
        other => panic!("no built-in {other}"),
    }
}

/// Runs `f` on every rank's part in its own thread, with its communicator.
pub fn on_ranks(
    parts: &[Batch],
    f: impl Fn(&InputSet<'_>, &LocalRank) -> Result<LossOutput, liger::Error> + Sync,
) -> Vec<Result<LossOutput, liger::Error>> {
    let ranks = LocalGroup::ranks(parts.len());
    std::thread::scope(|sc| {
        let hs: Vec<_> = ranks
            .iter()
            .zip(parts)
            .map(|(comm, part)| {
                let f = &f;
                sc.spawn(move || with_inputs(part, |set| f(set, comm)))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("a rank thread"))
            .collect()
    })
}

pub fn close(what: &str, got: f32, want: f32) {
    let (g, w) = (f64::from(got), f64::from(want));
    assert!(
        (g - w).abs() <= 2e-6 + 2e-5 * w.abs(),
        "{what}: {got} vs single device {want}"
    );
}

/// Every rank's outputs against the single-device run of the whole batch.
pub fn compare(what: &str, full: &LossOutput, b: &Batch, seqs: &[Vec<usize>], outs: &[LossOutput]) {
    let t = b.t;
    for (r, out) in outs.iter().enumerate() {
        assert_eq!(
            out.loss.to_bits(),
            outs[0].loss.to_bits(),
            "{what}: every rank has the same loss"
        );
        close(&format!("{what} rank {r} loss"), out.loss, full.loss);
        for (m, fm) in out.metrics.iter().zip(&full.metrics) {
            assert_eq!(m.name, fm.name);
            let at = |i: usize| -> usize {
                // This rank's element i as an element of the whole batch.
                match m.level {
                    liger::ir::Level::Batch => 0,
                    liger::ir::Level::Row => seqs[r][i / t] * t + i % t,
                    liger::ir::Level::Seq => seqs[r][i],
                    liger::ir::Level::Pair => seqs[r][i],
                    liger::ir::Level::Vocab => i,
                }
            };
            for (i, v) in m.values.iter().enumerate() {
                close(
                    &format!("{what} rank {r} metric {}[{i}]", m.name),
                    *v,
                    fm.values[at(i)],
                );
            }
        }
        for (g, fg) in out.grads.iter().zip(&full.grads) {
            let h = b.heads.iter().find(|x| x.0 == g.head).expect("head").1;
            if let (Some(gx), Some(fx)) = (&g.x, &fg.x) {
                let (gx, fx) = (gx.to_f32(), fx.to_f32());
                for (i, v) in gx.iter().enumerate() {
                    let row = seqs[r][i / (t * h)] * t * h + i % (t * h);
                    close(&format!("{what} rank {r} dx {}[{i}]", g.head), *v, fx[row]);
                }
            }
        }
    }
    // dW and db: the ranks' shares add up to the single device's.
    for (k, fg) in full.grads.iter().enumerate() {
        for (part, f) in [("w", &fg.w), ("b", &fg.b)] {
            let Some(f) = f else { continue };
            let f = f.to_f32();
            let mut sum = vec![0f32; f.len()];
            for out in outs {
                let g = match part {
                    "w" => out.grads[k].w.as_ref(),
                    _ => out.grads[k].b.as_ref(),
                };
                for (s, x) in sum.iter_mut().zip(g.expect("a share").to_f32()) {
                    *s += x;
                }
            }
            for (i, (a, b)) in sum.iter().zip(&f).enumerate() {
                close(&format!("{what} d{part} {}[{i}]", fg.head), *a, *b);
            }
        }
    }
}

/// One runtime per rank for `device`, made before the rank threads start: a rank that
/// panicked before its first collective would leave the others waiting.
fn runtimes(n: usize, device: &str) -> Vec<liger::Runtime> {
    (0..n)
        .map(|_| liger::Runtime::for_device(device).expect("a runtime per rank"))
        .collect()
}

/// Every rank of a data-parallel group over `parts`, each with its own runtime for `device`
/// (`"cpu"`, `"cuda"`).
pub fn run_data_ranks(
    loss: &(dyn ChunkedLoss + Sync),
    params: &ParamSet,
    parts: &[Batch],
    opts: &RunOptions,
    share: GradShare,
    device: &str,
) -> Vec<Result<LossOutput, liger::Error>> {
    let rts = runtimes(parts.len(), device);
    on_ranks(parts, |set, comm| {
        let rt = &rts[comm.rank()];
        liger::run_data_parallel(loss, rt, set, params, opts, comm, share)
    })
}

/// `b` split over `world` ranks on `device` against the single-device run on `device`.
pub fn check_data(
    loss: &(dyn ChunkedLoss + Sync),
    params: &ParamSet,
    b: &Batch,
    world: usize,
    opts: &RunOptions,
    device: &str,
) {
    let pairs = matches!(loss.name(), "dpo" | "cpo" | "simpo" | "orpo");
    let rt = liger::Runtime::for_device(device).expect("a runtime");
    let full = with_inputs(b, |set| {
        liger::run(loss, &rt, set, params, opts).expect("single device")
    });
    let seqs = split(b.s, world, pairs);
    let parts: Vec<Batch> = seqs.iter().map(|q| select(b, q)).collect();
    let outs: Vec<LossOutput> =
        run_data_ranks(loss, params, &parts, opts, GradShare::Share, device)
            .into_iter()
            .map(|o| o.unwrap_or_else(|e| panic!("{}: {e}", loss.name())))
            .collect();
    compare(
        &format!("{} x{world} on {device}", loss.name()),
        &full,
        b,
        &seqs,
        &outs,
    );
}

/// `b` with every head's vocabulary rows `a..e` (and the per-vocabulary inputs' entries).
pub fn shard(b: &Batch, a: usize, e: usize) -> Batch {
    let mut out = b.clone();
    out.v = e - a;
    for (_, h, _, w) in &mut out.heads {
        *w = w[a * *h..e * *h].to_vec();
    }
    for (name, d, _, tail) in &mut out.side {
        if *name == "class_weight" {
            if let Data::F(x) = d {
                *x = x[a..e].to_vec();
            }
            *tail = vec![e - a];
        }
    }
    out
}

/// Every rank of a vocab-parallel group over `parts` (shards of one batch), each with its own
/// runtime for `device`.
pub fn vocab_ranks(
    loss: &(dyn ChunkedLoss + Sync),
    params: &ParamSet,
    parts: &[Batch],
    opts: &RunOptions,
    device: &str,
) -> Vec<Result<LossOutput, liger::Error>> {
    let rts = runtimes(parts.len(), device);
    on_ranks(parts, |set, comm| {
        let rt = &rts[comm.rank()];
        liger::run_vocab_parallel(loss, rt, set, params, opts, comm)
    })
}

/// `b`'s vocabulary split over `world` ranks (unequal shards where `world` does not divide
/// V) on `device`, against the single-device run on `device`: every rank's loss, metrics and
/// `dx` equal it, and its `dW`/`db` are the shard's rows of it.
pub fn check_vocab_on(
    loss: &(dyn ChunkedLoss + Sync),
    params: &ParamSet,
    b: &Batch,
    world: usize,
    opts: &RunOptions,
    device: &str,
) {
    let what = format!("{} vocab x{world} on {device}", loss.name());
    let rt = liger::Runtime::for_device(device).expect("a runtime");
    let full = with_inputs(b, |set| {
        liger::run(loss, &rt, set, params, opts).expect("single device")
    });
    let bounds: Vec<(usize, usize)> = (0..world)
        .map(|r| (r * b.v / world, (r + 1) * b.v / world))
        .collect();
    let parts: Vec<Batch> = bounds.iter().map(|&(a, e)| shard(b, a, e)).collect();
    let outs: Vec<LossOutput> = vocab_ranks(loss, params, &parts, opts, device)
        .into_iter()
        .map(|o| o.unwrap_or_else(|e| panic!("{what}: {e}")))
        .collect();
    for (r, (out, &(a, e))) in outs.iter().zip(&bounds).enumerate() {
        close(&format!("{what} rank {r} loss"), out.loss, full.loss);
        for (m, fm) in out.metrics.iter().zip(&full.metrics) {
            assert_eq!(m.values.len(), fm.values.len(), "{what}: metric {}", m.name);
            for (i, (x, y)) in m.values.iter().zip(&fm.values).enumerate() {
                close(&format!("{what} rank {r} metric {}[{i}]", m.name), *x, *y);
            }
        }
        for (g, fg) in out.grads.iter().zip(&full.grads) {
            let h = b.heads.iter().find(|x| x.0 == g.head).expect("head").1;
            let pairs: [(
                &str,
                Option<&liger::GradBuf>,
                Option<&liger::GradBuf>,
                usize,
            ); 3] = [
                ("x", g.x.as_ref(), fg.x.as_ref(), 0),
                ("w", g.w.as_ref(), fg.w.as_ref(), a * h),
                ("b", g.b.as_ref(), fg.b.as_ref(), a),
            ];
            for (part, got, want, from) in pairs {
                let (Some(got), Some(want)) = (got, want) else {
                    assert!(got.is_none() == want.is_none(), "{what}: {part}");
                    continue;
                };
                let (got, want) = (got.to_f32(), want.to_f32());
                let n = match part {
                    "x" => want.len(),
                    "w" => (e - a) * h,
                    _ => e - a,
                };
                assert_eq!(got.len(), n, "{what} rank {r} d{part} length");
                for (i, x) in got.iter().enumerate() {
                    close(
                        &format!("{what} rank {r} d{part} {}[{i}]", g.head),
                        *x,
                        want[from + i],
                    );
                }
            }
        }
    }
}

/// A custom loss from source for the rank tests: a tempered cross-entropy plus a per-sequence
/// term (a `seq_sum` and a `mean` over the batch).
pub fn tempered_ce() -> liger::DynLoss {
    let src = "use liger::prelude::*;\n\
        #[chunked_loss]\n\
        pub fn tempered_ce(logits: Logits, target: Target, #[default(2.0)] temperature: f32) -> Loss {\n\
            mean(-logprob(logits / temperature, target)) + 0.1 * mean(seq_sum(logsumexp(logits), valid(target)))\n\
        }\n";
    liger::compile_loss(src, "rank tests")
        .expect("compiles")
        .remove(0)
}

/// A custom loss whose vocabulary stream reads the number of sequences (which the CUDA
/// executor's data-parallel path refuses).
pub fn per_seq() -> liger::DynLoss {
    let src = "use liger::prelude::*;\n\
        #[chunked_loss]\n\
        pub fn per_seq(logits: Logits, target: Target) -> Loss {\n\
            mean(-logprob(logits, target) / num_seqs())\n\
        }\n";
    liger::compile_loss(src, "rank tests")
        .expect("compiles")
        .remove(0)
}
