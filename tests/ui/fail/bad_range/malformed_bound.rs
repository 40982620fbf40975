use liger::prelude::*;

#[chunked_loss]
pub fn weighted(
    logits: Logits,
    target: Target,
    #[default(1.0)]
    #[range(above = 0.0)]
    w: f32,
) -> Loss {
    mean(-w * logprob(logits, target))
}

fn main() {}
