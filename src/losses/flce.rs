//! Fused linear cross-entropy.

use crate::prelude::*;

/// Cross-entropy of an lm head with label smoothing, z-loss, logit softcapping and optional
/// class weights.
///
/// Per valid row, with `z` the logits (softcapped to `softcap_value · tanh(z / softcap_value)`
/// when `softcap` is on): `ℓ = (1 − ε)(lse − z_y) + ε(lse − mean_v z) + s·lse²`, with
/// `ε = label_smoothing` and `s = z_loss_scale`. With `class_weight` `w` (one per vocabulary
/// entry, as PyTorch's `weight=`): `ℓ = (1 − ε)·w_y(lse − z_y) + (ε/V)·Σ_v w_v(lse − z_v) + s·lse²`,
/// and `Mean` divides the weighted terms by `Σ w_y` over the valid rows (the z-loss by the
/// valid rows). `Mean` divides by the valid rows of the whole batch, `Sum` does not. Every
/// difference is formed as `log_softmax`, so a large common offset of the logits cancels.
///
/// `None` (PyTorch's `reduction="none"`) returns the per-token losses `ℓ` as the row metric
/// `per_token_loss` (`[S,T]`, 0 at ignored rows) and the per-token z-loss as the row metric
/// `z_loss`; its scalar loss, the one the gradients are of, is `Σ_valid t_r·ℓ_r` with the
/// optional per-token upstream weights `token_weight` (`t = 1` without them, the sum of the
/// per-token losses). A framework's backward of per-token losses passes its incoming
/// per-token gradient as `token_weight`. `token_weight` is refused under `Mean` and `Sum`.
///
/// Metrics: the z-loss term (same reduction) and the token accuracy (`argmax z == y`, a mean
/// over valid rows under every reduction).
#[chunked_loss]
pub fn flce(
    logits: Logits,
    target: Target,
    class_weight: Option<VocabInput>,
    token_weight: Option<RowInput>,
    #[default(0.0)]
    #[range(0.0..=1.0)]
    label_smoothing: f32,
    #[default(0.0)]
    #[range(ge = 0.0)]
    z_loss_scale: f32,
    #[default(30.0)]
    #[range(gt = 0.0, when(softcap = true))]
    softcap_value: f32,
    #[variant] softcap: bool,
    #[variant] reduction: Reduction,
) -> Loss {
    let z = if softcap {
        softcap_value * tanh(logits / softcap_value)
    } else {
        logits
    };
    // Formed from `logprob` and `log_softmax`, which subtract the row max before anything
    // else: a large common offset of the logits (a uniform bias) cancels exactly, where
    // `logsumexp(z) - at_target(z, target)` would round it into the lse first.
    let lse = logsumexp(z);
    let z_loss = z_loss_scale * lse * lse;
    metric("accuracy", mean(select(argmax(z) == target, 1.0, 0.0)));
    // The per-token terms beside the z-loss: class-weighted or not.
    let terms = if let Some(w) = class_weight {
        let nll = -at_target(w, target) * logprob(z, target);
        let smooth = -sum_vocab(w * log_softmax(z)) / vocab_size();
        (1.0 - label_smoothing) * nll + label_smoothing * smooth
    } else {
        let nll = -logprob(z, target);
        let smooth = -sum_vocab(log_softmax(z)) / vocab_size();
        (1.0 - label_smoothing) * nll + label_smoothing * smooth
    };
    match reduction {
        Reduction::Mean => {
            metric("z_loss", mean(z_loss));
            if let Some(w) = class_weight {
                // A batch with no valid row gives 0, as the unweighted mean does.
                sum(terms) / max(sum(at_target(w, target)), 1e-30) + mean(z_loss)
            } else {
                mean(terms + z_loss)
            }
        }
        Reduction::Sum => {
            metric("z_loss", sum(z_loss));
            sum(terms + z_loss)
        }
        Reduction::None => {
            let per_token = terms + z_loss;
            metric("per_token_loss", select(valid(target), per_token, 0.0));
            metric("z_loss", select(valid(target), z_loss, 0.0));
            if let Some(t) = token_weight {
                sum(t * per_token)
            } else {
                sum(per_token)
            }
        }
    }
}
