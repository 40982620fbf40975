use liger::prelude::*;

#[chunked_loss]
pub fn optional(policy: Logits, target: Target, beta: Option<f32>) -> Loss {
    mean(-logprob(policy, target))
}

fn main() {}
