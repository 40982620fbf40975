use liger::prelude::*;

#[chunked_loss]
pub fn masked(policy: Logits, target: Target, keep: RowMask) -> Loss {
    let per_seq = seq_sum(logprob(policy, target));
    mean(per_seq, keep)
}

fn main() {}
