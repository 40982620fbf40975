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

use common::ranks::*;
use liger::runtime::Error as RtError;
use liger::runtime::comm::{Communicator, GradShare};
use liger::{ChunkedLoss, LossOutput, ParamSet, RunOptions};

fn run_ranks(
    loss: &(dyn ChunkedLoss + Sync),
    params: &ParamSet,
    parts: &[Batch],
    opts: &RunOptions,
    share: GradShare,
) -> Vec<Result<LossOutput, liger::Error>> {
    run_data_ranks(loss, params, parts, opts, share, "cpu")
}

fn check(
    loss: &(dyn ChunkedLoss + Sync),
    params: &ParamSet,
    b: &Batch,
    world: usize,
    opts: &RunOptions,
) {
    check_data(loss, params, b, world, opts, "cpu");
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
    let custom = tempered_ce();
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
fn run_vocab_ranks(
    loss: &(dyn ChunkedLoss + Sync),
    params: &ParamSet,
    parts: &[Batch],
    opts: &RunOptions,
) -> Vec<Result<LossOutput, liger::Error>> {
    vocab_ranks(loss, params, parts, opts, "cpu")
}

fn check_vocab(loss: &(dyn ChunkedLoss + Sync), params: &ParamSet, b: &Batch, world: usize) {
    check_vocab_on(loss, params, b, world, &RunOptions::default(), "cpu");
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
    let custom = tempered_ce();
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

#[test]
fn every_builtin_specialisation_can_run_data_parallel_on_cuda() {
    // The CUDA executor's data-parallel path evaluates whole-batch values on the host and
    // refuses a loss whose vocabulary streams read a batch size directly: no built-in does.
    for loss in liger::losses::builtin() {
        for spec in loss.specializations() {
            let p = match liger::pipeline(loss, spec) {
                Ok(p) => p,
                // A combination the loss refuses (DPO with neither reference kind).
                Err(liger::Error::Refused { .. }) => continue,
                Err(e) => panic!("{} [{}]: {e}", loss.name(), spec.describe()),
            };
            if let Err(e) = liger::runtime::cuda::backend::data_parallel_ready(&p) {
                panic!("{} [{}]: {e}", loss.name(), spec.describe());
            }
        }
    }
    // A custom loss whose stream reads the number of sequences is refused by name.
    let custom = per_seq();
    let (p, _) =
        liger::pipeline_for(&custom, &["logits", "target"], &ParamSet::new()).expect("pipeline");
    match liger::runtime::cuda::backend::data_parallel_ready(&p) {
        Err(RtError::Device { why, .. }) => {
            assert!(why.contains("number of sequences"), "{why}")
        }
        other => panic!("a stream reading num_seqs must be refused, got {other:?}"),
    }
}
