use liger::prelude::*;

#[chunked_loss]
pub fn per_token(policy: Logits, target: Target) -> Loss {
    -logprob(policy, target)
}

fn main() {}
