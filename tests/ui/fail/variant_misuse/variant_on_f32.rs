use liger::prelude::*;

#[chunked_loss]
pub fn compiled(policy: Logits, target: Target, #[variant] beta: f32) -> Loss {
    mean(-logprob(policy, target)) * beta
}

fn main() {}
