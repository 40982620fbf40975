use liger::prelude::*;

#[chunked_loss]
pub fn metrics(policy: Logits, target: Target) -> Loss {
    let lp = logprob(policy, target);
    metric(lp, mean(lp));
    mean(-lp)
}

fn main() {}
