use liger::prelude::*;

#[chunked_loss]
pub fn branchy(policy: Logits, target: Target) -> Loss {
    let lp = logprob(policy, target);
    let clipped = if lp < -5.0 { -5.0 } else { lp };
    mean(-clipped)
}

fn main() {}
