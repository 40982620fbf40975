use liger::prelude::*;

#[chunked_loss]
pub fn weighted(
    policy: Logits,
    target: Target,
    weights: RowInput,
    #[variant] weighted: bool,
) -> Loss {
    let nll = -logprob(policy, target);
    if weighted { mean(weights * nll) } else { mean(nll) }
}

fn main() {}
