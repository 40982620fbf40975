use liger::prelude::*;

#[chunked_losses]
mod losses {
    use liger::prelude::*;

    fn square(x: Value) -> Value {
        x * x
    }

    #[chunked_loss]
    pub fn squared(logits: Logits, target: Target) -> Loss {
        mean(square(logprob(logits, target)))
    }
}

fn main() {}
