use liger::prelude::*;

#[chunked_loss]
pub fn frozen_by_accident(policy: Logits, target: Target) -> Loss {
    mean(-logprob(stop_gradient(policy), target))
}

fn main() {}
