use liger::prelude::*;

#[chunked_loss]
pub fn statement(policy: Logits, target: Target) -> Loss {
    let loss = mean(-logprob(policy, target));
    metric("loss", loss);
}

fn main() {}
