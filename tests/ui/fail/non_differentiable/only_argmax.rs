use liger::prelude::*;

#[chunked_loss]
pub fn accuracy(policy: Logits, target: Target) -> Loss {
    mean(select(argmax(policy) == target, 1.0, 0.0))
}

fn main() {}
