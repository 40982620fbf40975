use liger::prelude::*;

#[chunked_loss]
pub fn group(policy: Logits, target: Target) -> Loss {
    let per_seq = seq_sum(logprob(policy, target));
    let scaled = policy * per_seq;
    mean(sum_vocab(scaled))
}

fn main() {}
