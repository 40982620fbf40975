use liger::prelude::*;

#[chunked_loss]
pub fn early(policy: Logits, target: Target) -> Loss {
    return mean(-logprob(policy, target));
}

fn main() {}
