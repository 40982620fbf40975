//! Direct Preference Optimisation.

use crate::prelude::*;

/// DPO: `-log σ(β·((π_c − r_c) − (π_r − r_r)))` per pair, averaged over pairs.
///
/// `π` are the policy's sequence log-probs (summed over valid tokens, or averaged with
/// `average`), `r` the reference's: from a frozen `reference` head or, when it is absent,
/// the precomputed `ref_logps` (one per sequence, same `average` convention). `Sigmoid`
/// applies cDPO label smoothing as TRL does (Liger ignores it); `Hinge` is
/// `max(0, 1 − Δ)`. With `nll`, `alpha` times the mean NLL of the chosen sequences' valid
/// tokens is added (RPO). Metrics: the rewards `β(π − r)` and log-probs of each side, and the
/// NLL term when it is on.
#[chunked_loss]
pub fn dpo(
    policy: Logits,
    reference: Option<Frozen<Logits>>,
    ref_logps: Option<SeqInput>,
    target: Target,
    #[default(0.1)]
    #[range(gt = 0.0)]
    beta: f32,
    #[default(0.0)]
    #[range(0.0..=0.5)]
    label_smoothing: f32,
    #[default(1.0)] alpha: f32,
    #[variant] average: bool,
    #[variant] nll: bool,
    #[variant] loss_type: DpoType,
) -> Loss {
    let lp = logprob(policy, target);
    let pi = if average { seq_mean(lp) } else { seq_sum(lp) };
    let rf = if let Some(r) = reference {
        let rlp = logprob(r, target);
        if average { seq_mean(rlp) } else { seq_sum(rlp) }
    } else {
        ref_logps.unwrap()
    };
    let chosen_margin = chosen(pi) - chosen(rf);
    let rejected_margin = rejected(pi) - rejected(rf);
    let d = beta * (chosen_margin - rejected_margin);
    metric("chosen_rewards", beta * chosen_margin);
    metric("rejected_rewards", beta * rejected_margin);
    metric("chosen_logps", chosen(pi));
    metric("rejected_logps", rejected(pi));
    let preference = match loss_type {
        DpoType::Sigmoid => {
            mean(-(1.0 - label_smoothing) * log_sigmoid(d) - label_smoothing * log_sigmoid(-d))
        }
        DpoType::Hinge => mean(relu(1.0 - d)),
    };
    if nll {
        let nll_loss = sum(chosen(seq_sum(-lp))) / sum(chosen(seq_count()));
        metric("nll_loss", nll_loss);
        preference + alpha * nll_loss
    } else {
        preference
    }
}
