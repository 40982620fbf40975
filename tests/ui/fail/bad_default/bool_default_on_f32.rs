use liger::prelude::*;

#[chunked_loss]
pub fn defaulted(policy: Logits, target: Target, #[default(true)] beta: f32) -> Loss {
    mean(-logprob(policy, target)) * beta
}

fn main() {}
