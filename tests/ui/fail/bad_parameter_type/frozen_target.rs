use liger::prelude::*;

#[chunked_loss]
pub fn frozen(policy: Logits, target: Frozen<Target>) -> Loss {
    mean(-logprob(policy, target))
}

fn main() {}
