//! Several ranks on the CPU, simulated as threads (`LocalGroup`).
//!
//! Data parallel: every built-in loss (and a custom one from source) split by sequences (by
//! pairs for the preference losses) over 2 and 3 ranks gives every rank the single-device
//! loss and batch-level metrics, its own rows' metrics and `dx`, and `dW`/`db` shares that add
//! up to the single-device gradient; a rank whose rows are all masked changes nothing.
//!
//! Vocab parallel: the same losses with every head's vocabulary rows split over 2 and 3 ranks
//! (V = 37: shards of unequal sizes) give every rank the single-device loss, metrics and `dx`,
//! and its shard's rows of `dW`/`db`.
//!
//! Ranks that disagree get a typed error each, never a hang.

mod common;

use common::{randn, targets};
use liger::runtime::Error as RtError;
use liger::runtime::comm::{Communicator, GradShare, LocalGroup, LocalRank};
use liger::{ChunkedLoss, Head, InputSet, LossOutput, ParamSet, RunOptions, TensorView};

/// A side input's values.
#[derive(Clone, Debug)]
enum Data {
    F(Vec<f32>),
    I(Vec<i64>),
    B(Vec<bool>),
}

/// A batch: heads `(name, h, x [S,T,h], W [V,h])` and side inputs `(name, data, per-sequence
/// block or 0 for a whole-batch input, shape past S)`.
#[derive(Clone, Debug)]
struct Batch {
    s: usize,
    t: usize,
    v: usize,
    heads: Vec<(&'static str, usize, Vec<f32>, Vec<f32>)>,
    side: Vec<(&'static str, Data, usize, Vec<usize>)>,
}

fn batch(loss: &str, s: usize, t: usize, h: usize, v: usize, seed: u64) -> Batch {
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
fn split(s: usize, world: usize, pairs: bool) -> Vec<Vec<usize>> {
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
fn select(b: &Batch, seqs: &[usize]) -> Batch {
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
fn with_inputs<R>(b: &Batch, f: impl FnOnce(&InputSet<'_>) -> R) -> R {
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
fn builtin(name: &str) -> &'static (dyn ChunkedLoss + Sync) {
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
fn on_ranks(
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

fn run_ranks(
    loss: &(dyn ChunkedLoss + Sync),
    params: &ParamSet,
    parts: &[Batch],
    opts: &RunOptions,
    share: GradShare,
) -> Vec<Result<LossOutput, liger::Error>> {
    let rt = liger::Runtime::cpu();
    on_ranks(parts, |set, comm| {
        liger::run_data_parallel(loss, &rt, set, params, opts, comm, share)
    })
}

fn close(what: &str, got: f32, want: f32) {
    let (g, w) = (f64::from(got), f64::from(want));
    assert!(
        (g - w).abs() <= 2e-6 + 2e-5 * w.abs(),
        "{what}: {got} vs single device {want}"
    );
}

/// Every rank's outputs against the single-device run of the whole batch.
fn compare(what: &str, full: &LossOutput, b: &Batch, seqs: &[Vec<usize>], outs: &[LossOutput]) {
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

fn check(
    loss: &(dyn ChunkedLoss + Sync),
    params: &ParamSet,
    b: &Batch,
    world: usize,
    opts: &RunOptions,
) {
    let pairs = matches!(loss.name(), "dpo" | "cpo" | "simpo" | "orpo");
    let full = with_inputs(b, |set| {
        liger::run(loss, &liger::Runtime::cpu(), set, params, opts).expect("single device")
    });
    let seqs = split(b.s, world, pairs);
    let parts: Vec<Batch> = seqs.iter().map(|q| select(b, q)).collect();
    let outs: Vec<LossOutput> = run_ranks(loss, params, &parts, opts, GradShare::Share)
        .into_iter()
        .map(|o| o.unwrap_or_else(|e| panic!("{}: {e}", loss.name())))
        .collect();
    compare(&format!("{} x{world}", loss.name()), &full, b, &seqs, &outs);
}

#[test]
fn every_builtin_loss_splits_over_ranks() {
    let opts = RunOptions::default();
    for loss in liger::losses::builtin() {
        let loss = builtin(loss.name());
        let pairs = matches!(loss.name(), "dpo" | "cpo" | "simpo" | "orpo");
        let s = if pairs { 10 } else { 7 };
        let b = batch(loss.name(), s, 9, 6, 37, 5);
        for world in [2, 3] {
            check(loss, &ParamSet::new(), &b, world, &opts);
        }
    }
    // Variants whose normalisers are whole-batch counts: GRPO's token-level DAPO and DPO's
    // per-token averages.
    let b = batch("grpo", 7, 9, 6, 37, 8);
    let dapo = ParamSet::new().variant("loss_type", "Dapo");
    check(&liger::losses::Grpo, &dapo, &b, 3, &opts);
    let b = batch("dpo", 10, 9, 6, 37, 9);
    let avg = ParamSet::new()
        .variant("average", "true")
        .variant("nll", "true");
    check(&liger::losses::Dpo, &avg, &b, 2, &opts);
}

#[test]
fn a_rank_with_every_row_masked_and_a_custom_loss() {
    let opts = RunOptions::default();
    for name in ["flce", "jsd"] {
        let mut b = batch(name, 6, 9, 5, 41, 11);
        // Sequences 2 and 3 (rank 1 of 3) carry no token.
        if let Some((_, Data::I(t), _, _)) = b.side.iter_mut().find(|s| s.0 == "target") {
            for x in &mut t[2 * 9..4 * 9] {
                *x = -100;
            }
        }
        check(builtin(name), &ParamSet::new(), &b, 3, &opts);
    }
    let src = "use liger::prelude::*;\n\
        #[chunked_loss]\n\
        pub fn tempered_ce(logits: Logits, target: Target, #[default(2.0)] temperature: f32) -> Loss {\n\
            mean(-logprob(logits / temperature, target)) + 0.1 * mean(seq_sum(logsumexp(logits), valid(target)))\n\
        }\n";
    let custom = liger::compile_loss(src, "test")
        .expect("compiles")
        .remove(0);
    let b = batch("custom", 5, 7, 4, 29, 12);
    check(
        &custom,
        &ParamSet::new().float("temperature", 0.7),
        &b,
        2,
        &opts,
    );
}

#[test]
fn shares_summed_or_scaled_for_an_averaging_all_reduce() {
    let b = batch("flce", 6, 5, 4, 23, 13);
    let seqs = split(6, 2, false);
    let parts: Vec<Batch> = seqs.iter().map(|q| select(&b, q)).collect();
    let flce = &liger::losses::Flce;
    let opts = RunOptions::default();
    let run = |share| -> Vec<Vec<f32>> {
        run_ranks(flce, &ParamSet::new(), &parts, &opts, share)
            .into_iter()
            .map(|o| o.expect("rank").grads[0].w.as_ref().expect("dW").to_f32())
            .collect()
    };
    let (share, avg, summed) = (
        run(GradShare::Share),
        run(GradShare::ForAverage),
        run(GradShare::Summed),
    );
    for r in 0..2 {
        for i in 0..share[r].len() {
            close(
                "x2 for an averaging all-reduce",
                avg[r][i],
                2.0 * share[r][i],
            );
            close("summed", summed[r][i], share[0][i] + share[1][i]);
        }
    }
    assert_eq!(summed[0], summed[1], "every rank holds the same sum");
}

#[test]
fn ranks_that_disagree_all_get_a_typed_error() {
    let flce = &liger::losses::Flce;
    let b = batch("flce", 4, 6, 4, 23, 14);
    let parts = vec![select(&b, &[0, 1]), select(&b, &[2, 3])];
    // Another T on rank 1.
    let mut other = batch("flce", 2, 7, 4, 23, 15);
    other.heads[0].3 = b.heads[0].3.clone();
    let res = run_ranks(
        flce,
        &ParamSet::new(),
        &[parts[0].clone(), other],
        &RunOptions::default(),
        GradShare::Share,
    );
    for r in &res {
        match r {
            Err(liger::Error::Runtime(RtError::Rank { why, .. })) => {
                assert!(why.contains("disagree"), "{why}")
            }
            other => panic!("expected a rank error, got {other:?}"),
        }
    }
    // Another hyperparameter on one rank: the threads pass different parameters.
    let rt = liger::Runtime::cpu();
    let res = on_ranks(&parts, |set, comm| {
        let ps = ParamSet::new().float("label_smoothing", 0.1 * comm.rank() as f32);
        let opts = RunOptions::default();
        liger::run_data_parallel(flce, &rt, set, &ps, &opts, comm, GradShare::Share)
    });
    assert!(
        res.iter()
            .all(|r| matches!(r, Err(liger::Error::Runtime(RtError::Rank { .. }))))
    );
    // A rank whose input is bad: its own error, and the others are told.
    let mut bad = parts[1].clone();
    if let Some((_, Data::I(t), _, _)) = bad.side.iter_mut().find(|s| s.0 == "target") {
        t[0] = 99;
    }
    let res = run_ranks(
        flce,
        &ParamSet::new(),
        &[parts[0].clone(), bad],
        &RunOptions::default(),
        GradShare::Share,
    );
    let msgs: Vec<String> = res
        .iter()
        .map(|r| r.as_ref().expect_err("fails").to_string())
        .collect();
    assert!(msgs[1].contains("99"), "{}", msgs[1]);
    assert!(msgs[0].contains("rank 1"), "{}", msgs[0]);
}

/// The batch with every head's vocabulary rows `a..b` (and the bias and per-vocabulary inputs').
fn shard(b: &Batch, a: usize, e: usize) -> Batch {
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

fn run_vocab_ranks(
    loss: &(dyn ChunkedLoss + Sync),
    params: &ParamSet,
    parts: &[Batch],
    opts: &RunOptions,
) -> Vec<Result<LossOutput, liger::Error>> {
    let rt = liger::Runtime::cpu();
    on_ranks(parts, |set, comm| {
        liger::run_vocab_parallel(loss, &rt, set, params, opts, comm)
    })
}

fn check_vocab(loss: &(dyn ChunkedLoss + Sync), params: &ParamSet, b: &Batch, world: usize) {
    let opts = RunOptions::default();
    let what = format!("{} vocab x{world}", loss.name());
    let full = with_inputs(b, |set| {
        liger::run(loss, &liger::Runtime::cpu(), set, params, &opts).expect("single device")
    });
    let bounds: Vec<(usize, usize)> = (0..world)
        .map(|r| (r * b.v / world, (r + 1) * b.v / world))
        .collect();
    let parts: Vec<Batch> = bounds.iter().map(|&(a, e)| shard(b, a, e)).collect();
    let outs: Vec<LossOutput> = run_vocab_ranks(loss, params, &parts, &opts)
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

#[test]
fn every_builtin_loss_splits_over_vocabulary_shards() {
    for loss in liger::losses::builtin() {
        let loss = builtin(loss.name());
        let pairs = matches!(loss.name(), "dpo" | "cpo" | "simpo" | "orpo");
        let s = if pairs { 4 } else { 3 };
        let b = batch(loss.name(), s, 9, 6, 37, 21);
        for world in [2, 3] {
            check_vocab(loss, &ParamSet::new(), &b, world);
        }
    }
    // Variants with every vocab reduction kind: label smoothing (a sum over the vocabulary),
    // z-loss and softcap (logsumexp of a transformed row), class weights (a per-vocabulary
    // input, sharded), the accuracy metric (argmax); GRPO with DAPO.
    let mut b = batch("flce", 3, 9, 6, 37, 22);
    let mut rng = fastrand::Rng::with_seed(23);
    let cw: Vec<f32> = (0..37).map(|_| 0.5 + rng.f32()).collect();
    b.side.push(("class_weight", Data::F(cw), 0, vec![37]));
    let ps = ParamSet::new()
        .float("label_smoothing", 0.1)
        .float("z_loss_scale", 1e-3)
        .variant("softcap", "true")
        .float("softcap_value", 5.0);
    check_vocab(builtin("flce"), &ps, &b, 3);
    let b = batch("grpo", 3, 9, 6, 37, 24);
    check_vocab(
        builtin("grpo"),
        &ParamSet::new().variant("loss_type", "Dapo"),
        &b,
        2,
    );
    let src = "use liger::prelude::*;\n\
        #[chunked_loss]\n\
        pub fn tempered_ce(logits: Logits, target: Target, #[default(2.0)] temperature: f32) -> Loss {\n\
            mean(-logprob(logits / temperature, target)) + 0.1 * mean(seq_sum(logsumexp(logits), valid(target)))\n\
        }\n";
    let custom = liger::compile_loss(src, "test")
        .expect("compiles")
        .remove(0);
    let b = batch("custom", 3, 7, 4, 29, 25);
    check_vocab(&custom, &ParamSet::new().float("temperature", 0.7), &b, 3);
}

#[test]
fn vocabulary_shards_that_disagree_are_refused_on_every_rank() {
    let b = batch("flce", 2, 5, 4, 23, 26);
    let flce = builtin("flce");
    let same = vec![shard(&b, 0, 11), shard(&b, 11, 23)];
    let ok = run_vocab_ranks(flce, &ParamSet::new(), &same, &RunOptions::default());
    assert!(ok.iter().all(Result::is_ok));
    // Another T on one rank.
    let mut longer = batch("flce", 2, 6, 4, 23, 26);
    longer = shard(&longer, 11, 23);
    let res = run_vocab_ranks(
        flce,
        &ParamSet::new(),
        &[shard(&b, 0, 11), longer],
        &RunOptions::default(),
    );
    for r in &res {
        assert!(
            matches!(r, Err(liger::Error::Runtime(RtError::Rank { .. }))),
            "{r:?}"
        );
    }
    // A target beyond the whole vocabulary is refused; one beyond a shard is not.
    let mut bad = b.clone();
    if let Some((_, Data::I(t), _, _)) = bad.side.iter_mut().find(|s| s.0 == "target") {
        t[0] = 23;
    }
    let res = run_vocab_ranks(
        flce,
        &ParamSet::new(),
        &[shard(&bad, 0, 11), shard(&bad, 11, 23)],
        &RunOptions::default(),
    );
    assert!(res.iter().all(Result::is_err));
}

#[test]
fn data_parallel_over_many_chunks_with_unequal_ranks_runs_two_passes() {
    // Chunks of one sequence, ranks of 1, 2 and 2 pairs: a group-aligned or deferred run
    // would evaluate its group stage a different number of times on each rank.
    let opts = RunOptions {
        rows: Some(liger::ForcedRows {
            chunk: 9,
            stage: None,
        }),
        ..RunOptions::default()
    };
    for name in ["dpo", "kto", "orpo"] {
        let s = if name == "kto" { 7 } else { 10 };
        let b = batch(name, s, 9, 6, 37, 31);
        check(builtin(name), &ParamSet::new(), &b, 3, &opts);
    }
    // A rank whose pairs carry no token at all.
    let mut b = batch("dpo", 10, 9, 6, 37, 32);
    if let Some((_, Data::I(t), _, _)) = b.side.iter_mut().find(|s| s.0 == "target") {
        for q in [0usize, 5] {
            for x in &mut t[q * 9..(q + 1) * 9] {
                *x = -100;
            }
        }
    }
    check(
        builtin("dpo"),
        &ParamSet::new(),
        &b,
        3,
        &RunOptions::default(),
    );
    // Forcing a per-group schedule is refused on every rank, saying why.
    let forced = RunOptions {
        schedule: Some(liger::Strategy::GroupAligned),
        ..RunOptions::default()
    };
    let b = batch("dpo", 4, 9, 6, 37, 33);
    let parts: Vec<Batch> = split(4, 2, true).iter().map(|q| select(&b, q)).collect();
    for r in run_ranks(
        builtin("dpo"),
        &ParamSet::new(),
        &parts,
        &forced,
        GradShare::Share,
    ) {
        let e = r.expect_err("refused").to_string();
        assert!(e.contains("two passes") || e.contains("gave up"), "{e}");
    }
}
