use liger::prelude::*;

#[chunked_loss]
pub fn typo(policy: Logits, target: Target) -> Loss {
    mean(-sum_vocab(log_sofmax(policy)) + logprob(policy, target))
}

fn main() {}
