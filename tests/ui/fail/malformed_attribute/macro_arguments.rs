use liger::prelude::*;

#[chunked_loss(fast)]
pub fn args(policy: Logits, target: Target) -> Loss {
    mean(-logprob(policy, target))
}

fn main() {}
