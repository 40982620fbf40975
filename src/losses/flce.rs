//! Fused linear cross-entropy.

use crate::prelude::*;

/// Cross-entropy of an lm head with label smoothing, z-loss and logit softcapping.
///
/// Per valid row, with `z` the logits (softcapped to `softcap_value · tanh(z / softcap_value)`
/// when `softcap` is on): `(1 − ε)(lse − z_y) + ε(lse − mean_v z) + s·lse²`, with
/// `ε = label_smoothing` and `s = z_loss_scale`. `Mean` divides by the valid rows of the whole
/// batch, `Sum` does not. Metrics: the z-loss term (same reduction) and the token accuracy
/// (`argmax z == y`, over valid rows).
#[chunked_loss]
pub fn flce(
    logits: Logits,
    target: Target,
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
    let nll = -logprob(z, target);
    let smooth = -sum_vocab(log_softmax(z)) / vocab_size();
    let z_loss = z_loss_scale * lse * lse;
    let per_row = (1.0 - label_smoothing) * nll + label_smoothing * smooth + z_loss;
    metric("accuracy", mean(select(argmax(z) == target, 1.0, 0.0)));
    match reduction {
        Reduction::Mean => {
            metric("z_loss", mean(z_loss));
            mean(per_row)
        }
        Reduction::Sum => {
            metric("z_loss", sum(z_loss));
            sum(per_row)
        }
    }
}
