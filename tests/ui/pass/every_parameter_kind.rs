//! Every parameter kind of the language reference (`docs/language.md`), including `Option` inputs.
use liger::prelude::*;

/// Uses every input kind.
#[chunked_loss]
pub fn kitchen_sink(
    policy: Logits,
    teacher: Frozen<Logits>,
    target: Target,
    ids: Tokens,
    old_logps: RowInput,
    attention: RowMask,
    advantages: SeqInput,
    keep_seq: SeqMask,
    class_weights: VocabInput,
    kl: ScalarInput,
    extra: Option<RowInput>,
    #[default(0.5)] beta: f32,
    scale: f32,
) -> Loss {
    let weighted = sum_vocab(softmax(policy) * class_weights);
    let lp = logprob(policy, ids) - old_logps;
    let teacher_lp = logprob(teacher, target);
    let per_row = select(attention, lp * weighted, 0.0) + teacher_lp;
    let with_extra = if let Some(e) = extra { per_row + e } else { per_row };
    let per_seq = select(keep_seq, seq_mean(with_extra) * advantages, 0.0);
    beta * mean(per_seq) + scale * kl
}

fn main() {
    let p = KitchenSinkParams::new(2.0);
    assert_eq!(p.beta, 0.5);
    assert_eq!(p.scale, 2.0);
    assert_eq!(KitchenSink.specializations().len(), 2);
    assert_eq!(KitchenSink.params().len(), 13);
    assert!(KitchenSink.param("extra").is_some_and(|p| p.optional));
}
