use liger::prelude::*;

#[chunked_loss]
pub fn kinds(policy: Logits, target: Target, #[variant] shape: Shape) -> Loss {
    let lp = logprob(policy, target);
    let a = match shape {
        Shape::Linear => -lp,
        Shape::Square => lp * lp,
    };
    match shape {
        Shape::Linear => mean(a),
        Shape::Cubic => mean(a * lp),
    }
}

fn main() {}
