use liger::prelude::*;

#[chunked_loss]
pub fn indexing(policy: Logits, target: Target) -> Loss {
    let lp = seq_sum(logprob(policy, target));
    mean(lp[0])
}

fn main() {}
