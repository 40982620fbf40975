use liger::prelude::*;

#[chunked_losses]
mod losses {
    use liger::prelude::*;

    fn log_odds(lp: Value) -> Value {
        lp - log1p(-exp(lp))
    }

    #[chunked_loss]
    pub fn odds(policy: Logits, target: Target) -> Loss {
        let pi = seq_mean(logprob(policy, target));
        mean(-log_sigmoid(chosen(log_odd(pi)) - rejected(log_odds(pi))))
    }
}

fn main() {}
