use liger::prelude::*;

#[chunked_loss]
pub fn kinds(policy: Logits, target: Target, #[variant] #[default(Cubic)] shape: Shape) -> Loss {
    let lp = logprob(policy, target);
    match shape {
        Shape::Linear => mean(-lp),
        Shape::Square => mean(lp * lp),
    }
}

fn main() {}
