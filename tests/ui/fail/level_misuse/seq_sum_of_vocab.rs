use liger::prelude::*;

#[chunked_loss]
pub fn vocab_seq(policy: Logits, target: Target) -> Loss {
    let per_seq = seq_sum(log_softmax(policy));
    mean(per_seq) + mean(-logprob(policy, target))
}

fn main() {}
