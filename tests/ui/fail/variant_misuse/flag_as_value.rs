use liger::prelude::*;

#[chunked_loss]
pub fn flags(policy: Logits, target: Target, #[variant] double: bool) -> Loss {
    mean(-logprob(policy, target)) * double
}

fn main() {}
