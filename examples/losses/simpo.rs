//! SimPO (Meng et al. 2024): a reference-free preference loss on length-normalised
//! log-probabilities with a target reward margin.
//!
//! Run it on a DPO-style batch (`policy.x`, `policy.w`, `target`) without writing Rust:
//! `liger run --loss examples/losses/simpo.rs --inputs batch.safetensors`.

use liger::prelude::*;

/// SimPO: `-log σ(β(π̄_c − π̄_r) − γ)` per pair with `π̄` the mean log-probability of a
/// sequence's valid tokens and `γ = gamma_beta_ratio · β`; cDPO-style label smoothing. Metrics:
/// the rewards `β π̄` of each side.
#[chunked_loss]
pub fn simpo(
    policy: Logits,
    target: Target,
    #[default(2.0)]
    #[range(gt = 0.0)]
    beta: f32,
    #[default(0.5)] gamma_beta_ratio: f32,
    #[default(0.0)]
    #[range(0.0..=0.5)]
    label_smoothing: f32,
) -> Loss {
    let pi = seq_mean(logprob(policy, target));
    let margin = beta * (chosen(pi) - rejected(pi)) - gamma_beta_ratio * beta;
    metric("chosen_rewards", beta * chosen(pi));
    metric("rejected_rewards", beta * rejected(pi));
    mean(-(1.0 - label_smoothing) * log_sigmoid(margin) - label_smoothing * log_sigmoid(-margin))
}
