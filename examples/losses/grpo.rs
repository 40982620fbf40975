//! GRPO with a per-token clipped surrogate (DeepSeekMath; the asymmetric clip of DAPO) and an
//! optional KL penalty to a reference policy's per-token log-probabilities.
//!
//! `liger run --loss examples/losses/grpo.rs --inputs rollouts.safetensors`, the file holding
//! `policy.x`, `policy.w`, `target`, `old_logps` `[S,T]`, `advantages` `[S]` and optionally
//! `ref_logps` `[S,T]`.

use liger::prelude::*;

/// GRPO per token: with `r = exp(logp − old_logps)` and the sequence's advantage `A`,
/// `−min(r·A, clip(r, 1 − ε_low, 1 + ε_high)·A)`, plus `β·KL` with the k3 estimator
/// `exp(ref − logp) − (ref − logp) − 1` when `ref_logps` is given; averaged over each
/// sequence's valid tokens, then over sequences. Metrics: the fraction of clipped tokens and,
/// with a reference, the mean KL.
#[chunked_loss]
pub fn grpo(
    policy: Logits,
    target: Target,
    old_logps: RowInput,
    advantages: SeqInput,
    ref_logps: Option<RowInput>,
    #[default(0.2)]
    #[range(ge = 0.0)]
    epsilon_low: f32,
    #[default(0.2)]
    #[range(ge = 0.0)]
    epsilon_high: f32,
    #[default(0.04)]
    #[range(ge = 0.0)]
    beta: f32,
) -> Loss {
    let lp = logprob(policy, target);
    let ratio = exp(lp - old_logps);
    let clipped = clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high);
    let surrogate = min(ratio * advantages, clipped * advantages);
    metric("clip_fraction", mean(select(clipped != ratio, 1.0, 0.0)));
    let per_token = if let Some(r) = ref_logps {
        let kl = exp(r - lp) - (r - lp) - 1.0;
        metric("kl", mean(kl));
        beta * kl - surrogate
    } else {
        -surrogate
    };
    mean(seq_mean(per_token))
}
