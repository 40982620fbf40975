use liger::prelude::*;

#[chunked_loss]
pub fn typo(policy: Logits, target: Target) -> Loss {
    mean(-logprob(policy, targt))
}

fn main() {}
