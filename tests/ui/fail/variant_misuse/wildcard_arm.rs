use liger::prelude::*;

#[chunked_loss]
pub fn kinds(policy: Logits, target: Target, #[variant] shape: Shape) -> Loss {
    let lp = logprob(policy, target);
    match shape {
        Shape::Linear => mean(-lp),
        _ => mean(lp * lp),
    }
}

fn main() {}
