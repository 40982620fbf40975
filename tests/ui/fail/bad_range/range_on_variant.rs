use liger::prelude::*;

#[chunked_loss]
pub fn averaged(
    logits: Logits,
    target: Target,
    #[variant]
    #[range(ge = 0.0)]
    average: bool,
) -> Loss {
    let lp = logprob(logits, target);
    if average { mean(seq_mean(lp)) } else { mean(seq_sum(lp)) }
}

fn main() {}
