//! Distillation from a frozen teacher head: KL in either direction, and cosine similarity.

use crate::prelude::*;

/// KL distillation: `weight_hard · CE + weight_soft · KL`, both means over the batch's valid
/// rows (a denominator of at least 1).
///
/// With `s = log_softmax(student / τ)` and `t = log_softmax(teacher / τ)`, `direction`
/// `Forward` is `KL(P_t ‖ P_s) = Σ_v e^t (t − s)` (the teacher weights the student's errors),
/// `Reverse` is `KL(P_s ‖ P_t) = Σ_v e^s (s − t)`. The hard term is the cross-entropy of the
/// untempered student logits; no `τ²` rescaling (as the peers). Ignored rows contribute
/// nothing. Metrics: the two unweighted terms.
///
/// The teacher's vocabulary must be the student's: a teacher `W` with more rows is refused
/// (`HeadVocab`) unless `RunOptions::vocab_prefix` (`--vocab-prefix`) is set, which uses its
/// first `V_student` rows and bias entries (no copy); this holds for every frozen head of
/// every loss.
#[chunked_loss]
pub fn kl_distill(
    student: Logits,
    teacher: Frozen<Logits>,
    target: Target,
    #[default(1.0)]
    #[range(gt = 0.0)]
    temperature: f32,
    #[default(0.5)] weight_hard: f32,
    #[default(0.5)] weight_soft: f32,
    #[variant] direction: KlDirection,
) -> Loss {
    let s = log_softmax(student / temperature);
    let t = log_softmax(teacher / temperature);
    let per_row = match direction {
        KlDirection::Forward => sum_vocab(exp(t) * (t - s)),
        KlDirection::Reverse => sum_vocab(exp(s) * (s - t)),
    };
    let n = max(num_valid(), 1.0);
    let soft = sum(per_row) / n;
    let hard = sum(-logprob(student, target)) / n;
    metric("soft_loss", soft);
    metric("hard_loss", hard);
    weight_hard * hard + weight_soft * soft
}

/// Cosine distillation (Liger's): `weight_hard · CE + weight_soft · Σ_rows β(1 − cos(ŝ, t̂)) / N`.
///
/// `ŝ = student / τ`, `t̂ = teacher / τ` over the vocabulary, `cos = Σ ŝt̂ / max(‖ŝ‖‖t̂‖, 1e-8)`.
/// As Liger does, the soft term runs over **every** row, ignored ones included, and is divided
/// by `N`, the number of valid rows (at least 1); the hard term is the cross-entropy of the
/// untempered student over the valid rows, divided by the same `N`. Metrics: the two
/// unweighted terms.
#[chunked_loss]
pub fn cosine_distill(
    student: Logits,
    teacher: Frozen<Logits>,
    target: Target,
    #[default(0.5)] beta: f32,
    #[default(1.0)]
    #[range(gt = 0.0)]
    temperature: f32,
    #[default(0.5)] weight_hard: f32,
    #[default(0.5)] weight_soft: f32,
) -> Loss {
    let a = student / temperature;
    let b = teacher / temperature;
    let dot = sum_vocab(a * b);
    let norms = sqrt(sum_vocab(square(a))) * sqrt(sum_vocab(square(b)));
    let per_row = beta * (1.0 - dot / max(norms, 1e-8));
    let n = max(num_valid(), 1.0);
    let soft = sum(per_row, every_row()) / n;
    let hard = sum(-logprob(student, target)) / n;
    metric("soft_loss", soft);
    metric("hard_loss", hard);
    weight_hard * hard + weight_soft * soft
}
