use liger::prelude::*;

#[chunked_loss]
pub fn tempered(
    logits: Logits,
    target: Target,
    #[default(0.0)]
    #[range(gt = 0.0)]
    temperature: f32,
) -> Loss {
    mean(-logprob(logits / temperature, target))
}

fn main() {}
