//! Contrastive Preference Optimisation.

use crate::prelude::*;

/// CPO: `−(1−ε)·logσ(Δ) − ε·logσ(−Δ)` per pair with `Δ = β(π_c − π_r)`, averaged over pairs,
/// plus `alpha` times the mean NLL of the chosen sequences' valid tokens (`nll`, on by default
/// as in Liger and TRL).
///
/// `π` are the policy's sequence log-probs, summed over valid tokens (TRL's CPO "sigmoid") or
/// averaged with `average`; no reference model. With no valid chosen token the NLL term is 0.
/// Metrics: the rewards `β·π` and log-probs of each side (per pair), `reward_margin`,
/// `reward_accuracy`, the NLL term with `nll`, and with `logits_metrics` the mean logit of each
/// side over every position and vocabulary entry.
#[chunked_loss]
pub fn cpo(
    policy: Logits,
    target: Target,
    #[default(0.1)]
    #[range(gt = 0.0)]
    beta: f32,
    #[default(1.0)] alpha: f32,
    #[default(0.0)]
    #[range(0.0..=0.5)]
    label_smoothing: f32,
    #[variant]
    #[default(true)]
    nll: bool,
    #[variant] average: bool,
    #[variant] logits_metrics: bool,
) -> Loss {
    let lp = logprob(policy, target);
    let pi = if average { seq_mean(lp) } else { seq_sum(lp) };
    let a = beta * chosen(pi);
    let b = beta * rejected(pi);
    let d = a - b;
    metric("chosen_rewards", a);
    metric("rejected_rewards", b);
    metric("chosen_logps", chosen(pi));
    metric("rejected_logps", rejected(pi));
    metric("reward_margin", mean(d));
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
