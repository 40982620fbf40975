use liger::prelude::*;

#[chunked_loss]
pub fn closure(policy: Logits, target: Target) -> Loss {
    let f = |x| exp(x);
    mean(-logprob(policy, target))
}

fn main() {}
