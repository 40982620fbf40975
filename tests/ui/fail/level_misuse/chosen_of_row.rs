use liger::prelude::*;

#[chunked_loss]
pub fn pairs(policy: Logits, target: Target) -> Loss {
    let lp = logprob(policy, target);
    mean(-log_sigmoid(chosen(lp) - rejected(lp)))
}

fn main() {}
