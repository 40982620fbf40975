use liger::prelude::*;

#[chunked_loss]
pub fn partial(policy: Logits, target: Target, #[variant] average: bool) -> Loss {
    let lp = logprob(policy, target);
    let s = if average { seq_mean(lp) };
    mean(-s)
}

fn main() {}
