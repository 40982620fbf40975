use liger::prelude::*;

#[chunked_loss]
pub fn methods(policy: Logits, target: Target) -> Loss {
    let lp = logprob(policy, target);
    mean(lp.exp())
}

fn main() {}
