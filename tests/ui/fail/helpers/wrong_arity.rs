use liger::prelude::*;

#[chunked_losses]
mod losses {
    use liger::prelude::*;

    fn scaled(x: Value, k: Value) -> Value {
        x * k
    }

    #[chunked_loss]
    pub fn one_arg(logits: Logits, target: Target) -> Loss {
        mean(scaled(-logprob(logits, target)))
    }
}

fn main() {}
