use liger::prelude::*;

#[chunked_losses]
mod losses {
    use liger::prelude::*;

    fn margin(x: Seq) -> Pair {
        chosen(x) - rejected(x)
    }

    #[chunked_loss]
    pub fn rowwise(policy: Logits, target: Target) -> Loss {
        let lp = logprob(policy, target);
        mean(-log_sigmoid(margin(lp)))
    }
}

fn main() {}
