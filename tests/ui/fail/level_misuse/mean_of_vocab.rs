use liger::prelude::*;

#[chunked_loss]
pub fn vocab_mean(policy: Logits, target: Target) -> Loss {
    let entropy = -exp(log_softmax(policy)) * log_softmax(policy);
    mean(entropy) + mean(-logprob(policy, target))
}

fn main() {}
