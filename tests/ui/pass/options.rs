//! `Option` inputs with `if let Some(..)` and `.unwrap()`; a refused specialisation.
use liger::prelude::*;

#[chunked_loss]
pub fn reference_free(
    policy: Logits,
    reference: Option<Frozen<Logits>>,
    ref_logps: Option<SeqInput>,
    target: Target,
) -> Loss {
    let pi = seq_sum(logprob(policy, target));
    let rf = if let Some(r) = reference { seq_sum(logprob(r, target)) } else { ref_logps.unwrap() };
    mean(-log_sigmoid(chosen(pi) - chosen(rf) - rejected(pi) + rejected(rf)))
}

fn main() {
    let specs = ReferenceFree.specializations();
    assert_eq!(specs.len(), 4);
    let refused: Vec<_> = specs.iter().filter_map(|s| s.refused).collect();
    assert_eq!(refused, ["ref_logps"]);
}
