use liger::prelude::*;

#[chunked_losses]
mod losses {
    use liger::prelude::*;

    fn seq_logps(z: Vocab, t: Row) -> Batch {
        seq_sum(logprob(z, t))
    }

    #[chunked_loss]
    pub fn summed(policy: Logits, target: Target) -> Loss {
        mean(-seq_logps(policy, target))
    }
}

fn main() {}
