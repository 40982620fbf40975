use liger::prelude::*;

#[chunked_loss]
pub fn defaulted(policy: Logits, #[default(0.0)] weights: RowInput, target: Target) -> Loss {
    mean(-logprob(policy, target) * weights)
}

fn main() {}
