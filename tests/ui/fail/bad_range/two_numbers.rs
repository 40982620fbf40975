use liger::prelude::*;

#[chunked_loss]
pub fn attrs(policy: Logits, target: Target, #[range(0.0, 1.0)] beta: f32) -> Loss {
    mean(-logprob(policy, target)) * beta
}

fn main() {}
