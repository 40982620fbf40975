use liger::prelude::*;

#[chunked_loss]
pub fn typo(policy: Logit, target: Target) -> Loss {
    mean(-logprob(policy, target))
}

fn main() {}
