use liger::prelude::*;

#[chunked_loss]
pub fn capped(
    logits: Logits,
    target: Target,
    #[default(1.0)] scale: f32,
    #[default(30.0)]
    #[range(gt = 0.0, when(scale = true))]
    cap: f32,
) -> Loss {
    mean(-logprob(cap * tanh(scale * logits / cap), target))
}

fn main() {}
