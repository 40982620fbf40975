use liger::prelude::*;

#[chunked_losses]
mod losses {
    use liger::prelude::*;

    fn twice(x: Value) -> Value {
        again(x) * 2.0
    }

    fn again(x: Value) -> Value {
        twice(x)
    }

    #[chunked_loss]
    pub fn looped(logits: Logits, target: Target) -> Loss {
        mean(twice(-logprob(logits, target)))
    }
}

fn main() {}
