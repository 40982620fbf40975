//! Simple Preference Optimisation.

use crate::prelude::*;

/// SimPO: `−(1−ε)·logσ(Δ) − ε·logσ(−Δ)` per pair with `Δ = β(A_c − A_r) − γ` on the
/// length-normalised log-probs `A` (the mean over each sequence's valid tokens), averaged over
/// pairs; no reference model.
///
/// `γ = gamma` is subtracted as is (Liger's convention; TRL's CPO-simpo writes
/// `β(A_c − A_r − γ/β)`, the same thing). With `nll`, `alpha` times the mean NLL of the chosen
/// sequences' valid tokens is added: off by default, as the paper and Liger's function have it
/// (Liger's module turns it on). Metrics: the rewards `β·A` and log-probs `A` of each side (per
/// pair), `reward_margin`, `reward_accuracy`, the NLL term with `nll`, and with
/// `logits_metrics` the mean logit of each side over every position and vocabulary entry.
#[chunked_loss]
pub fn simpo(
    policy: Logits,
    target: Target,
    #[default(0.1)]
    #[range(gt = 0.0)]
    beta: f32,
    #[default(0.5)] gamma: f32,
    #[default(1.0)] alpha: f32,
    #[default(0.0)]
    #[range(0.0..=0.5)]
    label_smoothing: f32,
    #[variant] nll: bool,
    #[variant] logits_metrics: bool,
) -> Loss {
    let lp = logprob(policy, target);
    let avg = seq_mean(lp);
    let a = beta * chosen(avg);
    let b = beta * rejected(avg);
    let d = a - b - gamma;
    metric("chosen_rewards", a);
    metric("rejected_rewards", b);
    metric("chosen_logps", chosen(avg));
    metric("rejected_logps", rejected(avg));
    metric("reward_margin", mean(a - b));
    metric("reward_accuracy", mean(select(a > b, 1.0, 0.0)));
    if logits_metrics {
        let per_seq = seq_sum(sum_vocab(policy), every_row());
        let n = num_pairs() * seq_len() * vocab_size();
        metric("chosen_logits_mean", sum(chosen(per_seq)) / n);
        metric("rejected_logits_mean", sum(rejected(per_seq)) / n);
    }
    let eps = label_smoothing;
    let preference = mean(-(1.0 - eps) * log_sigmoid(d) - eps * log_sigmoid(-d));
    if nll {
        let nll_loss = sum(chosen(seq_sum(-lp))) / max(sum(chosen(seq_count())), 1.0);
        metric("nll_loss", nll_loss);
        preference + alpha * nll_loss
    } else {
        preference
    }
}
