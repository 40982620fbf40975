use liger::prelude::*;

#[chunked_loss]
pub fn scalar(policy: Logits, target: Target) -> f32 {
    mean(-logprob(policy, target))
}

fn main() {}
