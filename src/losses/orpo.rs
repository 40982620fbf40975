//! Odds Ratio Preference Optimisation.

use crate::prelude::*;

/// ORPO: the mean NLL of the chosen sequences' valid tokens plus `β·mean(−logσ(o))` over pairs,
/// with the log-odds ratio `o = (A_c − A_r) − (log(1 − e^{A_c}) − log(1 − e^{A_r}))` of the
/// length-normalised log-probs `A`.
///
/// The NLL reads `nll_target` when given (TRL computes it over prompt and completion while the
/// odds use the completion only), else `target`; with no valid chosen token it is 0. A sequence
/// of probability 1 (`A = 0`) has infinite log-odds: the run stops with a non-finite-result
/// error naming the loss (the peers return NaN). Metrics: the rewards `β·A` and log-probs `A` of
/// each side (per pair), `log_odds_ratio` (the mean of `logσ(o)`), `log_odds_chosen` (the mean
/// of `o`), the NLL term, and with `logits_metrics` the mean logit of each side.
#[chunked_loss]
pub fn orpo(
    policy: Logits,
    target: Target,
    nll_target: Option<Target>,
    #[default(0.1)]
    #[range(gt = 0.0)]
    beta: f32,
    #[variant] logits_metrics: bool,
) -> Loss {
    let avg = seq_mean(logprob(policy, target));
    let ac = chosen(avg);
    let ar = rejected(avg);
    let o = (ac - ar) - (log1p(-exp(ac)) - log1p(-exp(ar)));
    metric("chosen_rewards", beta * ac);
    metric("rejected_rewards", beta * ar);
    metric("chosen_logps", ac);
    metric("rejected_logps", ar);
    metric("log_odds_ratio", mean(log_sigmoid(o)));
    metric("log_odds_chosen", mean(o));
    if logits_metrics {
        let per_seq = seq_sum(sum_vocab(policy), every_row());
        let n = num_pairs() * seq_len() * vocab_size();
        metric("chosen_logits_mean", sum(chosen(per_seq)) / n);
        metric("rejected_logits_mean", sum(rejected(per_seq)) / n);
    }
    let nll_loss = if let Some(t) = nll_target {
        let m = valid(t);
        sum(chosen(seq_sum(-logprob(policy, t), m))) / max(sum(chosen(seq_count(m))), 1.0)
    } else {
        sum(chosen(seq_sum(-logprob(policy, target)))) / max(sum(chosen(seq_count())), 1.0)
    };
    metric("nll_loss", nll_loss);
    nll_loss + beta * mean(-log_sigmoid(o))
}
