//! Kahneman-Tversky Optimisation.

use crate::prelude::*;

/// KTO: `1 − σ(β(ρ − KL))` for a desirable sequence and `1 − σ(β(KL − ρ))` for an undesirable
/// one, averaged over every sequence of the batch (desirable and undesirable, in any order).
///
/// `ρ = π − r`: the policy's sequence log-prob (summed over valid tokens, or averaged with
/// `average`) less the reference's, from a frozen `reference` head or the precomputed
/// per-sequence `ref_logps`, or `ρ = π` when both are absent (reference-free, Liger's module
/// default). `preference` marks the desirable sequences (bool, or 0/1 integers). `kl` is the
/// precomputed, detached KL estimate (a scalar), 0 when absent. No desirable/undesirable
/// weights (as Liger; TRL has them). Metrics (sums over each class, as the peers return them,
/// correct for any chunking): `chosen_logps_sum`, `rejected_logps_sum`, `chosen_rewards_sum`,
/// `rejected_rewards_sum` (`β·ρ`), the class counts `num_chosen` and `num_rejected`, and with
/// `logits_metrics` the sum of the logits of each class over every position and vocabulary
/// entry.
#[chunked_loss]
pub fn kto(
    policy: Logits,
    reference: Option<Frozen<Logits>>,
    ref_logps: Option<SeqInput>,
    kl: Option<ScalarInput>,
    target: Target,
    preference: SeqMask,
    #[default(0.1)]
    #[range(gt = 0.0)]
    beta: f32,
    #[variant] average: bool,
    #[variant] logits_metrics: bool,
) -> Loss {
    let lp = logprob(policy, target);
    let pi = if average { seq_mean(lp) } else { seq_sum(lp) };
    let rho = if let Some(r) = reference {
        let rlp = logprob(r, target);
        pi - if average { seq_mean(rlp) } else { seq_sum(rlp) }
    } else if let Some(rl) = ref_logps {
        pi - rl
    } else {
        pi
    };
    let z = if let Some(k) = kl {
        beta * (rho - k)
    } else {
        beta * rho
    };
    metric("chosen_logps_sum", sum(select(preference, pi, 0.0)));
    metric("rejected_logps_sum", sum(select(preference, 0.0, pi)));
    metric(
        "chosen_rewards_sum",
        sum(select(preference, beta * rho, 0.0)),
    );
    metric(
        "rejected_rewards_sum",
        sum(select(preference, 0.0, beta * rho)),
    );
    metric("num_chosen", sum(select(preference, 1.0, 0.0)));
    metric("num_rejected", sum(select(preference, 0.0, 1.0)));
    if logits_metrics {
        let per_seq = seq_sum(sum_vocab(policy), every_row());
        metric("chosen_logits_sum", sum(select(preference, per_seq, 0.0)));
        metric("rejected_logits_sum", sum(select(preference, 0.0, per_seq)));
    }
    mean(select(preference, 1.0 - sigmoid(z), 1.0 - sigmoid(-z)))
}
