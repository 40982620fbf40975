//! Generalised Jensen-Shannon distillation.

use crate::prelude::*;

/// Distillation from a frozen `teacher` head: `weight_hard · CE + weight_soft · JSD_β`.
///
/// With `s = log_softmax(student / τ)`, `t = log_softmax(teacher / τ)` and
/// `m = log((1 − β)e^s + βe^t)`, each valid row contributes
/// `Σ_v β e^t (t − m) + (1 − β) e^s (s − m)`; as the peers do, `β = 0` is the forward KL
/// `KL(P_t ‖ P_s)` and `β = 1` the reverse KL `KL(P_s ‖ P_t)` (the general formula tends to 0
/// at both ends). The hard term is the cross-entropy of the untempered student logits. Both
/// are means over the batch's valid rows. Metrics: the two unweighted terms.
#[chunked_loss]
pub fn jsd(
    student: Logits,
    teacher: Frozen<Logits>,
    target: Target,
    #[default(0.5)]
    #[range(0.0..=1.0)]
    beta: f32,
    #[default(1.0)]
    #[range(gt = 0.0)]
    temperature: f32,
    #[default(0.5)] weight_hard: f32,
    #[default(0.5)] weight_soft: f32,
) -> Loss {
    let s = log_softmax(student / temperature);
    let t = log_softmax(teacher / temperature);
    let forward_kl = sum_vocab(exp(t) * (t - s));
    let reverse_kl = sum_vocab(exp(s) * (s - t));
    let m = logaddexp(s + log(1.0 - beta), t + log(beta));
    let interior = sum_vocab(beta * exp(t) * (t - m) + (1.0 - beta) * exp(s) * (s - m));
    let per_row = select(
        beta == 0.0,
        forward_kl,
        select(beta == 1.0, reverse_kl, interior),
    );
    let soft = mean(per_row);
    let hard = mean(-logprob(student, target));
    metric("soft_loss", soft);
    metric("hard_loss", hard);
    weight_hard * hard + weight_soft * soft
}
