use liger::prelude::*;

#[chunked_loss]
pub fn summed(policy: Logits, target: Target) -> Loss {
    let mut total = 0.0;
    for s in 0..4 {
        total = total + s;
    }
    mean(-logprob(policy, target)) + total
}

fn main() {}
