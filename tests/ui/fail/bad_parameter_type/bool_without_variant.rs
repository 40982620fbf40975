use liger::prelude::*;

#[chunked_loss]
pub fn flag(policy: Logits, target: Target, average: bool) -> Loss {
    mean(-logprob(policy, target))
}

fn main() {}
