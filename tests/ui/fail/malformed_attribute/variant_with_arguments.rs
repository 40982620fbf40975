use liger::prelude::*;

#[chunked_loss]
pub fn flags(policy: Logits, target: Target, #[variant(fast)] average: bool) -> Loss {
    mean(-logprob(policy, target))
}

fn main() {}
