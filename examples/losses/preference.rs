//! Two preference losses sharing helper functions: ORPO (Hong et al. 2024) and IPO
//! (Azar et al. 2023). Helpers are plain `fn`s in the loss language, typed with the level of
//! value they take and return, and inlined where they are called.
//!
//! `liger run --loss examples/losses/preference.rs --fn orpo --inputs batch.safetensors`

use liger::prelude::*;

/// The log-probability of each sequence: the sum over its valid tokens.
fn seq_logps(z: Vocab, t: Row) -> Seq {
    seq_sum(logprob(z, t))
}

/// The mean log-probability of each sequence's valid tokens.
fn seq_avg_logps(z: Vocab, t: Row) -> Seq {
    seq_mean(logprob(z, t))
}

/// Chosen minus rejected.
fn margin(x: Seq) -> Pair {
    chosen(x) - rejected(x)
}

/// `log(p / (1 − p))` of a probability given by its logarithm `lp < 0`.
fn log_odds(lp: Value) -> Value {
    lp - log1p(-exp(lp))
}

/// ORPO: the NLL of the chosen sequences' tokens plus `β · mean(−log σ(log-odds ratio))`,
/// the odds of each side from its mean token log-probability. Metrics: the mean log-odds
/// ratio and the NLL term.
#[chunked_loss]
pub fn orpo(
    policy: Logits,
    target: Target,
    #[default(0.1)]
    #[range(gt = 0.0)]
    beta: f32,
) -> Loss {
    let ratio = margin(log_odds(seq_avg_logps(policy, target)));
    let nll = sum(chosen(-seq_logps(policy, target))) / sum(chosen(seq_count()));
    metric("log_odds_ratio", mean(ratio));
    metric("nll", nll);
    nll + beta * mean(-log_sigmoid(ratio))
}

/// IPO: `(Δ − 1/(2β))²` per pair, with `Δ` the policy's margin over the reference's on mean
/// token log-probabilities.
#[chunked_loss]
pub fn ipo(
    policy: Logits,
    reference: Frozen<Logits>,
    target: Target,
    #[default(0.1)]
    #[range(gt = 0.0)]
    beta: f32,
) -> Loss {
    let d = margin(seq_avg_logps(policy, target)) - margin(seq_avg_logps(reference, target));
    mean(square(d - 1.0 / (2.0 * beta)))
}
