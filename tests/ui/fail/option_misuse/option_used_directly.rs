use liger::prelude::*;

#[chunked_loss]
pub fn weighted(policy: Logits, target: Target, weights: Option<RowInput>) -> Loss {
    mean(-logprob(policy, target) * weights)
}

fn main() {}
