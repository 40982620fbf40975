use liger::prelude::*;

#[chunked_loss]
pub fn smoothed(
    logits: Logits,
    target: Target,
    #[default(0.5)]
    #[range(1.0..0.5)]
    eps: f32,
) -> Loss {
    mean(-(1.0 - eps) * logprob(logits, target))
}

fn main() {}
