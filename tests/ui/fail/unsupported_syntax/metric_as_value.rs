use liger::prelude::*;

#[chunked_loss]
pub fn metrics(policy: Logits, target: Target) -> Loss {
    let nll = mean(-logprob(policy, target));
    let m = metric("nll", nll);
    m
}

fn main() {}
